//! Files in and out of any image (issue 17): porthole's own SFTP server.
//!
//! - [`server`] (feature `sftp`): `porthole-sftp`, an SFTP v3 server with
//!   the OpenSSH extensions clients use. The session shell runs it inside
//!   the instance, as the container user, from a sealed memfd copy of the
//!   host binary (`session::shell`, `session::enter`): it is confined by
//!   the container's root, namespaces, credentials and seccomp profile like
//!   any program of the session, and holds no host fd but its stdio and the
//!   event pipe.
//! - [`events`]: the one-line-per-file audit records it writes to the
//!   supervisor, and their strict parser (the supervisor treats them as the
//!   instance's claims: untrusted input).
//! - [`refuse`]: the few packets the setuid shell answers an `sftp` client
//!   with when it refuses the session, so `sftp`/`scp` print the sentence.
//!   No dependency: the shell links it.

pub mod events;
pub mod refuse;
#[cfg(feature = "sftp")]
pub mod server;
