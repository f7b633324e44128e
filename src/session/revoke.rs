//! Revocation of live sessions: a session whose key a fresh control-plane
//! answer no longer lists (or whose service is gone, or whose key expired)
//! is closed within the cache's `fresh_secs`.
//!
//! The supervisor is part of the setuid shell, which must not link HTTP or
//! async code, so it never asks the control plane itself. It reads the
//! keys hook's cache (root may read it; the owner is checked as at login)
//! and, when the answer there is no longer fresh, runs the keys hook the
//! way sshd does — as the hook user, PATH-only environment, no inherited fds —
//! in its refresh mode (`porthole-keys --refresh <service>`). The hook
//! fetches under its per-service single-flight lock, so the sessions of one
//! service cause one request per `fresh_secs`, however many there are. The
//! hook runs asynchronously: it is reaped on the supervisor's tick and
//! killed if it overstays its budget; the relay never waits for it.
//!
//! Only a *fresh* answer closes a session for a key that is not listed or a
//! service that is gone. A control plane that is down, slow or confused
//! (stale answer, refresh failure, unreadable cache) closes nothing: the
//! key was valid at login and an outage is not a revocation, so here the
//! check fails open for availability (logins themselves keep the hook's
//! stricter rules). An `expires_at` that has passed ends the session with
//! any answer young enough to log in with: the control plane stated that
//! end itself, and a login with the same answer would be refused now.

use crate::config::Config;
use crate::control_plane::api::ServiceDoc;
use crate::control_plane::cache::{self, CachedAnswer, Freshness};
use crate::control_plane::keys::{self, KeyReject};
use crate::log::{Event, Logger, Severity};
use crate::names::ServiceId;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The environment of the refresh hook (sshd gives its hooks little more).
const HOOK_PATH_ENV: &str = "PATH=/usr/bin:/bin:/usr/sbin:/sbin";
/// Beyond the hook's own budget (it arms SIGALRM at budget + 1 s), how long
/// a refresh may run before the supervisor kills it.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Bounds on how long to wait before trying again when no fresh answer
/// could be had (the control plane is down): `fresh_secs`, within these.
const MIN_RETRY_SECS: i64 = 1;
const MAX_RETRY_SECS: i64 = 60;

/// Why a live session's key no longer admits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A fresh answer does not list the key (usable as a login key).
    NotListed,
    /// The key's `expires_at` has passed.
    Expired,
    /// A fresh answer says the service does not exist (404).
    ServiceGone,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NotListed => "not_listed",
            Cause::Expired => "expired",
            Cause::ServiceGone => "service_gone",
        }
    }

    /// The sentence for the user (shown as `porthole: …`).
    pub fn message(self, service: &ServiceId) -> String {
        match self {
            Cause::NotListed => format!("your key was revoked for {service}; closing the session"),
            Cause::Expired => format!("your key for {service} expired; closing the session"),
            Cause::ServiceGone => format!("{service} no longer exists; closing the session"),
        }
    }
}

/// What one cached answer says about the session's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still admitted; look again at this unix time.
    Allowed {
        recheck_at: i64,
    },
    Revoked(Cause),
    /// The answer is not fresh: only a refresh can tell.
    NeedsRefresh,
}

/// The first listing of the key (the one that decides, as in the hook).
fn first_listing<'a>(
    doc: &'a ServiceDoc,
    key_type: &str,
    key_b64: &str,
) -> Option<&'a crate::control_plane::api::KeyEntry> {
    doc.keys.iter().filter_map(|k| k.as_ref().ok()).find(|e| {
        keys::validate_public_key(&e.public_key)
            .map(|k| k.algorithm == key_type && k.base64 == key_b64)
            .unwrap_or(false)
    })
}

/// Judges `answer` for the key at `now` (pure; see the module docs for
/// why only fresh answers revoke, and expiry with any answer).
pub fn judge(
    answer: &CachedAnswer,
    key_type: &str,
    key_b64: &str,
    now: i64,
    cfg: &crate::config::Cache,
) -> Verdict {
    // fresh_secs = 0 makes every login ask the control plane; here an
    // answer must stay fresh for at least the second it was fetched in, or
    // the refresh that just wrote it would read as an outage.
    let cfg = &crate::config::Cache {
        fresh_secs: cfg.fresh_secs.max(1),
        negative_secs: cfg.negative_secs.max(1),
        ..cfg.clone()
    };
    let fresh = cache::freshness(answer, now, cfg) == Freshness::Fresh;
    let max_age = i64::try_from(cfg.stale_secs).unwrap_or(i64::MAX);
    let Some(doc) = &answer.doc else {
        return if fresh {
            Verdict::Revoked(Cause::ServiceGone)
        } else {
            Verdict::NeedsRefresh
        };
    };
    let listing = first_listing(doc, key_type, key_b64);
    let expiry = listing.map(|e| keys::entry_expiry(e, now));
    if matches!(expiry, Some(Err(KeyReject::Expired(_)))) && answer.age(now) <= max_age {
        return Verdict::Revoked(Cause::Expired);
    }
    if !fresh {
        // Fail open, on purpose: the key was valid at login, and an answer
        // that is merely old (the control plane is down, slow or erring)
        // is an outage, not a revocation. Closing here would turn every
        // control-plane incident into every developer losing their shell.
        return Verdict::NeedsRefresh;
    }
    // The login's own test: a listing the hook would print no line for
    // (bad `from`, bad expiry) does not admit the key either.
    if keys::find_listed_key(doc, key_type, key_b64, now).is_none() {
        return Verdict::Revoked(Cause::NotListed);
    }
    let fresh_until = answer
        .fetched_at
        .saturating_add(i64::try_from(cfg.fresh_secs).unwrap_or(i64::MAX));
    let recheck_at = match expiry {
        Some(Ok(Some(at))) => fresh_until.min(at),
        _ => fresh_until,
    };
    Verdict::Allowed { recheck_at }
}

/// Why a refresh could not be started or finished (for the admin's log;
/// never a reason to close the session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshError {
    /// The keys user is unknown or is root.
    User(String),
    /// The keys command is missing or could be replaced by someone else.
    Command(String),
    /// fork or /dev/null failed.
    Spawn(String),
    /// The hook ran past its budget and was killed.
    Timeout,
    /// The hook could not run (exit 126/127) or died of a signal.
    Failed(String),
}

impl std::fmt::Display for RefreshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefreshError::User(m) => write!(f, "keys user: {m}"),
            RefreshError::Command(m) => write!(f, "keys command: {m}"),
            RefreshError::Spawn(m) => write!(f, "cannot start the keys hook: {m}"),
            RefreshError::Timeout => f.write_str("the keys hook overran its budget and was killed"),
            RefreshError::Failed(m) => write!(f, "the keys hook failed: {m}"),
        }
    }
}

impl std::error::Error for RefreshError {}

/// sshd's rule for an AuthorizedKeysCommand: after resolving links, a
/// regular executable file owned by root and not writable by group or
/// others, in directories with the same properties, so that only root can
/// change what runs as the hook user (who owns the cache every login
/// trusts). Returns the resolved path, the one to execute.
pub fn check_command(path: &Path) -> Result<PathBuf, RefreshError> {
    let bad = |why: String| Err(RefreshError::Command(format!("{}: {why}", path.display())));
    if !path.is_absolute() {
        return bad("not an absolute path".into());
    }
    let real = match std::fs::canonicalize(path) {
        Ok(r) => r,
        Err(e) => return bad(e.to_string()),
    };
    let meta = match std::fs::symlink_metadata(&real) {
        Ok(m) => m,
        Err(e) => return bad(e.to_string()),
    };
    if !meta.file_type().is_file() {
        return bad("not a regular file".into());
    }
    if meta.mode() & 0o111 == 0 {
        return bad("not executable".into());
    }
    for p in real.ancestors() {
        let m = match std::fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(e) => return bad(format!("{}: {e}", p.display())),
        };
        if m.uid() != 0 || m.mode() & 0o022 != 0 {
            return bad(format!(
                "{} is owned by uid {} with mode {:o} (must be root-owned, not group or world writable)",
                p.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(real)
}

/// A running `porthole-keys --refresh`.
struct Refresh {
    pid: i32,
    started: Instant,
}

/// Watches one session's key. `poll` is cheap between checks (a clock
/// read) and never blocks.
pub struct KeyWatch<'a> {
    cfg: &'a Config,
    log: &'a Logger,
    service: ServiceId,
    key_type: String,
    key_b64: String,
    /// Fields every event of this watch carries (session, owner, …).
    tags: Vec<(&'static str, String)>,
    /// Unix second at which to look at the cache next.
    due: i64,
    /// The refresh running now. When the session ends first it is left to
    /// finish its cache write (its own alarm bounds it); init reaps it.
    child: Option<Refresh>,
    /// The next look reads what the refresh that just ended wrote.
    after_refresh: bool,
    /// The last problem logged, so that an outage is logged once.
    last_problem: Option<String>,
    revoked: bool,
}

impl<'a> KeyWatch<'a> {
    pub fn new(
        cfg: &'a Config,
        log: &'a Logger,
        service: ServiceId,
        key_type: &str,
        key_b64: &str,
        tags: Vec<(&'static str, String)>,
    ) -> KeyWatch<'a> {
        KeyWatch {
            cfg,
            log,
            service,
            key_type: key_type.to_owned(),
            key_b64: key_b64.to_owned(),
            tags,
            // The login just checked the answer; the first look learns
            // when it stops being fresh.
            due: crate::time::now_unix(),
            child: None,
            after_refresh: false,
            last_problem: None,
            revoked: false,
        }
    }

    fn event(&self, name: &str, severity: Severity) -> Event {
        let mut e = Event::new(name, severity).field("service", self.service.as_str());
        for (k, v) in &self.tags {
            e = e.field(k, v.as_str());
        }
        e
    }

    /// Logs a problem once until the next good look (an outage is one
    /// event per session, not one per retry).
    fn problem(&mut self, what: String, answer_age: Option<i64>) {
        if self.last_problem.as_deref() != Some(what.as_str()) {
            self.log.emit(
                &self
                    .event("session.key_check", Severity::Warning)
                    .field("outcome", "deferred")
                    .field("problem", what.as_str())
                    .opt("answer_age_secs", answer_age)
                    .field(
                        "message",
                        "the key could not be checked against a fresh control-plane answer; the session stays open",
                    ),
            );
            self.last_problem = Some(what);
        }
    }

    fn retry_secs(&self) -> i64 {
        i64::try_from(self.cfg.cache.fresh_secs)
            .unwrap_or(MAX_RETRY_SECS)
            .clamp(MIN_RETRY_SECS, MAX_RETRY_SECS)
    }

    /// Called on the supervisor's tick: the message to close the session
    /// with when its key was revoked, else None.
    pub fn poll(&mut self) -> Option<String> {
        if self.revoked {
            return None;
        }
        let now = crate::time::now_unix();
        self.enforce_budget();
        if let Some(r) = &self.child {
            match reap(r) {
                None => return None,
                Some(Ok(())) => {}
                Some(Err(e)) => self.problem(e.to_string(), None),
            }
            self.child = None;
            self.after_refresh = true;
            self.due = now;
        }
        if now < self.due {
            return None;
        }
        let keys_uid = match hook_user(&self.cfg.session.keys_user) {
            Ok((uid, _)) => uid,
            Err(e) => {
                self.problem(e.to_string(), None);
                self.due = now + self.retry_secs();
                return None;
            }
        };
        let answer = match cache::read(&self.cfg.cache.dir, &self.service, Some(keys_uid)) {
            Ok(a) => a,
            Err(e) => {
                self.problem(e.to_string(), None);
                self.due = now + self.retry_secs();
                return None;
            }
        };
        let verdict = match &answer {
            Some(a) => judge(a, &self.key_type, &self.key_b64, now, &self.cfg.cache),
            // Gone from the cache (evicted): ask again, like a stale one.
            None => Verdict::NeedsRefresh,
        };
        match verdict {
            Verdict::Allowed { recheck_at } => {
                self.last_problem = None;
                self.after_refresh = false;
                self.due = recheck_at.max(now + 1);
                None
            }
            Verdict::Revoked(cause) => {
                self.revoked = true;
                let message = cause.message(&self.service);
                self.log.emit(
                    &self
                        .event("session.key_revoked", Severity::Notice)
                        .field("cause", cause.as_str())
                        .opt("answer_fetched_at", answer.map(|a| a.fetched_at))
                        .field("message", message.as_str()),
                );
                Some(message)
            }
            Verdict::NeedsRefresh if self.after_refresh => {
                // The refresh ran and still no fresh answer: the control
                // plane is down or failing. Not a revocation; try later.
                self.after_refresh = false;
                self.problem(
                    "control plane unavailable: no fresh answer after a refresh".into(),
                    answer.map(|a| a.age(now)),
                );
                self.due = now + self.retry_secs();
                None
            }
            Verdict::NeedsRefresh => {
                match spawn_refresh(self.cfg, &self.service) {
                    Ok(pid) => {
                        self.child = Some(Refresh {
                            pid,
                            started: Instant::now(),
                        })
                    }
                    Err(e) => {
                        self.problem(e.to_string(), None);
                        self.due = now + self.retry_secs();
                    }
                }
                None
            }
        }
    }
}

/// Whether the refresh ended: None while it runs, Some(result) once reaped.
fn reap(r: &Refresh) -> Option<Result<(), RefreshError>> {
    let mut st = 0;
    // SAFETY: non-blocking wait for our own child.
    let got = unsafe { libc::waitpid(r.pid, &mut st, libc::WNOHANG) };
    if got == 0 {
        return None;
    }
    if got < 0 {
        // Not our child any more (nothing else reaps it): treat as ended.
        return Some(Ok(()));
    }
    if libc::WIFEXITED(st) {
        match libc::WEXITSTATUS(st) {
            // 0: a fresh answer is cached; 1: none could be had (the hook
            // logged why). Either way the cache is read next.
            0 | 1 => Some(Ok(())),
            c => Some(Err(RefreshError::Failed(format!("exit status {c}")))),
        }
    } else {
        Some(Err(RefreshError::Failed(format!(
            "signal {}",
            libc::WTERMSIG(st)
        ))))
    }
}

impl KeyWatch<'_> {
    /// Kills a refresh that overran its budget (called from `poll`).
    fn enforce_budget(&mut self) {
        let Some(r) = &self.child else { return };
        let budget = Duration::from_millis(self.cfg.control_plane.timeout_ms) + KILL_GRACE;
        if r.started.elapsed() < budget {
            return;
        }
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(r.pid, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(r.pid, &mut st, 0);
        }
        self.child = None;
        self.after_refresh = true;
        self.problem(RefreshError::Timeout.to_string(), None);
    }
}

/// Runs `porthole-keys --refresh <service>` and waits for it, within the
/// control plane's budget plus a grace (then it is killed). For a login
/// sshd admitted without asking the keys hook — a hop certificate signed
/// by a trusted CA — whose service answer is missing or old in the cache.
/// Ok means the hook ran to its end (it may still have found no fresh
/// answer: the caller reads the cache and decides).
pub fn refresh_blocking(cfg: &Config, service: &ServiceId) -> Result<(), RefreshError> {
    let r = Refresh {
        pid: spawn_refresh(cfg, service)?,
        started: Instant::now(),
    };
    let budget = Duration::from_millis(cfg.control_plane.timeout_ms) + KILL_GRACE;
    loop {
        if let Some(done) = reap(&r) {
            return done;
        }
        if r.started.elapsed() >= budget {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(r.pid, libc::SIGKILL);
                let mut st = 0;
                libc::waitpid(r.pid, &mut st, 0);
            }
            return Err(RefreshError::Timeout);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The keys user's groups as sshd's initgroups gives them (looked up
/// before the fork: NSS is not async-signal-safe).
pub(crate) fn hook_groups(name: &str, gid: u32) -> Result<Vec<libc::gid_t>, RefreshError> {
    let cname = CString::new(name).map_err(|_| RefreshError::User("NUL in name".into()))?;
    let groups = nix::unistd::getgrouplist(&cname, nix::unistd::Gid::from_raw(gid))
        .map_err(|e| RefreshError::User(format!("{name}: groups: {e}")))?;
    let groups: Vec<libc::gid_t> = groups.iter().map(|g| g.as_raw()).collect();
    if groups.contains(&0) {
        return Err(RefreshError::User(format!(
            "{name} is in group root; the keys hook never runs with it"
        )));
    }
    Ok(groups)
}

/// uid and gid of the keys user; never root.
pub(crate) fn hook_user(name: &str) -> Result<(u32, u32), RefreshError> {
    let u = nix::unistd::User::from_name(name)
        .map_err(|e| RefreshError::User(format!("{name}: {e}")))?
        .ok_or_else(|| RefreshError::User(format!("{name} does not exist")))?;
    let (uid, gid) = (u.uid.as_raw(), u.gid.as_raw());
    if uid == 0 || gid == 0 {
        return Err(RefreshError::User(format!(
            "{name} is root; the keys hook never runs as root"
        )));
    }
    Ok((uid, gid))
}

/// Starts `<keys_command> --refresh <service>` as the keys user, the way
/// sshd starts an AuthorizedKeysCommand: own session, stdio on /dev/null,
/// every other fd closed, the user's groups, a minimal environment.
/// Returns the child's pid.
fn spawn_refresh(cfg: &Config, service: &ServiceId) -> Result<i32, RefreshError> {
    let (uid, gid) = hook_user(&cfg.session.keys_user)?;
    let groups = hook_groups(&cfg.session.keys_user, gid)?;
    let path = check_command(&cfg.session.keys_command)?;
    let cs = |s: &str| {
        CString::new(s).map_err(|_| RefreshError::Command("path contains a NUL byte".into()))
    };
    let prog = cs(&path.to_string_lossy())?;
    let args = [prog.clone(), cs("--refresh")?, cs(service.as_str())?];
    let env = [cs(HOOK_PATH_ENV)?];
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let null: OwnedFd = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| RefreshError::Spawn(format!("/dev/null: {e}")))?
        .into();
    let null_fd = null.as_raw_fd();
    // For kernels without close_range(2): how far to close by hand.
    let max_fd = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft.min(65_536) as i32)
        .unwrap_or(1024);
    // SAFETY: the supervisor is single-threaded (an sftp session adds only
    // its audit thread, see shell::sftp_audit); the child only makes
    // async-signal-safe calls on memory prepared above, then execs or
    // _exits, so no lock another thread held at the fork is ever needed.
    // Everything it needs (argv, envp, ids, fd) exists already.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(RefreshError::Spawn(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    if pid == 0 {
        // SAFETY: in the child of a single-threaded fork: raw system calls
        // only, on data that stays valid until execve or _exit.
        unsafe { refresh_child(uid, gid, &groups, null_fd, max_fd, &prog, &argv, &envp) }
    }
    Ok(pid)
}

/// The forked child: drops to the keys user and execs the hook. Never
/// returns.
///
/// # Safety
/// Call only in a freshly forked child of a single-threaded process.
#[allow(clippy::too_many_arguments)]
unsafe fn refresh_child(
    uid: u32,
    gid: u32,
    groups: &[libc::gid_t],
    null_fd: i32,
    max_fd: i32,
    prog: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    // SAFETY: (the whole body) raw system calls on locals and on memory the
    // parent prepared before fork, which stays valid until execve/_exit.
    unsafe {
        let fail = |code: i32| -> ! { libc::_exit(code) };
        // The supervisor blocks the signals it reads through its signalfd, and
        // Rust ignores SIGPIPE: the hook starts with neither.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // Out of sshd's session and process group: the client's terminal and
        // the session's signals are not the hook's business.
        libc::setsid();
        // No host fd reaches the hook: stdio is /dev/null, the rest is closed
        // (the session's terminal, pidfds, signalfd, relay pipes).
        for fd in 0..3 {
            if libc::dup2(null_fd, fd) != fd {
                fail(126);
            }
        }
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            for fd in 3..max_fd {
                libc::close(fd);
            }
        }
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
            || libc::geteuid() != uid
            || libc::getegid() != gid
        {
            fail(126);
        }
        if libc::chdir(b"/\0".as_ptr().cast()) != 0 {
            fail(126);
        }
        libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cache;
    use serde_json::json;

    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAICf0RzWRSlWElIHw10mnwXXVUjb6A3a+G+ayHAMUfkee";
    const ED2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAID0256NTIi7vjOIZ6oHzf0DJ9pqjz96xjvi7sMFQZrXQ";

    fn sid() -> ServiceId {
        ServiceId::parse("srv-a1").unwrap()
    }

    fn cfg() -> Cache {
        Cache {
            fresh_secs: 10,
            stale_secs: 100,
            negative_secs: 5,
            ..Cache::default()
        }
    }

    fn answer(at: i64, keys: serde_json::Value) -> CachedAnswer {
        let body = json!({"service": {"id": "srv-a1", "type": "web_service", "plan": "starter"}, "keys": keys});
        CachedAnswer {
            fetched_at: at,
            doc: Some(ServiceDoc::from_value(body, &sid()).unwrap()),
        }
    }

    fn key(b64: &str) -> serde_json::Value {
        json!({"public_key": format!("ssh-ed25519 {b64} x"), "owner": "alice"})
    }

    #[test]
    fn fresh_answers_decide_stale_ones_never_revoke() {
        let c = cfg();
        let listed = answer(1000, json!([key(ED)]));
        assert_eq!(
            judge(&listed, "ssh-ed25519", ED, 1003, &c),
            Verdict::Allowed { recheck_at: 1010 }
        );
        let other = answer(1000, json!([key(ED2)]));
        assert_eq!(
            judge(&other, "ssh-ed25519", ED, 1003, &c),
            Verdict::Revoked(Cause::NotListed)
        );
        // The same answers, no longer fresh: an outage is not a revocation.
        assert_eq!(
            judge(&other, "ssh-ed25519", ED, 1010, &c),
            Verdict::NeedsRefresh
        );
        assert_eq!(
            judge(&other, "ssh-ed25519", ED, 5000, &c),
            Verdict::NeedsRefresh
        );
        let gone = CachedAnswer {
            fetched_at: 1000,
            doc: None,
        };
        assert_eq!(
            judge(&gone, "ssh-ed25519", ED, 1004, &c),
            Verdict::Revoked(Cause::ServiceGone)
        );
        assert_eq!(
            judge(&gone, "ssh-ed25519", ED, 1005, &c),
            Verdict::NeedsRefresh,
            "a 404 is fresh for negative_secs"
        );
        // A clock that jumped back: not trusted as fresh.
        assert_eq!(
            judge(&other, "ssh-ed25519", ED, 900, &c),
            Verdict::NeedsRefresh
        );
    }

    #[test]
    fn expiry_ends_the_session_with_any_usable_answer_and_schedules_the_look() {
        let c = cfg();
        // expires_at 2001-09-09T01:46:50Z = 1_000_000_010.
        let mut k = key(ED);
        k["expires_at"] = json!("2001-09-09T01:46:50Z");
        let a = answer(1_000_000_000, json!([k]));
        assert_eq!(
            judge(&a, "ssh-ed25519", ED, 1_000_000_005, &c),
            Verdict::Allowed {
                recheck_at: 1_000_000_010
            }
        );
        assert_eq!(
            judge(&a, "ssh-ed25519", ED, 1_000_000_010, &c),
            Verdict::Revoked(Cause::Expired)
        );
        // Stale (control plane down) but still usable for a login: expired.
        assert_eq!(
            judge(&a, "ssh-ed25519", ED, 1_000_000_050, &c),
            Verdict::Revoked(Cause::Expired)
        );
        // Older than stale_secs: nothing is decided on it.
        assert_eq!(
            judge(&a, "ssh-ed25519", ED, 1_000_000_101, &c),
            Verdict::NeedsRefresh
        );
    }

    #[test]
    fn the_first_listing_decides_and_bad_listings_do_not_admit() {
        let c = cfg();
        let mut bad = key(ED);
        bad["from"] = json!(["not a pattern!"]);
        let a = answer(1000, json!([bad, key(ED)]));
        assert_eq!(
            judge(&a, "ssh-ed25519", ED, 1001, &c),
            Verdict::Revoked(Cause::NotListed)
        );
    }

    #[test]
    fn unsafe_keys_commands_are_refused() {
        assert!(check_command(Path::new("relative/porthole-keys")).is_err());
        assert!(check_command(Path::new("/nonexistent/porthole-keys")).is_err());
        assert!(check_command(Path::new("/etc")).is_err(), "a directory");
        assert!(
            check_command(Path::new("/etc/passwd")).is_err(),
            "not executable"
        );
        if nix::unistd::geteuid().is_root() {
            // Links are resolved first (/bin is one on merged-/usr systems).
            let real = check_command(Path::new("/bin/true")).unwrap();
            assert_eq!(real, std::fs::canonicalize("/bin/true").unwrap());
            // /tmp is world-writable.
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("hook");
            std::fs::copy("/bin/true", &p).unwrap();
            assert!(check_command(&p).is_err());
        }
    }

    #[test]
    fn messages_name_the_service() {
        assert_eq!(
            Cause::NotListed.message(&sid()),
            "your key was revoked for srv-a1; closing the session"
        );
        assert!(Cause::ServiceGone.message(&sid()).contains("srv-a1"));
    }
}
