//! porthole: SSH into the running instances of a hosting platform through
//! the stock OpenSSH sshd. The library holds one module per concern; the
//! binaries in `bin/` are thin wrappers that map errors to exit codes.
//!
//! Which module runs where matters for security: `fetch` (HTTP) is only
//! compiled with the `http` feature and only the keys hook and admin CLI
//! use it; the setuid session shell links none of it.

pub mod api;
pub mod cache;
pub mod config;
pub mod display;
pub mod hostkeys;
pub mod keys;
pub mod limits;
pub mod log;
pub mod names;
pub mod time;

#[cfg(feature = "http")]
pub mod doctor;
#[cfg(feature = "http")]
pub mod fetch;
#[cfg(feature = "http")]
pub mod hook;

pub mod confine;
pub mod container;
pub mod enter;
pub mod registry;
pub mod revoke;
pub mod runtime;
pub mod sealed;
pub mod session;
pub mod supervise;
