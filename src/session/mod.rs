//! The session shell `porthole-shell`: the whole privileged path.
//!
//! Runs setuid root, started by sshd as the session account (ForceCommand
//! and login shell). It trusts `porthole.toml` (root-owned), the keys
//! cache only when written by the keys user, runtime state only under
//! root-owned roots, a bundle's config only when root's, and the pinned
//! init's `/proc` files; everything from the client (environment, command,
//! `SSH_USER_AUTH`) and from the container (its files, annotations, ids) is
//! hostile input. It links no HTTP code.
//!
//! The path of one login, in order:
//! 1. [`sealed`]: re-execute from a sealed memfd copy (CVE-2019-5736);
//! 2. [`shell`]: authorize from the cache, refuse what gets no shell;
//! 3. [`runtime`]: find the instance in the OCI runtime's state;
//! 4. [`container`], [`confine`]: read on the host side what entering
//!    takes (credentials, user, cgroups, seccomp, LSM label, limits);
//! 5. [`limits`], [`registry`]: admission, the session record;
//! 6. [`enter`]: fork into the instance's cgroups and namespaces and exec
//!    as its user, confined as the instance is;
//! 7. [`supervise`], [`revoke`]: relay the session, enforce limits, drains
//!    and revocation, end it when the instance stops.

pub mod confine;
pub mod container;
pub mod enter;
pub mod hop;
pub mod limits;
pub mod pick;
pub mod record;
pub mod registry;
pub mod revoke;
pub mod runtime;
pub mod sealed;
pub mod shell;
pub mod supervise;
pub mod temporary;
