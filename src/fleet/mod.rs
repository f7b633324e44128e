//! The fleet: one name for a region, a front door that hops to the node
//! running the instance (DESIGN.md Part 2, issue 14).
//!
//! Who runs it:
//! - the front door's setuid session shell, as root, mints a one-minute
//!   user certificate for each hop with the platform's user-CA private key
//!   ([`cert::mint`]; the key file is root-only, read with
//!   [`cert::load_ca_key`]);
//! - the node's session shell, as root, reads the certificate named by
//!   sshd's `SSH_USER_AUTH` ([`cert::verify_hop`]) to learn who really
//!   logged in at the front door.
//!
//! What it trusts: the CA files named in `porthole.toml` (`[fleet]`), root
//! owned; the `SSH_USER_AUTH` file sshd writes. It trusts nothing in a
//! certificate until the signature, the CA, the principal and the validity
//! are checked, and then only a key id of its own strict grammar.
//!
//! Pure code and the `ssh-key` crate only: no HTTP, no async, no process is
//! started here (the hop itself runs the OpenSSH client elsewhere), so the
//! setuid shell may link it.

pub mod cert;
