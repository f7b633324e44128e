//! Live sessions and maintenance state as small files under the state
//! directory (`/run/porthole`, root only), so that `porthole sessions`,
//! `kill`, `drain` and `close` work without a daemon.
//!
//! - `sessions/<id>.json`: one per live session, written by its supervisor,
//!   which holds an flock on it for the whole session. A record whose lock
//!   is free belongs to a dead supervisor: it is ignored and removed, so a
//!   SIGKILL never leaves a ghost behind.
//! - `sessions/<id>.close`: the message of an admin's close/kill request
//!   (the supervisor is then sent SIGTERM).
//! - `drain/<scope>.json`: a maintenance window for `all`, one service or
//!   one instance: new sessions are refused with its message, live ones are
//!   warned and closed at its deadline.

use crate::names::{ServiceId, Target};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const MAX_RECORD: u64 = 64 * 1024;

/// What `porthole sessions` shows about one session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub service: String,
    pub instance: String,
    pub owner: String,
    pub fingerprint: String,
    pub key_type: String,
    pub client: Option<String>,
    /// Unix seconds.
    pub started: i64,
    /// The client's command, "shell" or "subsystem:sftp".
    pub command: String,
    pub tty: bool,
    /// The supervisor's pid (host namespace).
    pub pid: i32,
    /// The session process, once started: lets a later sweep find what a
    /// supervisor killed with SIGKILL (OOM killer, admin) left running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<Leader>,
}

/// The session process: it leads a session (setsid) every process of the
/// session inherits, in the instance's pid namespace.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Leader {
    /// Host pid, which is also the session id of its processes.
    pub pid: i32,
    /// (device, inode) of the instance's pid namespace.
    pub pid_ns: (u64, u64),
    /// Its start time (clock ticks after boot, /proc/PID/stat field 22).
    pub start: u64,
}

/// A random session id (16 hex digits).
pub fn new_id() -> String {
    let mut buf = [0u8; 8];
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // Never fatal: fall back to pid and time (ids only need to be unique).
        let t = crate::time::now_unix() as u64;
        return format!("{:08x}{:08x}", std::process::id(), t as u32);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn sessions_dir(state: &Path) -> PathBuf {
    state.join("sessions")
}

/// Holds the record of a live session; dropping it removes the record.
pub struct Registration {
    file: File,
    path: PathBuf,
    close_path: PathBuf,
}

impl Registration {
    /// Rewrites the record (still locked) once the session process exists.
    pub fn update(&mut self, rec: &SessionRecord) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let text = serde_json::to_string(rec).map_err(std::io::Error::other)?;
        self.file.write_all_at(text.as_bytes(), 0)?;
        self.file.set_len(text.len() as u64)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.close_path);
    }
}

/// Writes and locks the record of a starting session.
pub fn register(state: &Path, rec: &SessionRecord) -> std::io::Result<Registration> {
    let dir = sessions_dir(state);
    crate::session::limits::ensure_dir(&dir)?;
    let path = dir.join(format!("{}.json", rec.id));
    let mut file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let text = serde_json::to_string(rec).map_err(std::io::Error::other)?;
    file.write_all(text.as_bytes())?;
    Ok(Registration {
        file,
        path,
        close_path: dir.join(format!("{}.close", rec.id)),
    })
}

fn read_small(path: &Path) -> Option<String> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let mut s = String::new();
    f.take(MAX_RECORD).read_to_string(&mut s).ok()?;
    Some(s)
}

fn read_record(path: &Path) -> Option<SessionRecord> {
    read_small(path).and_then(|t| serde_json::from_str(&t).ok())
}

/// Whether the supervisor that wrote `path` still holds its lock.
fn is_live(path: &Path) -> bool {
    let Ok(f) = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    else {
        return false;
    };
    // SAFETY: flock on an fd we own; a shared lock succeeds only when the
    // supervisor's exclusive lock is gone.
    let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    !free
}

/// Every live session, oldest first. Records of dead supervisors are
/// removed and what those sessions left running is killed ([`sweep`]).
pub fn list(state: &Path) -> Vec<SessionRecord> {
    scan(state, true).0
}

/// Removes the records of dead supervisors and kills the processes their
/// sessions left in the instance (a supervisor killed with SIGKILL cannot
/// clean up; its session process dies with it, what that started does
/// not). Returns how many processes were killed. Run at every session
/// start and by the admin commands, so leftovers do not outlive the next
/// login on the host.
pub fn sweep(state: &Path) -> usize {
    scan(state, false).1
}

/// Live records (read only when `want_live` or when a dead one must be
/// told apart from them) and the number of leftover processes killed.
fn scan(state: &Path, want_live: bool) -> (Vec<SessionRecord>, usize) {
    let Ok(entries) = std::fs::read_dir(sessions_dir(state)) else {
        return (Vec::new(), 0);
    };
    let mut live_paths = Vec::new();
    let mut orphaned = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(id) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        if path.extension().and_then(|x| x.to_str()) != Some("json") || !valid_id(&id) {
            continue;
        }
        if is_live(&path) {
            live_paths.push(path);
            continue;
        }
        orphaned.extend(read_record(&path).and_then(|r| r.leader));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("close"));
    }
    let mut live: Vec<SessionRecord> = if want_live || !orphaned.is_empty() {
        live_paths.iter().filter_map(|p| read_record(p)).collect()
    } else {
        Vec::new()
    };
    let mut killed = 0;
    for leader in orphaned {
        if live.iter().any(|r| {
            r.leader
                .is_some_and(|l| l.pid == leader.pid && l.pid_ns == leader.pid_ns)
        }) {
            continue;
        }
        // A pid in use as a session id is never handed out again, so
        // processes of session `pid` are this session's while any is left;
        // once none is, the number may be reused, and a process that now
        // has it and started later is someone else's.
        if crate::session::runtime::process_start_time(leader.pid)
            .is_some_and(|t| t != leader.start)
        {
            continue;
        }
        killed += crate::session::supervise::kill_session(leader.pid, leader.pid_ns, libc::SIGKILL);
    }
    live.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
    (live, killed)
}

/// Why an admin request found nothing to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    /// No live session has this id.
    NoSuchSession(String),
    /// The state directory could not be written.
    Io(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::NoSuchSession(id) => write!(f, "no live session {id}"),
            RequestError::Io(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for RequestError {}

/// Asks the supervisor of session `id` to close it now with `message`.
pub fn request_close(state: &Path, id: &str, message: &str) -> Result<SessionRecord, RequestError> {
    let rec = list(state)
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| RequestError::NoSuchSession(id.to_owned()))?;
    let close = sessions_dir(state).join(format!("{id}.close"));
    std::fs::write(&close, message)
        .map_err(|e| RequestError::Io(format!("{}: {e}", close.display())))?;
    // SAFETY: signalling the pid recorded by a supervisor whose lock is
    // still held (checked by list), so the pid has not been reused.
    unsafe { libc::kill(rec.pid, libc::SIGTERM) };
    Ok(rec)
}

/// The message of a close request for session `id`, if any.
pub fn close_message(state: &Path, id: &str) -> Option<String> {
    read_small(&sessions_dir(state).join(format!("{id}.close"))).map(|s| s.trim().to_owned())
}

/// What a drain covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Service(ServiceId),
    /// A checked instance name (`srv-abc123-d4e5f`).
    Instance(String),
}

impl Scope {
    /// `all`, a service ID or an instance name.
    pub fn parse(s: &str) -> Option<Scope> {
        if s == "all" {
            return Some(Scope::All);
        }
        let t = Target::parse(s)?;
        Some(match t.slug {
            Some(slug) => Scope::Instance(t.service.instance_name(&slug)),
            None => Scope::Service(t.service),
        })
    }

    fn file_name(&self) -> String {
        match self {
            Scope::All => "all.json".into(),
            Scope::Service(s) => format!("service-{s}.json"),
            Scope::Instance(i) => format!("instance-{i}.json"),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Scope::All => "all instances".into(),
            Scope::Service(s) => format!("service {s}"),
            Scope::Instance(i) => format!("instance {i}"),
        }
    }
}

/// A maintenance window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Drain {
    /// Unix seconds when live sessions are closed.
    pub deadline: i64,
    pub message: String,
    pub created: i64,
}

fn drain_dir(state: &Path) -> PathBuf {
    state.join("drain")
}

/// Starts (or replaces) a drain.
pub fn set_drain(state: &Path, scope: &Scope, drain: &Drain) -> std::io::Result<()> {
    let dir = drain_dir(state);
    crate::session::limits::ensure_dir(&dir)?;
    let path = dir.join(scope.file_name());
    let tmp = dir.join(format!(".{}.{}", scope.file_name(), std::process::id()));
    std::fs::write(
        &tmp,
        serde_json::to_string(drain).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, &path)
}

/// Cancels a drain; false when there was none.
pub fn remove_drain(state: &Path, scope: &Scope) -> std::io::Result<bool> {
    match std::fs::remove_file(drain_dir(state).join(scope.file_name())) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The drain in force for an instance (the earliest deadline among `all`,
/// its service and itself).
pub fn active_drain(state: &Path, service: &ServiceId, instance: &str) -> Option<Drain> {
    let scopes = [
        Scope::All,
        Scope::Service(service.clone()),
        Scope::Instance(instance.to_owned()),
    ];
    scopes
        .iter()
        .filter_map(|s| read_small(&drain_dir(state).join(s.file_name())))
        .filter_map(|t| serde_json::from_str::<Drain>(&t).ok())
        .min_by_key(|d| d.deadline)
}

/// Every drain, for `porthole sessions` and `doctor`.
pub fn drains(state: &Path) -> Vec<(String, Drain)> {
    let Ok(entries) = std::fs::read_dir(drain_dir(state)) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Drain)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".json")?.to_owned();
            let d = serde_json::from_str(&read_small(&e.path())?).ok()?;
            Some((name, d))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            service: "srv-a1".into(),
            instance: "srv-a1-aaaaa".into(),
            owner: "alice".into(),
            fingerprint: "SHA256:x".into(),
            key_type: "ssh-ed25519".into(),
            client: Some("127.0.0.1".into()),
            started: 5,
            command: "shell".into(),
            tty: true,
            pid: std::process::id() as i32,
            leader: None,
        }
    }

    /// A process leading its own session, like a session process.
    fn session_leader() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    fn own_pid_ns() -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata("/proc/self/ns/pid").unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn sweep_kills_what_a_dead_supervisor_left_and_spares_a_reused_pid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sessions")).unwrap();
        let mut reused = session_leader();
        let mut orphan = session_leader();
        let leader = |child: &std::process::Child, start_offset: u64| Leader {
            pid: child.id() as i32,
            pid_ns: own_pid_ns(),
            start: crate::session::runtime::process_start_time(child.id() as i32).unwrap()
                + start_offset,
        };
        // Dead records (nobody holds their lock): one whose leader is the
        // process that started then, one whose pid now names a later one.
        for (id, l) in [
            ("00000000000000a1", leader(&orphan, 0)),
            ("00000000000000a2", leader(&reused, 1)),
        ] {
            let r = SessionRecord {
                leader: Some(l),
                ..rec(id)
            };
            std::fs::write(
                dir.path().join("sessions").join(format!("{id}.json")),
                serde_json::to_string(&r).unwrap(),
            )
            .unwrap();
        }
        assert_eq!(sweep(dir.path()), 1);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(orphan.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(reused.try_wait().unwrap().is_none(), "a reused pid was hit");
        assert!(list(dir.path()).is_empty());
        reused.kill().unwrap();
        reused.wait().unwrap();
    }

    #[test]
    fn live_records_are_listed_and_dead_ones_swept() {
        let dir = tempfile::tempdir().unwrap();
        let id = new_id();
        assert!(valid_id(&id));
        let reg = register(dir.path(), &rec(&id)).unwrap();
        assert_eq!(list(dir.path()), vec![rec(&id)]);
        // A record whose lock nobody holds (its supervisor died).
        let ghost = "00000000deadbeef";
        std::fs::write(
            dir.path().join("sessions").join(format!("{ghost}.json")),
            "{}",
        )
        .unwrap();
        assert_eq!(list(dir.path()).len(), 1);
        assert!(!dir
            .path()
            .join("sessions")
            .join(format!("{ghost}.json"))
            .exists());
        drop(reg);
        assert!(list(dir.path()).is_empty());
        assert_eq!(
            request_close(dir.path(), &id, "bye"),
            Err(RequestError::NoSuchSession(id.clone()))
        );
    }

    #[test]
    fn drains_by_scope_pick_the_earliest_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let svc = ServiceId::parse("srv-a1").unwrap();
        assert!(active_drain(dir.path(), &svc, "srv-a1-aaaaa").is_none());
        let d = |deadline| Drain {
            deadline,
            message: format!("m{deadline}"),
            created: 0,
        };
        set_drain(dir.path(), &Scope::parse("srv-a1").unwrap(), &d(200)).unwrap();
        set_drain(dir.path(), &Scope::parse("srv-a1-aaaaa").unwrap(), &d(100)).unwrap();
        assert_eq!(
            active_drain(dir.path(), &svc, "srv-a1-aaaaa")
                .unwrap()
                .deadline,
            100
        );
        assert_eq!(
            active_drain(dir.path(), &svc, "srv-a1-bbbbb")
                .unwrap()
                .deadline,
            200
        );
        let other = ServiceId::parse("srv-b2").unwrap();
        assert!(active_drain(dir.path(), &other, "srv-b2-aaaaa").is_none());
        set_drain(dir.path(), &Scope::All, &d(300)).unwrap();
        assert_eq!(
            active_drain(dir.path(), &other, "srv-b2-aaaaa")
                .unwrap()
                .message,
            "m300"
        );
        assert!(remove_drain(dir.path(), &Scope::All).unwrap());
        assert!(!remove_drain(dir.path(), &Scope::All).unwrap());
        assert_eq!(drains(dir.path()).len(), 2);
        assert!(Scope::parse("srv-../x").is_none());
    }
}
