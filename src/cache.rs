//! The keys hook's on-disk memory of control-plane answers.
//!
//! sshd runs the keys hook at least twice per login and has no timeout of
//! its own, so answers are kept per service: fresh ones are used without a
//! request, stale ones keep logins working while the control plane is down
//! (Kanidm's lesson), 404s are remembered briefly, and a burst of logins to
//! one service waits on one lock so that one process asks (single flight).
//!
//! The session shell reads the same files as root to learn the service type
//! and the key's owner, so reads check ownership and never follow links.
//! Files are replaced atomically (temp file, fsync, rename): a reader sees
//! the old answer or the new one, never half of one.

use crate::api::ServiceDoc;
use crate::names::ServiceId;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FORMAT_VERSION: u64 = 1;
/// Cache files beyond this are corrupt (the body cap is 4 MiB by default).
const MAX_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// A remembered answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAnswer {
    /// Unix seconds when the control plane gave it.
    pub fetched_at: i64,
    /// `None` for "no such service" (404).
    pub doc: Option<ServiceDoc>,
}

impl CachedAnswer {
    pub fn age(&self, now: i64) -> i64 {
        now.saturating_sub(self.fetched_at).max(0)
    }
}

/// Why the cache could not be used. Callers log it and go on as if there
/// were no cache: it never decides a login by itself.
#[derive(Debug)]
pub enum CacheError {
    /// Could not read or write (permissions, full disk, …).
    Io(PathBuf, std::io::Error),
    /// Owner, mode or file type is not what the keys hook writes.
    Unsafe(PathBuf, String),
    /// The content does not parse.
    Corrupt(PathBuf, String),
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::Io(p, e) => write!(f, "cache {}: {e}", p.display()),
            CacheError::Unsafe(p, why) => write!(f, "cache {} is not trusted: {why}", p.display()),
            CacheError::Corrupt(p, why) => write!(f, "cache {} is corrupt: {why}", p.display()),
        }
    }
}

impl std::error::Error for CacheError {}

fn entry_path(dir: &Path, service: &ServiceId) -> PathBuf {
    dir.join(format!("{}.json", service.as_str()))
}

/// Reads the cached answer for `service`. `Ok(None)` when there is none.
/// With `trusted_owner`, the file must belong to that uid (or root) and
/// not be writable by group or others.
pub fn read(
    dir: &Path,
    service: &ServiceId,
    trusted_owner: Option<u32>,
) -> Result<Option<CachedAnswer>, CacheError> {
    let path = entry_path(dir, service);
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(CacheError::Unsafe(path, "it is a symbolic link".into()))
        }
        Err(e) => return Err(CacheError::Io(path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| CacheError::Io(path.clone(), e))?;
    if !meta.is_file() {
        return Err(CacheError::Unsafe(path, "not a regular file".into()));
    }
    if let Some(uid) = trusted_owner {
        if meta.uid() != uid && meta.uid() != 0 {
            return Err(CacheError::Unsafe(
                path,
                format!("owned by uid {}", meta.uid()),
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(CacheError::Unsafe(
                path,
                "writable by group or others".into(),
            ));
        }
    }
    if meta.len() > MAX_CACHE_BYTES {
        return Err(CacheError::Corrupt(path, "too large".into()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CACHE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| CacheError::Io(path.clone(), e))?;
    parse_entry(&bytes, service)
        .map(Some)
        .map_err(|why| CacheError::Corrupt(path, why))
}

fn parse_entry(bytes: &[u8], service: &ServiceId) -> Result<CachedAnswer, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v.get("version").and_then(Value::as_u64) != Some(FORMAT_VERSION) {
        return Err("unknown format version".into());
    }
    let fetched_at = v
        .get("fetched_at")
        .and_then(Value::as_i64)
        .ok_or("no fetched_at")?;
    let doc = match v.get("status").and_then(Value::as_str) {
        Some("found") => {
            let body = v.get("body").cloned().ok_or("no body")?;
            Some(ServiceDoc::from_value(body, service).map_err(|e| e.to_string())?)
        }
        Some("not_found") => None,
        _ => return Err("unknown status".into()),
    };
    Ok(CachedAnswer { fetched_at, doc })
}

/// Replaces the cached answer atomically. `body` is the control plane's
/// JSON (already parsed once), `None` for a 404.
pub fn write(
    dir: &Path,
    service: &ServiceId,
    fetched_at: i64,
    body: Option<&Value>,
) -> Result<(), CacheError> {
    let entry = match body {
        Some(b) => {
            json!({"version": FORMAT_VERSION, "fetched_at": fetched_at, "status": "found", "body": b})
        }
        None => json!({"version": FORMAT_VERSION, "fetched_at": fetched_at, "status": "not_found"}),
    };
    let path = entry_path(dir, service);
    let tmp = dir.join(format!(".{}.{}.tmp", service.as_str(), std::process::id()));
    let io = |e| CacheError::Io(tmp.clone(), e);
    let result = (|| {
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(entry.to_string().as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(|e| CacheError::Io(path.clone(), e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// How usable a cached answer is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Use it without asking the control plane.
    Fresh,
    /// Ask first; serve it only if the control plane fails.
    Stale,
    /// Too old to serve even when the control plane is down.
    Expired,
}

/// The one place that turns ages into decisions.
pub fn freshness(answer: &CachedAnswer, now: i64, cfg: &crate::config::Cache) -> Freshness {
    let age = answer.age(now);
    let fresh_for = if answer.doc.is_some() {
        cfg.fresh_secs
    } else {
        cfg.negative_secs
    };
    let fresh_for = i64::try_from(fresh_for).unwrap_or(i64::MAX);
    let stale_for = i64::try_from(cfg.stale_secs).unwrap_or(i64::MAX);
    if answer.fetched_at > now + 60 {
        // From the future: the clock jumped back. Do not trust it as fresh.
        Freshness::Stale
    } else if age < fresh_for {
        Freshness::Fresh
    } else if age <= stale_for && answer.doc.is_some() {
        Freshness::Stale
    } else {
        Freshness::Expired
    }
}

fn failure_path(dir: &Path, service: &ServiceId) -> PathBuf {
    dir.join(format!("{}.failed", service.as_str()))
}

/// Remembers that the control plane failed for `service` at `now`.
pub fn note_failure(dir: &Path, service: &ServiceId, now: i64) -> Result<(), CacheError> {
    let path = failure_path(dir, service);
    let mut f = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| CacheError::Io(path.clone(), e))?;
    f.write_all(now.to_string().as_bytes())
        .map_err(|e| CacheError::Io(path, e))
}

/// Forgets a remembered failure (the control plane answered).
pub fn clear_failure(dir: &Path, service: &ServiceId) {
    let _ = std::fs::remove_file(failure_path(dir, service));
}

/// Seconds since the control plane failed for `service`, when that was
/// less than `window_secs` ago. A missing, unreadable, empty (being
/// written) or future-dated record counts as no failure: it can only ever
/// save a request, never refuse a login the control plane would allow.
pub fn recent_failure(dir: &Path, service: &ServiceId, now: i64, window_secs: u64) -> Option<i64> {
    if window_secs == 0 {
        return None;
    }
    let mut text = String::new();
    File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(failure_path(dir, service))
        .ok()?
        .take(32)
        .read_to_string(&mut text)
        .ok()?;
    let at: i64 = text.trim().parse().ok()?;
    let age = now.checked_sub(at)?;
    (age >= 0 && age < i64::try_from(window_secs).unwrap_or(i64::MAX)).then_some(age)
}

/// Holding this means this process is the one asking the control plane for
/// the service. The kernel drops the lock when the process dies.
pub struct FlightLock {
    _file: File,
}

/// Takes the service's single-flight lock, waiting at most until
/// `deadline`. `Ok(None)` when the deadline passed first (someone else is
/// still asking; the caller serves whatever the cache has by then).
pub fn lock(
    dir: &Path,
    service: &ServiceId,
    deadline: Instant,
) -> Result<Option<FlightLock>, CacheError> {
    let path = dir.join(format!("{}.lock", service.as_str()));
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| CacheError::Io(path.clone(), e))?;
    let mut pause = Duration::from_millis(2);
    loop {
        // SAFETY: flock on an fd we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(Some(FlightLock { _file: file }));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) && err.raw_os_error() != Some(libc::EINTR)
        {
            return Err(CacheError::Io(path, err));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cache;

    fn sid() -> ServiceId {
        ServiceId::parse("srv-a1").unwrap()
    }

    fn body() -> Value {
        json!({"service": {"id": "srv-a1", "type": "web_service"}, "keys": []})
    }

    #[test]
    fn write_then_read_round_trips_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path(), &sid(), None).unwrap().is_none());
        write(dir.path(), &sid(), 1000, Some(&body())).unwrap();
        let a = read(dir.path(), &sid(), None).unwrap().unwrap();
        assert_eq!(a.fetched_at, 1000);
        assert_eq!(a.doc.unwrap().service.kind, "web_service");
        write(dir.path(), &sid(), 2000, None).unwrap();
        assert!(read(dir.path(), &sid(), None)
            .unwrap()
            .unwrap()
            .doc
            .is_none());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn corrupt_unsafe_and_foreign_entries_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("srv-a1.json");
        for junk in [&b"{"[..], b"[]", b"\xff\xfe", br#"{"version":1,"fetched_at":"x","status":"found"}"#,
                     br#"{"version":9,"fetched_at":1,"status":"found","body":{}}"#,
                     br#"{"version":1,"fetched_at":1,"status":"found","body":{"service":{"id":"srv-b2","type":"web_service"}}}"#] {
            std::fs::write(&p, junk).unwrap();
            assert!(matches!(read(dir.path(), &sid(), None), Err(CacheError::Corrupt(..))));
        }
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        assert!(matches!(
            read(dir.path(), &sid(), None),
            Err(CacheError::Unsafe(..))
        ));
        std::fs::remove_file(&p).unwrap();
        write(dir.path(), &sid(), 1, Some(&body())).unwrap();
        let me = nix::unistd::getuid().as_raw();
        if me == 0 {
            std::os::unix::fs::chown(&p, Some(4242), None).unwrap();
            assert!(matches!(
                read(dir.path(), &sid(), Some(1000)),
                Err(CacheError::Unsafe(..))
            ));
            assert!(read(dir.path(), &sid(), Some(4242)).is_ok());
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            read(dir.path(), &sid(), Some(me)),
            Err(CacheError::Unsafe(..))
        ));
    }

    #[test]
    fn freshness_policy() {
        let cfg = Cache {
            fresh_secs: 60,
            stale_secs: 3600,
            negative_secs: 10,
            ..Cache::default()
        };
        let found = |at| CachedAnswer {
            fetched_at: at,
            doc: Some(ServiceDoc::from_value(body(), &sid()).unwrap()),
        };
        let gone = |at| CachedAnswer {
            fetched_at: at,
            doc: None,
        };
        assert_eq!(freshness(&found(1000), 1059, &cfg), Freshness::Fresh);
        assert_eq!(freshness(&found(1000), 1060, &cfg), Freshness::Stale);
        assert_eq!(freshness(&found(1000), 4600, &cfg), Freshness::Stale);
        assert_eq!(freshness(&found(1000), 4601, &cfg), Freshness::Expired);
        assert_eq!(freshness(&gone(1000), 1009, &cfg), Freshness::Fresh);
        assert_eq!(freshness(&gone(1000), 1010, &cfg), Freshness::Expired);
        assert_eq!(
            freshness(&found(9000), 1000, &cfg),
            Freshness::Stale,
            "future timestamps"
        );
    }

    #[test]
    fn failure_is_remembered_for_its_window_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recent_failure(dir.path(), &sid(), 1000, 5), None);
        note_failure(dir.path(), &sid(), 1000).unwrap();
        assert_eq!(recent_failure(dir.path(), &sid(), 1000, 5), Some(0));
        assert_eq!(recent_failure(dir.path(), &sid(), 1004, 5), Some(4));
        assert_eq!(recent_failure(dir.path(), &sid(), 1005, 5), None);
        assert_eq!(recent_failure(dir.path(), &sid(), 999, 5), None, "future");
        assert_eq!(recent_failure(dir.path(), &sid(), 1001, 0), None, "off");
        let other = ServiceId::parse("srv-b2").unwrap();
        assert_eq!(recent_failure(dir.path(), &other, 1001, 5), None);
        clear_failure(dir.path(), &sid());
        assert_eq!(recent_failure(dir.path(), &sid(), 1001, 5), None);
        std::fs::write(dir.path().join("srv-a1.failed"), "junk").unwrap();
        assert_eq!(recent_failure(dir.path(), &sid(), 1001, 5), None);
    }

    #[test]
    fn single_flight_lets_one_holder_in_and_respects_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let far = Instant::now() + Duration::from_secs(5);
        let held = lock(dir.path(), &sid(), far).unwrap().unwrap();
        let start = Instant::now();
        let other = lock(
            dir.path(),
            &sid(),
            Instant::now() + Duration::from_millis(100),
        )
        .unwrap();
        assert!(other.is_none(), "a second holder while the first holds it");
        assert!(start.elapsed() < Duration::from_millis(500));
        drop(held);
        assert!(lock(dir.path(), &sid(), far).unwrap().is_some());
    }
}
