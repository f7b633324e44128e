//! Session limits: how many sessions an instance and an owner may have,
//! whether the instance has memory to spare for one more, and how long a
//! session may last or idle.
//!
//! SSH sessions share the instance's memory pool, so a session must never
//! be what takes a service down. Counting is done with the kernel instead
//! of a daemon: a slot is a file locked with flock, so concurrent logins
//! race fairly (exactly N win) and a supervisor that dies, even by SIGKILL,
//! frees its slot without anyone cleaning up.

use crate::config::Limits;
use serde_json::Value;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Applies the control plane's per-service `limits` object over the host's
/// configuration. Unknown keys and values of the wrong type or out of range
/// are ignored (the host's value stays): a control-plane mistake must not
/// lift a limit by accident.
pub fn effective(host: &Limits, service: Option<&Value>) -> Limits {
    let mut l = host.clone();
    let Some(Value::Object(o)) = service else {
        return l;
    };
    let num = |k: &str, max: u64| o.get(k).and_then(Value::as_u64).filter(|v| *v <= max);
    if let Some(v) = num("max_sessions_per_instance", 10_000) {
        l.max_sessions_per_instance = v as u32;
    }
    if let Some(v) = num("max_sessions_per_owner", 10_000) {
        l.max_sessions_per_owner = v as u32;
    }
    if let Some(v) = num("memory_reserve_mib", 1 << 20) {
        l.memory_reserve_mib = v;
    }
    if let Some(v) = num("max_duration_secs", 366 * 86400) {
        l.max_duration_secs = v;
    }
    if let Some(v) = num("idle_timeout_secs", 366 * 86400) {
        l.idle_timeout_secs = v;
    }
    l
}

/// The limits as an audit field.
pub fn to_json(l: &Limits) -> Value {
    serde_json::json!({
        "max_sessions_per_instance": l.max_sessions_per_instance,
        "max_sessions_per_owner": l.max_sessions_per_owner,
        "memory_reserve_mib": l.memory_reserve_mib,
        "max_duration_secs": l.max_duration_secs,
        "idle_timeout_secs": l.idle_timeout_secs,
    })
}

/// Memory of the instance's cgroup, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// None when unlimited.
    pub limit: Option<u64>,
    pub usage: u64,
}

impl Memory {
    /// Bytes left before the limit (None when unlimited).
    pub fn headroom(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.usage))
    }
}

/// Values at or above this are "no limit" (cgroup v1 reports a page-rounded
/// LONG_MAX).
const UNLIMITED: u64 = 1 << 60;

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Reads limit and usage of a memory cgroup directory: v1
/// (`memory.limit_in_bytes`, `memory.usage_in_bytes`) or v2 (`memory.max`,
/// `memory.current`).
pub fn read_memory(dir: &Path, v2: bool) -> Option<Memory> {
    if v2 {
        let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
        let usage = read_u64(&dir.join("memory.current"))?;
        let limit = match max.trim() {
            "max" => None,
            m => m.parse().ok().filter(|v| *v < UNLIMITED),
        };
        Some(Memory { limit, usage })
    } else {
        let limit = read_u64(&dir.join("memory.limit_in_bytes"))?;
        let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
        Some(Memory {
            limit: (limit < UNLIMITED).then_some(limit),
            usage,
        })
    }
}

/// A held slot; dropping it (or dying) frees it.
#[derive(Debug)]
pub struct Slot {
    _file: File,
    pub index: u32,
}

/// Why a slot could not be had.
#[derive(Debug)]
pub enum SlotError {
    /// All `max` slots are taken: refuse the login with the limit.
    Full(u32),
    /// The state directory is unusable: an admin problem (fail closed).
    Io(PathBuf, std::io::Error),
}

impl std::fmt::Display for SlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotError::Full(n) => write!(f, "all {n} slots are taken"),
            SlotError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

/// Creates `dir` (and parents) root-only if missing.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Takes the first free slot of `dir` among `max` (0 = unlimited: no slot
/// is needed and None is returned).
pub fn acquire(dir: &Path, max: u32) -> Result<Option<Slot>, SlotError> {
    if max == 0 {
        return Ok(None);
    }
    ensure_dir(dir).map_err(|e| SlotError::Io(dir.to_owned(), e))?;
    for index in 0..max {
        let path = dir.join(format!("{index}.slot"));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| SlotError::Io(path.clone(), e))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(Slot { _file: file, index }));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(SlotError::Io(path, e));
        }
    }
    Err(SlotError::Full(max))
}

/// A file-name-safe name for an owner (emails can hold anything): the
/// first 128 bits of SHA-256 of its bytes, in hex. It must be
/// collision-resistant, not just well spread: owner strings come from the
/// control plane, where a tenant may choose its own, and two owners with
/// the same key would share (and could exhaust) each other's slots.
pub fn owner_key(owner: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    let digest = Sha256::digest(owner.as_bytes());
    let mut hex = String::with_capacity(32);
    for b in digest.iter().take(16) {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_overrides_apply_within_range_only() {
        let host = Limits::default();
        let v = serde_json::json!({"max_sessions_per_instance": 3, "idle_timeout_secs": 60,
            "max_sessions_per_owner": "lots", "memory_reserve_mib": -5, "unknown": 1});
        let l = effective(&host, Some(&v));
        assert_eq!(l.max_sessions_per_instance, 3);
        assert_eq!(l.idle_timeout_secs, 60);
        assert_eq!(l.max_sessions_per_owner, host.max_sessions_per_owner);
        assert_eq!(l.memory_reserve_mib, host.memory_reserve_mib);
        let huge = serde_json::json!({"max_sessions_per_instance": 1u64 << 40});
        assert_eq!(
            effective(&host, Some(&huge)).max_sessions_per_instance,
            host.max_sessions_per_instance
        );
        assert_eq!(effective(&host, None), host);
    }

    #[test]
    fn slots_admit_exactly_max_and_free_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("slots/instance-x");
        let a = acquire(&d, 2).unwrap().unwrap();
        let b = acquire(&d, 2).unwrap().unwrap();
        assert_ne!(a.index, b.index);
        assert!(matches!(acquire(&d, 2), Err(SlotError::Full(2))));
        drop(a);
        assert!(acquire(&d, 2).unwrap().is_some());
        assert!(acquire(&d, 0).unwrap().is_none(), "0 means unlimited");
    }

    #[test]
    fn memory_files_v1_and_v2() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.limit_in_bytes"), "268435456\n").unwrap();
        std::fs::write(dir.path().join("memory.usage_in_bytes"), "260000000\n").unwrap();
        let m = read_memory(dir.path(), false).unwrap();
        assert_eq!(m.headroom(), Some(268435456 - 260000000));
        std::fs::write(
            dir.path().join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(read_memory(dir.path(), false).unwrap().headroom(), None);
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.path().join("memory.current"), "5\n").unwrap();
        assert_eq!(read_memory(dir.path(), true).unwrap().limit, None);
        std::fs::write(dir.path().join("memory.max"), "100\n").unwrap();
        assert_eq!(read_memory(dir.path(), true).unwrap().headroom(), Some(95));
        assert!(read_memory(&dir.path().join("absent"), true).is_none());
    }

    #[test]
    fn owner_keys_are_stable_and_distinct() {
        assert_eq!(
            owner_key("alice@example.com"),
            owner_key("alice@example.com")
        );
        assert_ne!(owner_key("alice@example.com"), owner_key("bob@example.com"));
        assert_eq!(owner_key("../../etc").len(), 32);
        assert!(owner_key("../../etc")
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn owner_key_is_truncated_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        // (FIPS 180-2, appendix B.1); the key is its first 128 bits.
        assert_eq!(owner_key("abc"), "ba7816bf8f01cfea414140de5dae2223");
        // SHA-256("") = e3b0c44298fc1c149afbf4c8996fb924…
        assert_eq!(owner_key(""), "e3b0c44298fc1c149afbf4c8996fb924");
    }
}
