//! Temporary instances: a fresh instance of a service's latest build for
//! one session, removed when that session ends.
//!
//! Who gets one: a `cron_job` service always (it has no running instance
//! between its runs), and any service that gets a shell when the login
//! name uses the reserved slug [`crate::names::TEMPORARY_SLUG`]
//! (`ssh srv-abc123-fresh@host`). One temporary instance per session,
//! never shared: two sessions get two instances, and a temporary instance
//! is never a random choice nor entered by slug from another login (only
//! the session that made it, or the node end of its hop, enters it).
//!
//! Two providers:
//! - **local** (a `file://` control plane, the embedded default): porthole
//!   plays the platform. The service's latest bundle
//!   (`<dir>/<service-id>.bundle/`, root-owned, with `config.json` and its
//!   rootfs) is started with runc under the first runtime root, as
//!   container `<service>-<slug>` with a fresh slug: the bundle's
//!   environment, user, hostname and cgroup limits, the service and
//!   instance annotations plus [`TEMPORARY_ANNOTATION`]`=local`, its
//!   command replaced by a long `sleep` of the image, its root filesystem
//!   an overlay on the build's (the build is never written). runc is a
//!   host binary run on the host as root with nothing inherited (stdio on
//!   /dev/null); nothing of the host is executed inside the container.
//! - **platform** (an HTTP control plane): `POST
//!   {url}/v1/services/{id}/temporary-instances` and `DELETE
//!   …/temporary-instances/{slug}`, made by the unprivileged keys hook
//!   (`porthole-keys --temporary create|delete`) which the shell runs as
//!   the keys user and waits for (bounded): the setuid shell links no HTTP
//!   code. Its one-line JSON answer is hostile input (size cap, strict
//!   parse, slug and host checked against the grammar).
//!
//! While the session lives its supervisor holds an flock on a small
//! root-only record, `<state_dir>/temporary/<service>-<slug>.json`. The
//! instance is removed when the session ends (exit, client gone, closed,
//! refused after provisioning); a supervisor killed with SIGKILL leaves
//! an unlocked record, and the next sweep (every login, `porthole
//! sessions`) removes the instance. A host restart clears `/run` (state,
//! runc state, overlay mounts) and the sweep also deletes local temporary
//! containers whose record is gone.

use crate::config::Config;
use crate::log::{Event, Logger, Severity};
use crate::names::ServiceId;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::session::runtime::TEMPORARY_ANNOTATION;

/// The value the local provider gives [`TEMPORARY_ANNOTATION`].
pub const LOCAL_VALUE: &str = "local";
/// The long sleep that replaces the bundle's command (about 68 years).
const SLEEP: [&str; 2] = ["sleep", "2147483647"];
/// Largest answer of the keys hook's temporary mode.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024;
/// Longest platform message shown to the developer.
const MAX_MESSAGE_CHARS: usize = 300;
/// How long a runc step (run, delete) may take.
const RUNC_BUDGET: Duration = Duration::from_secs(20);
/// Beyond the control plane's budget, how long the keys hook may run.
const HOOK_GRACE: Duration = Duration::from_secs(2);
/// A platform delete that failed is not retried by sweeps more often.
const RETRY_SECS: u64 = 60;

/// Why no temporary instance could be had (or removed). Each variant's
/// text is a sentence for the developer; the caller refuses the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TempError {
    /// The service has no build to start: refused until one is deployed.
    NoBuild(String),
    /// A limit is reached (`per service` / `on this host`, the limit):
    /// refused; another temporary session must end first.
    Limit { scope: &'static str, max: u32 },
    /// The platform said no (4xx) with this message: refused with it.
    Refused(String),
    /// Provisioning (or removal) failed: refused; details in the message.
    Failed(String),
    /// Not running within `start_timeout_secs`: refused (it is removed).
    Timeout(u64),
    /// The platform's answer is not usable (hostile or broken): refused.
    BadAnswer(String),
    /// porthole's own state failed (state directory): refused.
    State(String),
}

impl std::fmt::Display for TempError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TempError::NoBuild(m) => write!(f, "no build to start a temporary instance from: {m}"),
            TempError::Limit { scope, max } => write!(
                f,
                "the limit of {max} temporary instance(s) {scope} is reached; try again when one of them ends"
            ),
            TempError::Refused(m) => write!(f, "the platform refused a temporary instance: {m}"),
            TempError::Failed(m) => write!(f, "the temporary instance could not be started: {m}"),
            TempError::Timeout(s) => write!(
                f,
                "the temporary instance was not running after {s} s; it was removed, try again"
            ),
            TempError::BadAnswer(m) => write!(
                f,
                "the platform's answer about the temporary instance is not usable ({m}); the platform team has been notified"
            ),
            TempError::State(m) => write!(f, "cannot record the temporary instance: {m}"),
        }
    }
}

impl std::error::Error for TempError {}

/// Who plays the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// runc on this host (a `file://` control plane).
    Local,
    /// The HTTP control plane, through the keys hook.
    Platform,
}

impl Provider {
    pub fn of(cfg: &Config) -> Provider {
        if cfg.control_plane.url.starts_with("file://") {
            Provider::Local
        } else {
            Provider::Platform
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Local => "local",
            Provider::Platform => "platform",
        }
    }
}

/// The root-only record of one temporary instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub service: String,
    pub slug: String,
    pub provider: Provider,
    /// Where the platform placed it (platform provider).
    #[serde(default)]
    pub host: Option<String>,
    /// Local provider: the runtime root its runc state is under.
    #[serde(default)]
    pub runtime_root: Option<PathBuf>,
    pub session_id: String,
    pub created: i64,
}

impl Record {
    pub fn name(&self) -> String {
        format!("{}-{}", self.service, self.slug)
    }
}

/// A temporary instance this session holds: its record stays locked
/// until [`remove`] (or the supervisor's death, which the sweep notices).
pub struct Held {
    pub record: Record,
    path: PathBuf,
    _lock: File,
    _slots: Vec<crate::session::limits::Slot>,
}

fn dir(cfg: &Config) -> PathBuf {
    cfg.session.state_dir.join("temporary")
}

fn record_path(cfg: &Config, name: &str) -> PathBuf {
    dir(cfg).join(format!("{name}.json"))
}

/// The local provider's own bundle of the instance (config, overlay).
fn bundle_dir(cfg: &Config, name: &str) -> PathBuf {
    dir(cfg).join(name)
}

/// The per-service limit: the control plane's
/// `limits.max_temporary_instances` when it is a number in 0..=1000,
/// otherwise the host's (a control-plane mistake never lifts a limit
/// beyond that range).
pub fn max_per_service(cfg: &Config, service_limits: Option<&serde_json::Value>) -> u32 {
    service_limits
        .and_then(|l| l.get("max_temporary_instances"))
        .and_then(serde_json::Value::as_u64)
        .filter(|n| *n <= 1000)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(cfg.temporary.max_per_service)
}

/// A random slug of the grammar that is not the reserved one.
fn new_slug() -> Result<String, TempError> {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    loop {
        let mut buf = [0u8; 5];
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n != buf.len() as isize {
            return Err(TempError::Failed("no randomness for a slug".into()));
        }
        // 252 = 7 × 36: no modulo bias.
        if buf.iter().any(|b| *b >= 252) {
            continue;
        }
        let slug: String = buf
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(*b) % 36]))
            .collect();
        if crate::names::is_instance_slug(&slug) {
            return Ok(slug);
        }
    }
}

/// Writes and locks a new record (`create_new`: also what reserves the
/// slug against a concurrent login).
fn lock_record(path: &Path, record: &Record) -> std::io::Result<File> {
    let mut file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let text = serde_json::to_string(record).map_err(std::io::Error::other)?;
    file.write_all(text.as_bytes())?;
    Ok(file)
}

/// Takes the limit slots, then a record for a fresh slug (local), or for
/// the slug the platform answers with (platform), and starts it.
/// `say` prints a progress line for the developer.
pub fn create(
    cfg: &Config,
    service: &ServiceId,
    service_limits: Option<&serde_json::Value>,
    session_id: &str,
    say: &dyn Fn(&str),
) -> Result<Held, TempError> {
    let slots_dir = cfg.session.state_dir.join("slots");
    let slot = |name: String, max: u32, scope: &'static str| {
        crate::session::limits::acquire(&slots_dir.join(name), max).map_err(|e| match e {
            crate::session::limits::SlotError::Full(max) => TempError::Limit { scope, max },
            e => TempError::State(e.to_string()),
        })
    };
    let mut slots = Vec::new();
    slots.extend(slot(
        format!("temporary-{service}"),
        max_per_service(cfg, service_limits),
        "per service on this host",
    )?);
    slots.extend(slot(
        "temporary-host".into(),
        cfg.temporary.max_per_host,
        "on this host",
    )?);
    crate::session::limits::ensure_dir(&dir(cfg)).map_err(|e| TempError::State(e.to_string()))?;
    if Provider::of(cfg) == Provider::Local && cfg.fleet.role == crate::config::Role::FrontDoor {
        return Err(TempError::Failed(
            "this host is a front door and runs no containers; with a file:// control plane it cannot start one (the platform's temporary-instance API can)".into(),
        ));
    }
    match Provider::of(cfg) {
        Provider::Local => create_local(cfg, service, session_id, slots, say),
        Provider::Platform => create_platform(cfg, service, session_id, slots),
    }
}

fn create_local(
    cfg: &Config,
    service: &ServiceId,
    session_id: &str,
    slots: Vec<crate::session::limits::Slot>,
    say: &dyn Fn(&str),
) -> Result<Held, TempError> {
    let root = cfg
        .runtime
        .roots
        .first()
        .cloned()
        .ok_or_else(|| TempError::Failed("no runtime root is configured".into()))?;
    // Read (and check) the build before a record exists.
    let (source, spec) = read_build(cfg, service)?;
    let mut attempt = 0;
    let (record, path, lock) = loop {
        attempt += 1;
        if attempt > 20 {
            return Err(TempError::Failed("no free slug was found".into()));
        }
        let slug = new_slug()?;
        let record = Record {
            service: service.to_string(),
            slug,
            provider: Provider::Local,
            host: None,
            runtime_root: Some(root.clone()),
            session_id: session_id.to_owned(),
            created: crate::time::now_unix(),
        };
        let path = record_path(cfg, &record.name());
        // An id runc already has (a leftover, another login's) is not ours.
        if root.join(record.name()).exists() {
            continue;
        }
        match lock_record(&path, &record) {
            Ok(lock) => break (record, path, lock),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(TempError::State(format!("{}: {e}", path.display()))),
        }
    };
    let held = Held {
        record,
        path,
        _lock: lock,
        _slots: slots,
    };
    let started = Instant::now();
    if let Err(e) = start_local(cfg, &held.record, &source, spec, &root) {
        // Whatever was made goes; the record too when that worked.
        let _ = remove(cfg, held);
        return Err(e);
    }
    let budget = Duration::from_secs(cfg.temporary.start_timeout_secs);
    if let Err(e) = wait_running(cfg, service, &held.record.slug, started, budget, say) {
        let _ = remove(cfg, held);
        return Err(e);
    }
    Ok(held)
}

/// The service's latest bundle: `<file:// dir>/<service>.bundle`, its
/// config (root-owned, checked like every bundle porthole reads) and the
/// absolute path of its rootfs.
fn read_build(
    cfg: &Config,
    service: &ServiceId,
) -> Result<(PathBuf, serde_json::Value), TempError> {
    let base = cfg
        .control_plane
        .url
        .strip_prefix("file://")
        .ok_or_else(|| {
            TempError::Failed("the local provider needs a file:// control plane".into())
        })?;
    let bundle = Path::new(base).join(format!("{service}.bundle"));
    let bytes = crate::session::confine::read_trusted_config(&bundle)
        .map_err(|e| TempError::NoBuild(e.to_string()))?
        .ok_or_else(|| {
            TempError::NoBuild(format!(
                "{service} has no build on this host ({} is missing)",
                bundle.join("config.json").display()
            ))
        })?;
    let spec: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        TempError::NoBuild(format!("{}: {e}", bundle.join("config.json").display()))
    })?;
    let root = spec
        .pointer("/root/path")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| TempError::NoBuild("the build's config.json names no root.path".into()))?;
    let rootfs = bundle.join(root);
    let meta = std::fs::symlink_metadata(&rootfs)
        .map_err(|e| TempError::NoBuild(format!("{}: {e}", rootfs.display())))?;
    if !meta.is_dir() {
        return Err(TempError::NoBuild(format!(
            "{} is not a directory",
            rootfs.display()
        )));
    }
    Ok((rootfs, spec))
}

/// The build's spec for the temporary instance: same user, environment,
/// hostname, limits; annotated as a temporary instance of the service;
/// the long sleep instead of its command; no terminal; the overlay root;
/// a cgroup of its own next to the build's.
pub fn temporary_spec(
    cfg: &Config,
    mut spec: serde_json::Value,
    record: &Record,
) -> Result<serde_json::Value, TempError> {
    use serde_json::{json, Value};
    if !spec.is_object() || !spec["process"].is_object() {
        return Err(TempError::NoBuild(
            "the build's config.json has no process".into(),
        ));
    }
    spec["process"]["args"] = json!(SLEEP);
    spec["process"]["terminal"] = json!(false);
    let readonly = spec["root"]["readonly"].as_bool().unwrap_or(false);
    spec["root"] = json!({"path": "rootfs", "readonly": readonly});
    if !spec["annotations"].is_object() {
        spec["annotations"] = json!({});
    }
    spec["annotations"][cfg.runtime.service_annotation.as_str()] = json!(record.service);
    spec["annotations"][cfg.runtime.instance_annotation.as_str()] = json!(record.slug);
    spec["annotations"][TEMPORARY_ANNOTATION] = json!(LOCAL_VALUE);
    if !spec["linux"].is_object() {
        spec["linux"] = json!({});
    }
    let base = match spec["linux"]["cgroupsPath"].as_str() {
        Some(p) if p.contains(':') => {
            return Err(TempError::Failed(
                "the local provider does not support systemd cgroup paths".into(),
            ))
        }
        Some(p) if p.starts_with('/') && p.len() > 1 => p.trim_end_matches('/').to_owned(),
        _ => format!("/porthole-temporary-{}", record.service),
    };
    spec["linux"]["cgroupsPath"] = Value::String(format!("{base}-{}", record.slug));
    Ok(spec)
}

/// Mounts the overlay, writes the config and runs `runc run -d`.
fn start_local(
    cfg: &Config,
    record: &Record,
    lower: &Path,
    spec: serde_json::Value,
    root: &Path,
) -> Result<(), TempError> {
    let name = record.name();
    let b = bundle_dir(cfg, &name);
    let fail = |what: &str, e: &dyn std::fmt::Display| TempError::Failed(format!("{what}: {e}"));
    for d in [b.clone(), b.join("upper"), b.join("work"), b.join("rootfs")] {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&d)
            .map_err(|e| fail(&d.display().to_string(), &e))?;
    }
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    // The overlay's root directory takes owner and mode from the upper
    // layer's: make them the build's rootfs's.
    let lower_meta =
        std::fs::metadata(lower).map_err(|e| fail(&lower.display().to_string(), &e))?;
    let upper = b.join("upper");
    std::os::unix::fs::chown(&upper, Some(lower_meta.uid()), Some(lower_meta.gid()))
        .and_then(|()| {
            std::fs::set_permissions(
                &upper,
                std::fs::Permissions::from_mode(lower_meta.mode() & 0o7777),
            )
        })
        .map_err(|e| fail(&upper.display().to_string(), &e))?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        overlay_path(lower)?,
        overlay_path(&b.join("upper"))?,
        overlay_path(&b.join("work"))?
    );
    nix::mount::mount(
        Some("overlay"),
        &b.join("rootfs"),
        Some("overlay"),
        nix::mount::MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| fail("cannot mount the overlay of the build", &e))?;
    let spec = temporary_spec(cfg, spec, record)?;
    let text = serde_json::to_vec(&spec).map_err(|e| fail("config.json", &e))?;
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(b.join("config.json"))
        .map_err(|e| fail("config.json", &e))?;
    f.write_all(&text).map_err(|e| fail("config.json", &e))?;
    drop(f);
    let log = b.join("runc.log");
    let out = runc(
        cfg,
        root,
        &[
            "--log".as_ref(),
            log.as_os_str(),
            "--log-format".as_ref(),
            "json".as_ref(),
            "run".as_ref(),
            "-d".as_ref(),
            "--bundle".as_ref(),
            b.as_os_str(),
            name.as_ref(),
        ],
    );
    out.map_err(|e| {
        let said = runc_log_error(&log);
        TempError::Failed(match said {
            Some(s) => format!("{e}: {s}"),
            None => e,
        })
    })
}

/// A path as an overlay option: no `,` `:` `\` (they separate options).
fn overlay_path(p: &Path) -> Result<String, TempError> {
    let s = p.to_str().unwrap_or(",");
    if s.contains([',', ':', '\\']) || !s.starts_with('/') {
        return Err(TempError::Failed(format!(
            "{} cannot be an overlay directory (its name holds , : or \\)",
            p.display()
        )));
    }
    Ok(s.to_owned())
}

/// The last error runc wrote to its JSON log, shortened.
fn runc_log_error(log: &Path) -> Option<String> {
    let mut text = String::new();
    File::open(log)
        .ok()?
        .take(64 * 1024)
        .read_to_string(&mut text)
        .ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(clean_message))
}

/// Runs `<runc> --root ROOT args…` as root on the host with nothing
/// inherited (stdio /dev/null, every other fd closed, PATH only, its own
/// session, no blocked signals), within [`RUNC_BUDGET`].
fn runc(cfg: &Config, root: &Path, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let mut c = Command::new(&cfg.temporary.runc);
    c.arg("--root").arg(root).args(args);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls on no shared data.
    unsafe {
        c.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::setsid();
            // Fully root (the session account's real ids and groups are
            // not runc's business), and no fd of the session.
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(0, 0, 0) != 0
                || libc::setresuid(0, 0, 0) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = c
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", cfg.temporary.runc.display()))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("runc failed ({st})")),
            Ok(None) if started.elapsed() > RUNC_BUDGET => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "runc did not finish within {} s",
                    RUNC_BUDGET.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("runc: {e}")),
        }
    }
}

/// Waits until the instance runs on this host (the runtime state shows
/// it with a live init), within `budget`; one progress line after a
/// second of waiting.
pub fn wait_running(
    cfg: &Config,
    service: &ServiceId,
    slug: &str,
    started: Instant,
    budget: Duration,
    say: &dyn Fn(&str),
) -> Result<(), TempError> {
    let mut said = false;
    loop {
        let running = crate::session::runtime::running_instances(
            &cfg.runtime.roots,
            &cfg.runtime.service_annotation,
            &cfg.runtime.instance_annotation,
        )
        .map(|s| {
            s.instances
                .iter()
                .any(|i| &i.service == service && i.slug == slug)
        })
        .unwrap_or(false);
        if running {
            return Ok(());
        }
        if started.elapsed() >= budget {
            return Err(TempError::Timeout(budget.as_secs()));
        }
        if !said && started.elapsed() >= Duration::from_secs(1) {
            say(&format!(
                "waiting for {} to start (at most {} s)…",
                service.instance_name(slug),
                budget.as_secs()
            ));
            said = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What must happen when the session in a temporary instance ends, before
/// its supervisor exits like the session did (`shell::end` runs it; the
/// supervisor may never return to the caller that started the instance).
static AT_END: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>> = std::sync::Mutex::new(None);

/// Sets what [`session_ended`] runs.
pub fn at_session_end(f: Box<dyn FnOnce() + Send>) {
    *AT_END.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
}

/// Runs (once) what [`at_session_end`] set: removes this session's
/// temporary instance. A no-op for every other session.
pub fn session_ended() {
    let f = AT_END.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(f) = f {
        f();
    }
}

/// Removes the instance and then its record. On failure the record stays
/// (unlocked once `held` is gone): the next sweep tries again.
pub fn remove(cfg: &Config, held: Held) -> Result<(), TempError> {
    remove_record(cfg, &held.record)?;
    let _ = std::fs::remove_file(&held.path);
    Ok(())
}

/// Removes what a record describes (not the record file).
fn remove_record(cfg: &Config, record: &Record) -> Result<(), TempError> {
    match record.provider {
        Provider::Local => remove_local(cfg, record),
        Provider::Platform => delete_platform(cfg, record),
    }
}

fn remove_local(cfg: &Config, record: &Record) -> Result<(), TempError> {
    let name = record.name();
    let root = record
        .runtime_root
        .clone()
        .or_else(|| cfg.runtime.roots.first().cloned())
        .ok_or_else(|| TempError::Failed("no runtime root".into()))?;
    if root.join(&name).exists() {
        runc(
            cfg,
            &root,
            &["delete".as_ref(), "--force".as_ref(), name.as_ref()],
        )
        .map_err(TempError::Failed)?;
    }
    remove_bundle(&bundle_dir(cfg, &name))
}

/// Unmounts the overlay and removes the instance's bundle. The upper
/// layer (what the session wrote) is removed only once the overlay is
/// gone, and the mount point only with rmdir: the build below is never
/// reached.
fn remove_bundle(b: &Path) -> Result<(), TempError> {
    if !b.exists() {
        return Ok(());
    }
    let rootfs = b.join("rootfs");
    match nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(TempError::Failed(format!(
                "cannot unmount {}: {e}",
                rootfs.display()
            )))
        }
    }
    if rootfs.exists() {
        std::fs::remove_dir(&rootfs).map_err(|e| {
            TempError::Failed(format!(
                "{} is not empty after unmount: {e}",
                rootfs.display()
            ))
        })?;
    }
    for d in ["upper", "work"] {
        let p = b.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p)
                .map_err(|e| TempError::Failed(format!("{}: {e}", p.display())))?;
        }
    }
    for f in ["config.json", "runc.log"] {
        let _ = std::fs::remove_file(b.join(f));
    }
    std::fs::remove_dir(b).map_err(|e| TempError::Failed(format!("{}: {e}", b.display())))
}

/// What one sweep did: the instances it removed and those it could not.
#[derive(Debug, Default)]
pub struct Swept {
    pub removed: Vec<Record>,
    pub failed: Vec<(Record, TempError)>,
    /// Local temporary containers without a record (a cleared state
    /// directory) that were deleted.
    pub leftovers: Vec<String>,
}

/// Removes the temporary instances whose supervisor is gone (its record
/// is no longer locked), and local temporary containers that have no
/// record at all. Cheap when there is nothing to do.
pub fn sweep(cfg: &Config) -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = std::fs::read_dir(dir(cfg)) else {
        return swept;
    };
    let mut names = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if let Some(stem) = name.strip_suffix(".json") {
            names.push(stem.to_owned());
            sweep_one(cfg, &path, &mut swept);
        }
    }
    // Leftovers: local temporary containers whose bundle is ours but
    // whose record is gone.
    let ours = dir(cfg);
    if let Ok(scan) = crate::session::runtime::running_instances(
        &cfg.runtime.roots,
        &cfg.runtime.service_annotation,
        &cfg.runtime.instance_annotation,
    ) {
        for i in scan.instances.iter().filter(|i| i.temporary) {
            let name = i.name();
            let bundle_is_ours = i
                .confinement_source
                .as_ref()
                .is_some_and(|(b, _)| b == &ours.join(&name));
            if !bundle_is_ours || record_path(cfg, &name).exists() {
                continue;
            }
            let record = Record {
                service: i.service.to_string(),
                slug: i.slug.clone(),
                provider: Provider::Local,
                host: None,
                runtime_root: Some(i.runtime_root.clone()),
                session_id: String::new(),
                created: 0,
            };
            if remove_local(cfg, &record).is_ok() {
                swept.leftovers.push(name);
            }
        }
    }
    swept
}

fn sweep_one(cfg: &Config, path: &Path, swept: &mut Swept) {
    let Ok(mut f) = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    else {
        return;
    };
    // SAFETY: flock on an fd we own; it succeeds only when no supervisor
    // (and no other sweep) holds the record.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return;
    }
    let mut text = String::new();
    if Read::by_ref(&mut f)
        .take(64 * 1024)
        .read_to_string(&mut text)
        .is_err()
    {
        return;
    }
    let Ok(record) = serde_json::from_str::<Record>(&text) else {
        let _ = std::fs::remove_file(path);
        return;
    };
    // A record of names outside the grammar is not ours to act on.
    if crate::names::ServiceId::parse(&record.service).is_none()
        || !crate::names::is_instance_slug(&record.slug)
        || path.file_name().and_then(|n| n.to_str()) != Some(&format!("{}.json", record.name()))
    {
        let _ = std::fs::remove_file(path);
        return;
    }
    if record.provider == Provider::Platform {
        let recent = f
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(RETRY_SECS));
        if recent && swept_before(&text) {
            return;
        }
    }
    match remove_record(cfg, &record) {
        Ok(()) => {
            let _ = std::fs::remove_file(path);
            swept.removed.push(record);
        }
        Err(e) => {
            // Marks the attempt (mtime) so the next sweeps wait a while.
            let mut again = text.trim_end().to_owned();
            if !swept_before(&again) {
                again.push('\n');
                again.push_str(SWEPT_MARK);
            }
            let _ = std::fs::write(path, again);
            swept.failed.push((record, e));
        }
    }
}

/// A second line in a record: a sweep failed to remove it once already.
const SWEPT_MARK: &str = "#swept";

fn swept_before(text: &str) -> bool {
    text.lines().any(|l| l == SWEPT_MARK)
}

/// Logs what a sweep did (`temporary.removed` with reason `orphaned`,
/// `temporary.remove_failed`).
pub fn report(log: &Logger, swept: &Swept) {
    for r in &swept.removed {
        log.emit(
            &Event::new("temporary.removed", Severity::Notice)
                .field("service", r.service.as_str())
                .field("instance", r.name())
                .field("provider", r.provider.as_str())
                .field("session_id", r.session_id.as_str())
                .field("reason", "orphaned")
                .field(
                    "message",
                    "removed a temporary instance whose session's supervisor is gone",
                ),
        );
    }
    for name in &swept.leftovers {
        log.emit(
            &Event::new("temporary.removed", Severity::Notice)
                .field("instance", name.as_str())
                .field("provider", "local")
                .field("reason", "leftover")
                .field(
                    "message",
                    "removed a temporary container that had no record",
                ),
        );
    }
    for (r, e) in &swept.failed {
        log.emit(
            &Event::new("temporary.remove_failed", Severity::Error)
                .field("service", r.service.as_str())
                .field("instance", r.name())
                .field("provider", r.provider.as_str())
                .field("error", e.to_string()),
        );
    }
}

// ----- the platform provider: the keys hook asks ------------------------

/// What the keys hook's temporary mode printed (one JSON object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAnswer {
    Created {
        slug: String,
        host: Option<String>,
    },
    Deleted,
    /// The platform said no (4xx): its message (cleaned).
    Refused(String),
    /// The hook or the platform failed: why.
    Failed(String),
    /// The platform's answer was not usable (size, slug, host): why.
    BadAnswer(String),
}

/// Control characters and overlong text out of a message from outside.
pub fn clean_message(m: &str) -> String {
    let cleaned: String = m
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|c| !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .take(MAX_MESSAGE_CHARS)
        .collect();
    cleaned.trim().to_owned()
}

/// Parses the hook's answer strictly: one object, known outcome, a slug
/// that can be an instance's and a host `ssh` can take as a host.
pub fn parse_hook_answer(bytes: &[u8]) -> Result<HookAnswer, String> {
    if bytes.len() > MAX_ANSWER_BYTES {
        return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
    }
    let v = crate::control_plane::api::parse_json(bytes).map_err(|e| e.to_string())?;
    let o = v.as_object().ok_or("the answer is not an object")?;
    let text = |k: &str| o.get(k).and_then(serde_json::Value::as_str);
    match text("outcome") {
        Some("created") => {
            let slug = text("slug").ok_or("no slug")?;
            if !crate::names::is_instance_slug(slug) {
                return Err(format!(
                    "slug {:?} is not an instance slug",
                    clean_message(slug)
                ));
            }
            let host = match o.get("host") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(h)) if crate::control_plane::api::valid_host(h) => {
                    Some(h.clone())
                }
                Some(h) => {
                    return Err(format!(
                        "host {} is not a DNS name or an IP address",
                        clean_message(&h.to_string())
                    ))
                }
            };
            Ok(HookAnswer::Created {
                slug: slug.to_owned(),
                host,
            })
        }
        Some("deleted") => Ok(HookAnswer::Deleted),
        Some("refused") => Ok(HookAnswer::Refused(clean_message(
            text("message").unwrap_or("no reason given"),
        ))),
        Some("failed") => Ok(HookAnswer::Failed(clean_message(
            text("message").unwrap_or("no reason given"),
        ))),
        Some("bad_answer") => Ok(HookAnswer::BadAnswer(clean_message(
            text("message").unwrap_or("no reason given"),
        ))),
        _ => Err("unknown outcome".into()),
    }
}

/// Runs `<keys_command> --temporary <action> <service> [slug]` as the
/// keys user (as sshd runs the hook: own session, PATH only, stdin and
/// stderr /dev/null, no other fd) and reads its answer from stdout,
/// capped, within the control plane's budget plus a grace.
pub fn run_hook(cfg: &Config, args: &[&str]) -> Result<HookAnswer, TempError> {
    let (uid, gid) = crate::session::revoke::hook_user(&cfg.session.keys_user)
        .map_err(|e| TempError::Failed(e.to_string()))?;
    let groups = crate::session::revoke::hook_groups(&cfg.session.keys_user, gid)
        .map_err(|e| TempError::Failed(e.to_string()))?;
    let prog = crate::session::revoke::check_command(&cfg.session.keys_command)
        .map_err(|e| TempError::Failed(e.to_string()))?;
    let mut c = Command::new(prog);
    c.arg("--temporary")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls on `groups`, prepared before.
    unsafe {
        c.pre_exec(move || {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::setsid();
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
                || libc::geteuid() != uid
            {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = c
        .spawn()
        .map_err(|e| TempError::Failed(format!("cannot run the keys hook: {e}")))?;
    let budget = Duration::from_millis(cfg.control_plane.timeout_ms) + HOOK_GRACE;
    let started = Instant::now();
    let mut out = Vec::new();
    let mut too_big = false;
    if let Some(mut pipe) = child.stdout.take() {
        // SAFETY: fcntl on the pipe we own.
        unsafe {
            let fl = libc::fcntl(pipe.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let mut chunk = [0u8; 4096];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    if out.len() > MAX_ANSWER_BYTES {
                        too_big = true;
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if started.elapsed() >= budget {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let done = loop {
        match child.try_wait() {
            Ok(Some(_)) => break true,
            Ok(None) if started.elapsed() >= budget || too_big => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break false,
        }
    };
    if too_big {
        return Err(TempError::BadAnswer(format!(
            "answer larger than {MAX_ANSWER_BYTES} bytes"
        )));
    }
    if !done {
        return Err(TempError::Failed(format!(
            "the control plane did not answer within {} ms",
            budget.as_millis()
        )));
    }
    parse_hook_answer(&out).map_err(TempError::BadAnswer)
}

fn create_platform(
    cfg: &Config,
    service: &ServiceId,
    session_id: &str,
    slots: Vec<crate::session::limits::Slot>,
) -> Result<Held, TempError> {
    let (slug, host) = match run_hook(cfg, &["create", service.as_str()])? {
        HookAnswer::Created { slug, host } => (slug, host),
        HookAnswer::Refused(m) => return Err(TempError::Refused(m)),
        HookAnswer::Failed(m) => return Err(TempError::Failed(m)),
        HookAnswer::BadAnswer(m) => return Err(TempError::BadAnswer(m)),
        HookAnswer::Deleted => return Err(TempError::BadAnswer("unexpected outcome".into())),
    };
    let record = Record {
        service: service.to_string(),
        slug,
        provider: Provider::Platform,
        host,
        runtime_root: None,
        session_id: session_id.to_owned(),
        created: crate::time::now_unix(),
    };
    let path = record_path(cfg, &record.name());
    match lock_record(&path, &record) {
        Ok(lock) => Ok(Held {
            record,
            path,
            _lock: lock,
            _slots: slots,
        }),
        Err(e) => {
            // Not recorded, so not ours to keep: give it back now.
            let _ = delete_platform(cfg, &record);
            Err(TempError::State(format!("{}: {e}", path.display())))
        }
    }
}

fn delete_platform(cfg: &Config, record: &Record) -> Result<(), TempError> {
    match run_hook(cfg, &["delete", &record.service, &record.slug])? {
        HookAnswer::Deleted => Ok(()),
        HookAnswer::Refused(m) | HookAnswer::Failed(m) | HookAnswer::BadAnswer(m) => {
            Err(TempError::Failed(m))
        }
        HookAnswer::Created { .. } => Err(TempError::BadAnswer("unexpected outcome".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_answers_are_parsed_strictly() {
        assert_eq!(
            parse_hook_answer(br#"{"outcome":"created","slug":"abcde","host":"node-3"}"#),
            Ok(HookAnswer::Created {
                slug: "abcde".into(),
                host: Some("node-3".into())
            })
        );
        assert_eq!(
            parse_hook_answer(br#"{"outcome":"created","slug":"abcde"}"#),
            Ok(HookAnswer::Created {
                slug: "abcde".into(),
                host: None
            })
        );
        for bad in [
            &br#"{"outcome":"created","slug":"../.."}"#[..],
            br#"{"outcome":"created","slug":"fresh"}"#,
            br#"{"outcome":"created","slug":"ABCDE"}"#,
            br#"{"outcome":"created","slug":"abcde","host":"-oProxyCommand=id"}"#,
            br#"{"outcome":"created","slug":"abcde","host":"root@node"}"#,
            br#"{"outcome":"created","slug":"abcde","host":5}"#,
            br#"{"outcome":"created"}"#,
            br#"{"outcome":"maybe"}"#,
            br#"["created"]"#,
            b"not json",
        ] {
            assert!(
                parse_hook_answer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = format!(
            r#"{{"outcome":"refused","message":"{}"}}"#,
            "x".repeat(MAX_ANSWER_BYTES)
        );
        assert!(parse_hook_answer(huge.as_bytes()).is_err());
        // A platform message with terminal escapes is shown defanged.
        let m =
            parse_hook_answer(b"{\"outcome\":\"refused\",\"message\":\"no\\u001b[2J way\\u202e\"}")
                .unwrap();
        assert_eq!(m, HookAnswer::Refused("no [2J way".into()));
    }

    #[test]
    fn slugs_are_fresh_and_never_the_reserved_one() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let s = new_slug().unwrap();
            assert!(crate::names::is_instance_slug(&s), "{s}");
            seen.insert(s);
        }
        assert!(seen.len() > 190);
    }

    #[test]
    fn the_spec_is_the_builds_with_a_sleep_annotations_and_its_own_cgroup() {
        let cfg = Config::default();
        let record = Record {
            service: "srv-cron".into(),
            slug: "abcde".into(),
            provider: Provider::Local,
            host: None,
            runtime_root: None,
            session_id: "x".into(),
            created: 0,
        };
        let build = serde_json::json!({
            "process": {"args": ["/app/job"], "env": ["A=1"], "user": {"uid": 1000, "gid": 1000}, "terminal": true},
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "cron",
            "annotations": {"io.porthole.service": "srv-other", "x": "y"},
            "linux": {"cgroupsPath": "/platform/srv-cron", "resources": {"memory": {"limit": 1}}}
        });
        let s = temporary_spec(&cfg, build.clone(), &record).unwrap();
        assert_eq!(s["process"]["args"], serde_json::json!(SLEEP));
        assert_eq!(s["process"]["terminal"], false);
        assert_eq!(s["process"]["env"], build["process"]["env"]);
        assert_eq!(s["process"]["user"], build["process"]["user"]);
        assert_eq!(s["hostname"], "cron");
        assert_eq!(
            s["root"],
            serde_json::json!({"path": "rootfs", "readonly": true})
        );
        assert_eq!(s["annotations"]["io.porthole.service"], "srv-cron");
        assert_eq!(s["annotations"]["io.porthole.instance"], "abcde");
        assert_eq!(s["annotations"][TEMPORARY_ANNOTATION], LOCAL_VALUE);
        assert_eq!(s["annotations"]["x"], "y");
        assert_eq!(s["linux"]["cgroupsPath"], "/platform/srv-cron-abcde");
        assert_eq!(s["linux"]["resources"], build["linux"]["resources"]);
        let mut systemd = build;
        systemd["linux"]["cgroupsPath"] = serde_json::json!("system.slice:runc:x");
        assert!(temporary_spec(&cfg, systemd, &record).is_err());
    }

    #[test]
    fn per_service_limit_from_the_control_plane_within_range() {
        let cfg = Config::default();
        let l = |v: serde_json::Value| max_per_service(&cfg, Some(&v));
        assert_eq!(l(serde_json::json!({"max_temporary_instances": 1})), 1);
        assert_eq!(l(serde_json::json!({"max_temporary_instances": "9"})), 2);
        assert_eq!(l(serde_json::json!({"max_temporary_instances": 100000})), 2);
        assert_eq!(max_per_service(&cfg, None), 2);
    }
}
