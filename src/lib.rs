//! porthole: SSH into the running instances of a hosting platform through
//! the stock OpenSSH sshd. The binaries in `bin/` are thin wrappers that
//! map errors to exit codes; the library is grouped by the program and the
//! privilege each part serves (ARCHITECTURE.md has the map):
//!
//! - the shared basics at the top — `names` (the login grammar), `config`,
//!   `log`, `time` — have no privilege and no I/O beyond what they say;
//! - [`control_plane`]: what the platform answers and its on-disk cache,
//!   written by the keys hook and read by the session shell;
//! - [`keys_hook`]: sshd's `AuthorizedKeysCommand`, run as the unprivileged
//!   keys user, the only code that speaks HTTP (`http` feature);
//! - [`session`]: the setuid-root session shell, the whole privileged path;
//! - [`admin`]: root's command line (`porthole`);
//! - [`picker`]: the menu of `ssh srv@host` (issue 20), run by the
//!   unprivileged `porthole-picker`; the shell uses only its protocol;
//! - [`fleet`]: hop certificates, minted by the front door's session shell
//!   and read by the node's (pure, no HTTP: the setuid shell links it).
//! - `web` (feature `web`): porthole-web, the dashboard's browser shell
//!   (axum + tokio), run as its own unprivileged user; it reaches instances
//!   only through sshd, with hop certificates of its own CA.
//!
//! The setuid shell links no HTTP code: `keys_hook` and `admin::doctor`
//! exist only with the `http` feature, `web` only with the `web` feature,
//! and `porthole-shell` references neither (tests/architecture.rs checks
//! its symbols).

pub mod config;
pub mod log;
pub mod names;
pub mod time;

pub mod admin;
pub mod control_plane;
pub mod fleet;
#[cfg(feature = "http")]
pub mod keys_hook;
pub mod picker;
pub mod session;
pub mod sftp;
#[cfg(feature = "web")]
pub mod web;
