//! Root's command line, `porthole`: sessions, drains, doctor, host keys.
//!
//! Runs as root, interactively or from scripts. It reads configuration,
//! session records and the cache, and prints them: every string that came
//! from a client, a tenant or the control plane goes through
//! [`display::printable`] first (no raw escape sequences on root's
//! terminal). `doctor` checks the whole installation, including the
//! control plane, so it exists only with the `http` feature.

// Nothing here needs unsafe code; the compiler keeps it that way.
#![forbid(unsafe_code)]

pub mod display;
#[cfg(feature = "http")]
pub mod doctor;
#[cfg(feature = "http")]
pub mod fleet_checks;
pub mod hostkeys;
pub mod replay;
