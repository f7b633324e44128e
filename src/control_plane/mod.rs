//! What the platform's control plane says, and the keys hook's memory of it.
//!
//! Runs in two programs: the keys hook (unprivileged `porthole` user) parses
//! answers and writes the cache; the setuid session shell reads the cache
//! as root to learn who logged in and what the service is. So this code
//! holds no privilege of its own and trusts nothing it reads: answers are
//! size-capped and validated field by field (`api`, `keys`), and cache
//! files are read only when owned by the keys user with its modes
//! (`cache`). No network I/O here: fetching is `keys_hook::fetch`.

pub mod api;
pub mod cache;
pub mod key_services;
pub mod keys;
