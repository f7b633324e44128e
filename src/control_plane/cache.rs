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
//!
//! The directory is bounded. sshd runs the hook before authentication for
//! any name of the grammar, so anyone who can reach port 22 chooses which
//! entries are written. Every write is counted in a small ledger (one
//! fixed file, flocked while a write is accounted); when a cap would be
//! passed, or every [`SWEEP_EVERY_SECS`], the writer sweeps: expired
//! entries go, then the oldest "no such service" and failure records
//! (what a stranger can create) beyond `max_negative_entries`, then the
//! oldest entries of any kind beyond `max_entries` / `max_bytes`, each
//! down to 90 % of its cap so that sweeps stay rare. Reads never touch the
//! ledger: the hot path is one open. Single-flight lock files are removed
//! by their holder; the sweep removes those of killed processes.

use crate::control_plane::api::ServiceDoc;
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
/// A writer sweeps at least this often even below the caps, so expired
/// entries (404s after `negative_secs`) do not wait for the caps.
pub const SWEEP_EVERY_SECS: i64 = 600;
/// How long a writer waits for the ledger (another writer sweeping); past
/// it the answer is not stored, which costs a later request, nothing else.
const LEDGER_WAIT: Duration = Duration::from_millis(500);
/// Failure records older than the largest allowed `failure_backoff_secs`
/// can never matter again.
const FAILURE_MAX_AGE_SECS: i64 = 300;
/// Temporary files of a writer older than this belong to a dead process
/// (the hook's own alarm ends it one second after a budget of at most 60 s).
const TEMP_MAX_AGE_SECS: i64 = 120;
/// Entries at most this large are read by the sweep to learn whether they
/// are "no such service" (those are about 60 bytes; answers with a service
/// are larger).
const SMALL_ENTRY_BYTES: u64 = 512;
const LEDGER_NAME: &str = ".ledger";

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
    /// Another writer held the ledger too long: the answer was not stored.
    Busy(PathBuf),
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::Io(p, e) => write!(f, "cache {}: {e}", p.display()),
            CacheError::Unsafe(p, why) => write!(f, "cache {} is not trusted: {why}", p.display()),
            CacheError::Corrupt(p, why) => write!(f, "cache {} is corrupt: {why}", p.display()),
            CacheError::Busy(p) => write!(
                f,
                "cache ledger {} busy for {} ms; answer not stored",
                p.display(),
                LEDGER_WAIT.as_millis()
            ),
        }
    }
}

impl std::error::Error for CacheError {}

/// What a cache entry is named after: a service's answer (`srv-…`), or
/// the list of services one key may enter (`key-…`, the picker's answer,
/// issue 20). Both kinds share the directory, the ledger and its caps.
pub trait EntryName {
    /// The file name without extension: only `[a-z0-9-]`, never `.`/`/`.
    fn stem(&self) -> &str;
}

impl EntryName for ServiceId {
    fn stem(&self) -> &str {
        self.as_str()
    }
}

/// The cache name of one key's services list: `key-` and the SHA-256 of
/// its fingerprint in hex (the fingerprint's base64 has `/` and `+`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyListName(String);

impl KeyListName {
    pub fn for_fingerprint(fingerprint: &str) -> KeyListName {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(fingerprint.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        KeyListName(format!("key-{hex}"))
    }

    /// True for a stem [`for_fingerprint`](Self::for_fingerprint) makes.
    fn is_stem(stem: &str) -> bool {
        stem.strip_prefix("key-").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    }
}

impl EntryName for KeyListName {
    fn stem(&self) -> &str {
        &self.0
    }
}

fn entry_path(dir: &Path, service: &(impl EntryName + ?Sized)) -> PathBuf {
    dir.join(format!("{}.json", service.stem()))
}

/// Reads the cached answer for `service`. `Ok(None)` when there is none.
/// With `trusted_owner`, the file must belong to that uid (or root) and
/// not be writable by group or others.
pub fn read(
    dir: &Path,
    service: &ServiceId,
    trusted_owner: Option<u32>,
) -> Result<Option<CachedAnswer>, CacheError> {
    let Some((path, raw)) = read_raw(dir, service, trusted_owner)? else {
        return Ok(None);
    };
    let doc = match raw.body {
        Some(body) => Some(
            ServiceDoc::from_value(body, service)
                .map_err(|e| CacheError::Corrupt(path, e.to_string()))?,
        ),
        None => None,
    };
    Ok(Some(CachedAnswer {
        fetched_at: raw.fetched_at,
        doc,
    }))
}

/// A cached entry before its body is interpreted.
#[derive(Debug, Clone, PartialEq)]
pub struct RawAnswer {
    pub fetched_at: i64,
    /// `None`: the control plane said there is nothing (404, or for a key
    /// an empty list).
    pub body: Option<Value>,
}

/// Reads any entry with the checks of [`read`]; the caller parses the body.
pub fn read_raw(
    dir: &Path,
    name: &(impl EntryName + ?Sized),
    trusted_owner: Option<u32>,
) -> Result<Option<(PathBuf, RawAnswer)>, CacheError> {
    let path = entry_path(dir, name);
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
    match parse_entry(&bytes) {
        Ok(raw) => Ok(Some((path, raw))),
        Err(why) => Err(CacheError::Corrupt(path, why)),
    }
}

fn parse_entry(bytes: &[u8]) -> Result<RawAnswer, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v.get("version").and_then(Value::as_u64) != Some(FORMAT_VERSION) {
        return Err("unknown format version".into());
    }
    let fetched_at = v
        .get("fetched_at")
        .and_then(Value::as_i64)
        .ok_or("no fetched_at")?;
    let body = match v.get("status").and_then(Value::as_str) {
        Some("found") => Some(v.get("body").cloned().ok_or("no body")?),
        Some("not_found") => None,
        _ => return Err("unknown status".into()),
    };
    Ok(RawAnswer { fetched_at, body })
}

/// Replaces the cached answer atomically. `body` is the control plane's
/// JSON (already parsed once), `None` for a 404. Counted in the ledger
/// (and sweeps when due); what the sweep did, when it ran, is returned for
/// the admin's log.
pub fn write(
    cfg: &crate::config::Cache,
    service: &(impl EntryName + ?Sized),
    fetched_at: i64,
    body: Option<&Value>,
) -> Result<Option<Sweep>, CacheError> {
    let dir = cfg.dir.as_path();
    let entry = match body {
        Some(b) => {
            json!({"version": FORMAT_VERSION, "fetched_at": fetched_at, "status": "found", "body": b})
        }
        None => json!({"version": FORMAT_VERSION, "fetched_at": fetched_at, "status": "not_found"}),
    };
    let bytes = entry.to_string().into_bytes();
    let path = entry_path(dir, service);
    let tmp = dir.join(format!(".{}.{}.tmp", service.stem(), std::process::id()));
    let io = |e| CacheError::Io(tmp.clone(), e);
    let result = (|| {
        // Written and synced before the ledger is taken: the lock is held
        // only for the bookkeeping and the rename.
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        // Answers are synced (stale serving and the session shell depend
        // on them surviving a crash); a 404 is not: losing one costs one
        // request, and strangers choose how many are written.
        if body.is_some() {
            f.sync_all().map_err(io)?;
        }
        let change = Change {
            len: bytes.len() as u64,
            negative: body.is_none(),
        };
        account(cfg, &path, change, || {
            std::fs::rename(&tmp, &path).map_err(|e| CacheError::Io(path.clone(), e))
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One file about to be created or replaced, as the ledger sees it.
#[derive(Debug, Clone, Copy)]
struct Change {
    len: u64,
    /// A "no such service" entry or a failure record: the kinds anyone who
    /// can reach sshd can make the hook write, capped on their own.
    negative: bool,
}

/// Runs `put` (which creates or replaces `path`) with the ledger held,
/// sweeping first when `put` would pass a cap, and records the change.
fn account(
    cfg: &crate::config::Cache,
    path: &Path,
    change: Change,
    put: impl FnOnce() -> Result<(), CacheError>,
) -> Result<Option<Sweep>, CacheError> {
    let ledger = Ledger::lock(&cfg.dir, Instant::now() + LEDGER_WAIT)?;
    let now = crate::time::now_unix();
    let mut counts = ledger.read();
    let mut swept = None;
    let mut old = old_file(path);
    let due = match counts {
        None => true,
        Some(c) => {
            let after = c.with(old, change);
            after.entries > cfg.max_entries
                || after.bytes > cfg.max_bytes
                || after.negatives > cfg.max_negative_entries
                || now.saturating_sub(c.swept_at) >= SWEEP_EVERY_SECS
                || c.swept_at > now + 60
        }
    };
    if due {
        let (c, report) = sweep(cfg, now, change);
        counts = Some(c);
        swept = Some(report);
        // Looked at again: the sweep may have removed the old file.
        old = old_file(path);
    }
    let put = put();
    if let Some(c) = counts {
        let c = if put.is_ok() { c.with(old, change) } else { c };
        // A failed ledger write only makes the next writer recount.
        let _ = ledger.write(&c);
    }
    put.map(|()| swept)
}

/// Size and kind of the file at `path` before a write replaces it.
fn old_file(path: &Path) -> Option<Change> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    Some(Change {
        len: meta.len(),
        negative: is_negative(path, &meta),
    })
}

/// True for a failure record or a "no such service" entry.
fn is_negative(path: &Path, meta: &std::fs::Metadata) -> bool {
    if path.extension().is_some_and(|e| e == "failed") {
        return true;
    }
    if meta.len() > SMALL_ENTRY_BYTES {
        return false;
    }
    let mut text = String::new();
    let read = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .and_then(|f| f.take(SMALL_ENTRY_BYTES).read_to_string(&mut text));
    // Unreadable or not JSON: counted as negative, so that it is among the
    // first to go (it serves nobody).
    read.is_err()
        || serde_json::from_str::<Value>(&text)
            .map(|v| v.get("status").and_then(Value::as_str) != Some("found"))
            .unwrap_or(true)
}

/// What the ledger knows: the entries (answers and failure records) in the
/// directory, their bytes, how many are negative, and when the last sweep
/// counted them exactly. Between sweeps the counts may be too high (a
/// failure record removed, a file deleted by tmpfiles), never too low:
/// every file the hook creates is counted before it appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub entries: u64,
    pub bytes: u64,
    pub negatives: u64,
    pub swept_at: i64,
}

impl Counts {
    /// The counts after `new` replaces `old` (or is created).
    fn with(self, old: Option<Change>, new: Change) -> Counts {
        let (old_len, old_neg, existed) = match old {
            Some(o) => (o.len, o.negative, true),
            None => (0, false, false),
        };
        Counts {
            entries: self.entries + u64::from(!existed),
            bytes: (self.bytes + new.len).saturating_sub(old_len),
            negatives: (self.negatives + u64::from(new.negative))
                .saturating_sub(u64::from(old_neg)),
            swept_at: self.swept_at,
        }
    }

    fn parse(text: &str) -> Option<Counts> {
        let mut w = text.split_whitespace();
        if w.next()? != "porthole-cache-ledger" || w.next()? != "1" {
            return None;
        }
        let mut n = || w.next()?.parse::<i64>().ok();
        let (entries, bytes, negatives, swept_at) = (n()?, n()?, n()?, n()?);
        Some(Counts {
            entries: u64::try_from(entries).ok()?,
            bytes: u64::try_from(bytes).ok()?,
            negatives: u64::try_from(negatives).ok()?,
            swept_at,
        })
    }

    fn render(&self) -> String {
        format!(
            "porthole-cache-ledger 1 {} {} {} {}\n",
            self.entries, self.bytes, self.negatives, self.swept_at
        )
    }
}

/// The ledger's counts as of the last write, read without taking it (for
/// `porthole doctor`): an upper estimate, `None` before the first write.
pub fn counts(dir: &Path) -> Option<Counts> {
    let mut text = String::new();
    File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(dir.join(LEDGER_NAME))
        .ok()?
        .take(256)
        .read_to_string(&mut text)
        .ok()?;
    Counts::parse(&text)
}

/// The ledger file, flocked: whoever holds it is the only one creating,
/// replacing or sweeping entries. It is never removed by the hook (the
/// shipped tmpfiles.d rule excludes it too); if it is lost anyway, the
/// next writer finds no counts and recounts by sweeping.
struct Ledger {
    file: File,
}

impl Ledger {
    fn lock(dir: &Path, deadline: Instant) -> Result<Ledger, CacheError> {
        let path = dir.join(LEDGER_NAME);
        let file = match open_lock_file(&path) {
            // Left by the hook run by hand as root: the directory is ours,
            // so replace it (without counts: the next write recounts)
            // rather than never caching again.
            Err(CacheError::Io(_, e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let _ = std::fs::remove_file(&path);
                open_lock_file(&path)?
            }
            other => other?,
        };
        match flock_until(&file, &path, deadline)? {
            true => Ok(Ledger { file }),
            false => Err(CacheError::Busy(path)),
        }
    }

    fn read(&self) -> Option<Counts> {
        let mut text = String::new();
        (&self.file).take(256).read_to_string(&mut text).ok()?;
        Counts::parse(&text)
    }

    fn write(&self, c: &Counts) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let text = c.render();
        self.file.set_len(0)?;
        self.file.write_all_at(text.as_bytes(), 0)
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sweep {
    /// Entries past their use (404s after negative_secs, answers after
    /// stale_secs, failure records after 300 s).
    pub expired: u64,
    /// Entries still usable, removed because a cap was reached (oldest first).
    pub evicted: u64,
    /// Lock files of dead holders and temporary files of dead writers.
    pub leftovers: u64,
    /// What stays.
    pub counts: Counts,
}

/// One entry as the sweep sees it.
struct Item {
    path: PathBuf,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
    negative: bool,
}

/// Counts the directory and removes what must go so that `incoming` fits
/// below 90 % of every cap. Call with the ledger held.
fn sweep(cfg: &crate::config::Cache, now: i64, incoming: Change) -> (Counts, Sweep) {
    let mut report = Sweep::default();
    let mut items = Vec::new();
    let Ok(rd) = std::fs::read_dir(&cfg.dir) else {
        return (Counts::default(), report);
    };
    let age_of = |m: &std::fs::Metadata| now.saturating_sub(m.mtime());
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        match classify(name) {
            Kind::Lock => {
                if remove_unheld_lock(&path) {
                    report.leftovers += 1;
                }
            }
            Kind::Temp => {
                if age_of(&meta) > TEMP_MAX_AGE_SECS && std::fs::remove_file(&path).is_ok() {
                    report.leftovers += 1;
                }
            }
            kind @ (Kind::Entry | Kind::Failure) => {
                let negative = is_negative(&path, &meta);
                let age = age_of(&meta);
                // A future mtime (clock set back) is not "expired".
                let expired = age >= 0
                    && match kind {
                        Kind::Failure => age >= FAILURE_MAX_AGE_SECS,
                        _ if negative => {
                            age >= i64::try_from(cfg.negative_secs).unwrap_or(i64::MAX)
                        }
                        _ => age > i64::try_from(cfg.stale_secs).unwrap_or(i64::MAX),
                    };
                if expired && std::fs::remove_file(&path).is_ok() {
                    report.expired += 1;
                    continue;
                }
                items.push(Item {
                    path,
                    len: meta.len(),
                    mtime: meta.mtime(),
                    mtime_nsec: meta.mtime_nsec(),
                    negative,
                });
            }
            Kind::Ledger | Kind::Other => {}
        }
    }
    let low = |cap: u64| cap - cap / 10;
    let max_neg = low(cfg.max_negative_entries).saturating_sub(u64::from(incoming.negative));
    let max_entries = low(cfg.max_entries).saturating_sub(1);
    let max_bytes = low(cfg.max_bytes).saturating_sub(incoming.len);
    // Oldest first; negatives before answers at the same age.
    items.sort_by_key(|i| (i.mtime, i.mtime_nsec, !i.negative));
    let mut negatives = items.iter().filter(|i| i.negative).count() as u64;
    let mut entries = items.len() as u64;
    let mut bytes: u64 = items.iter().map(|i| i.len).sum();
    let evict = |item: &Item, report: &mut Sweep| {
        // Counted as gone even when the unlink failed: already gone, or a
        // directory we cannot write, where nothing new can appear either.
        if std::fs::remove_file(&item.path).is_ok() {
            report.evicted += 1;
        }
    };
    // What strangers can create goes first: negatives over their own cap,
    // then negatives before answers while the whole is over its caps.
    for item in &items {
        if negatives <= max_neg && entries <= max_entries && bytes <= max_bytes {
            break;
        }
        if item.negative {
            evict(item, &mut report);
            negatives -= 1;
            entries -= 1;
            bytes = bytes.saturating_sub(item.len);
        }
    }
    for item in &items {
        if entries <= max_entries && bytes <= max_bytes {
            break;
        }
        if !item.negative {
            evict(item, &mut report);
            entries -= 1;
            bytes = bytes.saturating_sub(item.len);
        }
    }
    report.counts = Counts {
        entries,
        bytes,
        negatives,
        swept_at: now,
    };
    (report.counts, report)
}

/// What a name in the cache directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `<service>.json`
    Entry,
    /// `<service>.failed`
    Failure,
    /// `<service>.lock`
    Lock,
    /// `.<service>.<pid>.tmp`
    Temp,
    Ledger,
    /// Not ours: never counted, never removed.
    Other,
}

fn classify(name: &str) -> Kind {
    let service = |stem: &str| ServiceId::parse(stem).is_some() || KeyListName::is_stem(stem);
    if name == LEDGER_NAME {
        return Kind::Ledger;
    }
    if let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
        return match rest.rsplit_once('.') {
            Some((svc, pid)) if service(svc) && pid.bytes().all(|b| b.is_ascii_digit()) => {
                Kind::Temp
            }
            _ => Kind::Other,
        };
    }
    match name.rsplit_once('.') {
        Some((svc, "json")) if service(svc) => Kind::Entry,
        Some((svc, "failed")) if service(svc) => Kind::Failure,
        Some((svc, "lock")) if service(svc) => Kind::Lock,
        _ => Kind::Other,
    }
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
    freshness_of(answer.fetched_at, answer.doc.is_some(), now, cfg)
}

/// [`freshness`] of any entry: `found` is false for a negative one.
pub fn freshness_of(
    fetched_at: i64,
    found: bool,
    now: i64,
    cfg: &crate::config::Cache,
) -> Freshness {
    let age = now.saturating_sub(fetched_at).max(0);
    let fresh_for = if found {
        cfg.fresh_secs
    } else {
        cfg.negative_secs
    };
    let fresh_for = i64::try_from(fresh_for).unwrap_or(i64::MAX);
    let stale_for = i64::try_from(cfg.stale_secs).unwrap_or(i64::MAX);
    if fetched_at > now + 60 {
        // From the future: the clock jumped back. Do not trust it as fresh.
        Freshness::Stale
    } else if age < fresh_for {
        Freshness::Fresh
    } else if age <= stale_for && found {
        Freshness::Stale
    } else {
        Freshness::Expired
    }
}

fn failure_path(dir: &Path, service: &(impl EntryName + ?Sized)) -> PathBuf {
    dir.join(format!("{}.failed", service.stem()))
}

/// Remembers that the control plane failed for `service` at `now`.
/// Counted in the ledger like an entry (a stranger's random names against
/// a failing control plane would otherwise leave one each).
pub fn note_failure(
    cfg: &crate::config::Cache,
    service: &(impl EntryName + ?Sized),
    now: i64,
) -> Result<Option<Sweep>, CacheError> {
    let path = failure_path(&cfg.dir, service);
    let text = now.to_string();
    let change = Change {
        len: text.len() as u64,
        negative: true,
    };
    account(cfg, &path, change, || {
        let mut f = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| CacheError::Io(path.clone(), e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| CacheError::Io(path.clone(), e))
    })
}

/// Forgets a remembered failure (the control plane answered). Not taken
/// off the ledger: its counts may only be too high, which at worst brings
/// the next sweep forward.
pub fn clear_failure(dir: &Path, service: &(impl EntryName + ?Sized)) {
    let _ = std::fs::remove_file(failure_path(dir, service));
}

/// Seconds since the control plane failed for `service`, when that was
/// less than `window_secs` ago. A missing, unreadable, empty (being
/// written) or future-dated record counts as no failure: it can only ever
/// save a request, never refuse a login the control plane would allow.
pub fn recent_failure(
    dir: &Path,
    service: &(impl EntryName + ?Sized),
    now: i64,
    window_secs: u64,
) -> Option<i64> {
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
/// the service. The kernel drops the lock when the process dies; dropping
/// it removes the lock file first, so that logins to names nobody asks for
/// again (a stranger's random ones) leave nothing behind.
pub struct FlightLock {
    path: PathBuf,
    _file: File,
}

impl Drop for FlightLock {
    fn drop(&mut self) {
        // Unlinked while still held (the file closes after this): a waiter
        // that then gets the lock sees the path gone or another inode and
        // starts over on the path, so two holders never coexist.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Opens (creating) a lock file without following links.
fn open_lock_file(path: &Path) -> Result<File, CacheError> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                CacheError::Unsafe(path.to_owned(), "it is a symbolic link".into())
            }
            _ => CacheError::Io(path.to_owned(), e),
        })
}

/// Takes an exclusive flock on `file`, polling until `deadline`.
/// `Ok(false)` when the deadline passed first.
fn flock_until(file: &File, path: &Path, deadline: Instant) -> Result<bool, CacheError> {
    let mut pause = Duration::from_millis(2);
    loop {
        // SAFETY: flock on an fd we own, no memory involved.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) && err.raw_os_error() != Some(libc::EINTR)
        {
            return Err(CacheError::Io(path.to_owned(), err));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

/// True when the file we hold is still the one at `path` (nobody removed
/// it between our open and our lock).
fn still_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
        _ => false,
    }
}

/// Takes the service's single-flight lock, waiting at most until
/// `deadline`. `Ok(None)` when the deadline passed first (someone else is
/// still asking; the caller serves whatever the cache has by then).
pub fn lock(
    dir: &Path,
    service: &(impl EntryName + ?Sized),
    deadline: Instant,
) -> Result<Option<FlightLock>, CacheError> {
    let path = dir.join(format!("{}.lock", service.stem()));
    loop {
        let file = open_lock_file(&path)?;
        if !flock_until(&file, &path, deadline)? {
            return Ok(None);
        }
        if still_at(&file, &path) {
            return Ok(Some(FlightLock { path, _file: file }));
        }
        // The holder before us removed it as it let go: the lock is
        // whatever is at the path now (created anew if need be).
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// Removes a lock file nobody holds (its holder was killed), the way a
/// holder does: take it, check it is still the one at the path, unlink,
/// let go. True when removed.
fn remove_unheld_lock(path: &Path) -> bool {
    let Ok(file) = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    // SAFETY: flock on an fd we own, no memory involved.
    let held = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    held && still_at(&file, path) && std::fs::remove_file(path).is_ok()
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

    fn at(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_owned(),
            ..Cache::default()
        }
    }

    #[test]
    fn write_then_read_round_trips_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path(), &sid(), None).unwrap().is_none());
        write(&at(dir.path()), &sid(), 1000, Some(&body())).unwrap();
        let a = read(dir.path(), &sid(), None).unwrap().unwrap();
        assert_eq!(a.fetched_at, 1000);
        assert_eq!(a.doc.unwrap().service.kind, "web_service");
        write(&at(dir.path()), &sid(), 2000, None).unwrap();
        assert!(read(dir.path(), &sid(), None)
            .unwrap()
            .unwrap()
            .doc
            .is_none());
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".ledger", "srv-a1.json"]);
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
        write(&at(dir.path()), &sid(), 1, Some(&body())).unwrap();
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
        note_failure(&at(dir.path()), &sid(), 1000).unwrap();
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

    fn svc(n: usize) -> ServiceId {
        ServiceId::parse(&format!("srv-t{n}")).unwrap()
    }

    fn found(n: usize, pad: usize) -> Value {
        json!({"service": {"id": format!("srv-t{n}"), "type": "web_service"},
               "keys": [], "pad": "x".repeat(pad)})
    }

    /// Our entries in `dir`: (answers + failure records, negatives, bytes),
    /// and every name (for leftovers).
    fn census(dir: &Path) -> (u64, u64, u64, Vec<String>) {
        let (mut entries, mut negatives, mut bytes) = (0, 0, 0);
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let meta = e.metadata().unwrap();
            if matches!(classify(&name), Kind::Entry | Kind::Failure) {
                entries += 1;
                bytes += meta.len();
                negatives += u64::from(is_negative(&e.path(), &meta));
            }
            names.push(name);
        }
        (entries, negatives, bytes, names)
    }

    fn age(dir: &Path, name: &str, secs: u64) {
        let f = File::options().write(true).open(dir.join(name)).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn names_are_classified_and_foreign_files_are_not_ours() {
        assert_eq!(classify("srv-a1.json"), Kind::Entry);
        assert_eq!(classify("srv-a1.failed"), Kind::Failure);
        assert_eq!(classify("srv-a1.lock"), Kind::Lock);
        assert_eq!(classify(".srv-a1.4242.tmp"), Kind::Temp);
        assert_eq!(classify(".ledger"), Kind::Ledger);
        let key = KeyListName::for_fingerprint("SHA256:abc/+=");
        assert_eq!(key.stem().len(), 4 + 64);
        assert_eq!(classify(&format!("{}.json", key.stem())), Kind::Entry);
        assert_eq!(classify(&format!("{}.lock", key.stem())), Kind::Lock);
        assert_eq!(classify("key-abc.json"), Kind::Other);
        assert_eq!(
            classify(&format!("key-{}.json", "A".repeat(64))),
            Kind::Other
        );
        for other in [
            "notes.txt",
            "srv-A1.json",
            ".srv-a1.x.tmp",
            "srv-a1.json.bak",
            "fill",
            "..json",
        ] {
            assert_eq!(classify(other), Kind::Other, "{other}");
        }
        let c = Counts {
            entries: 3,
            bytes: 400,
            negatives: 2,
            swept_at: 1_700_000_000,
        };
        assert_eq!(Counts::parse(&c.render()), Some(c));
        assert_eq!(Counts::parse("porthole-cache-ledger 1 -1 0 0 0"), None);
        assert_eq!(Counts::parse(""), None);
    }

    #[test]
    fn negatives_are_capped_oldest_first_and_never_push_out_answers() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Cache {
            max_entries: 40,
            max_negative_entries: 10,
            ..at(dir.path())
        };
        for n in 0..5 {
            write(&cfg, &svc(n), 1, Some(&found(n, 100))).unwrap();
        }
        let mut sweeps = 0;
        for n in 100..1100 {
            if write(&cfg, &svc(n), 1, None).unwrap().is_some() {
                sweeps += 1;
            }
            let (entries, negatives, _, _) = census(dir.path());
            assert!(
                negatives <= 10 && entries <= 40,
                "after {n}: {entries} entries, {negatives} negatives"
            );
        }
        // Cheap: one sweep per 9 % of the negative cap, not one per write.
        assert!(sweeps <= 1000 / 2, "{sweeps} sweeps for 1000 writes");
        for n in 0..5 {
            let a = read(dir.path(), &svc(n), None).unwrap();
            assert!(a.is_some_and(|a| a.doc.is_some()), "answer {n} was evicted");
        }
        // The newest negatives are the ones kept.
        assert!(read(dir.path(), &svc(1099), None).unwrap().is_some());
        assert!(read(dir.path(), &svc(100), None).unwrap().is_none());
    }

    #[test]
    fn entries_and_bytes_are_capped_with_the_oldest_answers_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Cache {
            max_entries: 20,
            max_negative_entries: 20,
            max_bytes: 20_000,
            ..at(dir.path())
        };
        for n in 0..60 {
            write(&cfg, &svc(n), 1, Some(&found(n, 1500))).unwrap();
            // Distinct ages: the sweep orders by modification time.
            age(dir.path(), &format!("srv-t{n}.json"), 3000 - 10 * n as u64);
            let (entries, _, bytes, _) = census(dir.path());
            assert!(
                entries <= 20 && bytes <= 20_000,
                "after {n}: {entries} entries, {bytes} bytes"
            );
        }
        assert!(
            read(dir.path(), &svc(59), None).unwrap().is_some(),
            "the newest stays"
        );
        assert!(
            read(dir.path(), &svc(0), None).unwrap().is_none(),
            "the oldest goes"
        );
        // A replacement grows no count: the same service rewritten 50 times.
        for _ in 0..50 {
            assert!(write(&cfg, &svc(59), 2, Some(&found(59, 1500)))
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn sweep_removes_expired_entries_and_leftovers_and_nothing_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cfg = Cache {
            negative_secs: 30,
            stale_secs: 3600,
            ..at(d)
        };
        write(&cfg, &svc(1), 1, None).unwrap(); // 404, will expire
        write(&cfg, &svc(2), 1, None).unwrap(); // 404, young
        write(&cfg, &svc(3), 1, Some(&found(3, 10))).unwrap(); // stale but servable
        write(&cfg, &svc(4), 1, Some(&found(4, 10))).unwrap(); // past stale_secs
        note_failure(&cfg, &svc(5), 1).unwrap(); // failure, old
        age(d, "srv-t1.json", 31);
        age(d, "srv-t3.json", 3000);
        age(d, "srv-t4.json", 3601);
        age(d, "srv-t5.failed", 301);
        std::fs::write(d.join(".srv-t6.99.tmp"), "x").unwrap();
        age(d, ".srv-t6.99.tmp", 121);
        std::fs::write(d.join(".srv-t7.98.tmp"), "x").unwrap(); // a live writer's
        std::fs::write(d.join("srv-t8.lock"), "").unwrap(); // a killed holder's
        std::fs::write(d.join("notes.txt"), "the admin's").unwrap();
        let held = lock(d, &svc(9), Instant::now() + Duration::from_secs(1))
            .unwrap()
            .unwrap();
        let report = {
            let _ledger = Ledger::lock(d, Instant::now() + LEDGER_WAIT).unwrap();
            sweep(
                &cfg,
                crate::time::now_unix(),
                Change {
                    len: 0,
                    negative: false,
                },
            )
            .1
        };
        assert_eq!(
            (report.expired, report.evicted, report.leftovers),
            (3, 0, 2),
            "{report:?}"
        );
        let (_, _, _, mut names) = census(d);
        names.sort();
        assert_eq!(
            names,
            [
                ".ledger",
                ".srv-t7.98.tmp",
                "notes.txt",
                "srv-t2.json",
                "srv-t3.json",
                "srv-t9.lock"
            ]
        );
        assert_eq!(report.counts.entries, 2);
        assert_eq!(report.counts.negatives, 1);
        drop(held);
        assert!(
            !d.join("srv-t9.lock").exists(),
            "the holder removes its lock file"
        );
    }

    #[test]
    fn a_lost_ledger_is_recounted_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Cache {
            max_entries: 10,
            max_negative_entries: 10,
            ..at(dir.path())
        };
        for n in 0..8 {
            write(&cfg, &svc(n), 1, None).unwrap();
        }
        assert_eq!(counts(dir.path()).map(|c| c.entries), Some(8));
        std::fs::remove_file(dir.path().join(".ledger")).unwrap();
        assert_eq!(counts(dir.path()), None);
        let swept = write(&cfg, &svc(100), 1, None).unwrap().expect("a recount");
        assert!(swept.counts.entries <= 9, "{swept:?}");
        for n in 200..230 {
            write(&cfg, &svc(n), 1, None).unwrap();
            assert!(census(dir.path()).0 <= 10);
        }
    }

    #[test]
    fn single_flight_under_contention_leaves_no_lock_file() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (dir, inside, most) = (dir.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let far = Instant::now() + Duration::from_secs(20);
                        let held = lock(dir.path(), &sid(), far).unwrap().unwrap();
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(held);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two holders at once");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
