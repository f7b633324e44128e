//! One SSH session, from sshd's hand-over to the exit status: who logged
//! in, to which instance, whether the platform allows it, then entry and
//! supervision. `run` reads as the list of steps, each returning a
//! `Refusal` that ends the login.
//!
//! Inputs are hostile: the environment comes through sshd from the client
//! (AcceptEnv), the auth-info file lives in a directory others can write,
//! the cache is written by a less privileged user. Only `USER` is trusted
//! (sshd sets it from the passwd name). Every refusal is a sentence for the
//! developer on stderr and one `session.rejected` event for the admin.

use crate::config::Config;
use crate::control_plane::api::{shell_policy, ShellPolicy};
use crate::log::{elapsed_ms, Event, Logger, Severity};
use crate::names::Target;
use crate::session::container::{self, FileError, FileKind, IdMap};
use crate::session::enter::{self, EnterError, Plan, WinSize};
use crate::session::registry::{self, SessionRecord};
use crate::session::runtime::{self, Instance};
use crate::session::supervise::{self, Controls, DrainNotice, EndReason, ExitStatus, Outcome};
use std::ffi::CString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;
use std::time::Instant;

const MAX_AUTH_INFO: u64 = 64 * 1024;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What sshd handed us, captured before the environment was wiped.
#[derive(Debug, Clone, Default)]
pub struct Handover {
    pub user: Option<String>,
    pub original_command: Option<String>,
    pub user_auth: Option<String>,
    pub term: Option<String>,
    pub connection: Option<String>,
    /// `-c <command>` from argv when sshd ran us as the login shell.
    pub dash_c: Option<String>,
    /// Our own path, to tell ForceCommand (`-c <ourselves>`) from a command.
    pub self_path: Option<String>,
    /// Real uid that ran us (must be the session account's).
    pub real_uid: u32,
    /// Whether sshd gave the session a terminal (stdin is a tty).
    pub stdin_is_tty: bool,
}

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Shell,
    Exec(String),
    Sftp,
}

impl Request {
    fn describe(&self) -> String {
        match self {
            Request::Shell => "shell".into(),
            Request::Exec(c) => c.clone(),
            Request::Sftp => "subsystem:sftp".into(),
        }
    }
}

/// Decides the request from the hand-over. sshd runs us as
/// `<login shell> -c <ForceCommand>`: when that command is ourselves, the
/// client's wish is in SSH_ORIGINAL_COMMAND; when we are only the login
/// shell (no ForceCommand), it is the `-c` argument.
pub fn classify_request(h: &Handover, sftp_paths: &[String]) -> Request {
    let forced = match (&h.dash_c, &h.self_path) {
        (None, _) => true,
        (Some(c), Some(me)) => c.trim() == me || c.trim() == "porthole-shell",
        (Some(_), None) => false,
    };
    let cmd = if forced {
        h.original_command.clone()
    } else {
        h.dash_c.clone()
    };
    match cmd {
        None => Request::Shell,
        Some(c) if c.trim().is_empty() => Request::Shell,
        Some(c) => {
            let t = c.trim();
            if t == "internal-sftp" || sftp_paths.iter().any(|p| p == t) {
                Request::Sftp
            } else {
                Request::Exec(c)
            }
        }
    }
}

/// Why a login was refused: the `reason` of its `session.rejected` event.
/// Admins' alerts and the tests match on these codes, so `as_str` keeps
/// giving exactly the strings it always gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The login name is not a service or instance name.
    BadName,
    /// The host is not set up: the session account or keys user is missing.
    Setup,
    /// The shell was not run by sshd for the session account.
    WrongUid,
    /// sshd's auth-info file is missing, unsafe or names no public key.
    AuthInfo,
    /// The cached authorization record is missing, unreadable or too old.
    Cache,
    /// The control plane knows no such service.
    NoService,
    /// The login key is not (or no longer) listed for the service.
    KeyNotListed,
    /// The service's type or plan has no SSH.
    ServiceType,
    /// Runtime roots exist but none of their state is root's.
    UntrustedRuntime,
    /// The runtime state could not be read at all.
    NoRuntime,
    /// More than one container claims the instance.
    InstanceConflict,
    /// No running instance matches the login name.
    NoInstance,
    /// The instance stopped while the session was being set up.
    InstanceStopped,
    /// The instance could not be read or entered from the host.
    EnterFailed,
    /// A file of the instance porthole reads as root is not a regular file.
    ContainerFile,
    /// The image has no usable shell.
    NoShell,
    /// The image has no sftp-server.
    NoSftp,
    /// The instance's confinement cannot be reproduced for the session.
    Confinement,
    /// The command cannot be passed to execve (it holds a NUL byte).
    BadCommand,
    /// porthole's own state failed: signal set-up, registry, slot counting.
    State,
    /// The instance is closed for maintenance.
    Drained,
    /// The instance has too little memory left for a session.
    Memory,
    /// The instance already has its maximum of sessions.
    LimitInstance,
    /// The key's owner already has their maximum of sessions on this host.
    LimitOwner,
    /// A certificate login (a hop) that this node does not accept: no
    /// trusted CA configured, or the certificate fails its checks.
    Certificate,
    /// A front door asked about a service the control plane gives no
    /// placement for: it cannot know where to hop.
    NoPlacement,
    /// A node asked for an instance that placement puts on another host
    /// (nodes never hop).
    Elsewhere,
    /// The front door could not reach the node's sshd in time.
    NodeUnreachable,
    /// The node's host key is not certified by the platform's host CA.
    NodeHostKey,
    /// The node refused the front door's certificate.
    HopRefused,
    /// The hop failed for another reason (the OpenSSH client's words).
    HopFailed,
    /// The service menu (`ssh srv@host`) could not run or answered
    /// nothing usable.
    Picker,
    /// No temporary instance could be had: no build, provisioning failed
    /// or timed out, the platform said no or answered nonsense.
    Temporary,
    /// The service or the host already has its maximum of temporary
    /// instances.
    LimitTemporary,
}

impl RefusalReason {
    /// The code in the audit event.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::BadName => "bad_name",
            RefusalReason::Setup => "setup",
            RefusalReason::WrongUid => "wrong_uid",
            RefusalReason::AuthInfo => "auth_info",
            RefusalReason::Cache => "cache",
            RefusalReason::NoService => "no_service",
            RefusalReason::KeyNotListed => "key_not_listed",
            RefusalReason::ServiceType => "service_type",
            RefusalReason::UntrustedRuntime => "untrusted_runtime",
            RefusalReason::NoRuntime => "no_runtime",
            RefusalReason::InstanceConflict => "instance_conflict",
            RefusalReason::NoInstance => "no_instance",
            RefusalReason::InstanceStopped => "instance_stopped",
            RefusalReason::EnterFailed => "enter_failed",
            RefusalReason::ContainerFile => "container_file",
            RefusalReason::NoShell => "no_shell",
            RefusalReason::NoSftp => "no_sftp",
            RefusalReason::Confinement => "confinement",
            RefusalReason::BadCommand => "bad_command",
            RefusalReason::State => "state",
            RefusalReason::Drained => "drained",
            RefusalReason::Memory => "memory",
            RefusalReason::LimitInstance => "limit_instance",
            RefusalReason::LimitOwner => "limit_owner",
            RefusalReason::Certificate => "certificate",
            RefusalReason::NoPlacement => "no_placement",
            RefusalReason::Elsewhere => "elsewhere",
            RefusalReason::NodeUnreachable => "node_unreachable",
            RefusalReason::NodeHostKey => "node_host_key",
            RefusalReason::HopRefused => "hop_refused",
            RefusalReason::HopFailed => "hop_failed",
            RefusalReason::Picker => "picker",
            RefusalReason::Temporary => "temporary",
            RefusalReason::LimitTemporary => "limit_temporary",
        }
    }

    /// How loud the `session.rejected` event is. An instance porthole
    /// cannot confine as it is confined is the admin's problem to fix, and
    /// a certificate or host key that does not check out inside the fleet
    /// is a possible attack or a broken CA setup: those are said louder
    /// than an ordinary refusal. Listed without a wildcard so a new reason
    /// gets its severity chosen, not inherited.
    pub fn severity(self) -> Severity {
        match self {
            RefusalReason::Confinement
            | RefusalReason::Certificate
            | RefusalReason::NodeHostKey
            | RefusalReason::HopRefused => Severity::Warning,
            RefusalReason::BadName
            | RefusalReason::Setup
            | RefusalReason::WrongUid
            | RefusalReason::AuthInfo
            | RefusalReason::Cache
            | RefusalReason::NoService
            | RefusalReason::KeyNotListed
            | RefusalReason::ServiceType
            | RefusalReason::UntrustedRuntime
            | RefusalReason::NoRuntime
            | RefusalReason::InstanceConflict
            | RefusalReason::NoInstance
            | RefusalReason::InstanceStopped
            | RefusalReason::EnterFailed
            | RefusalReason::ContainerFile
            | RefusalReason::NoShell
            | RefusalReason::NoSftp
            | RefusalReason::BadCommand
            | RefusalReason::State
            | RefusalReason::Drained
            | RefusalReason::Memory
            | RefusalReason::LimitInstance
            | RefusalReason::LimitOwner
            | RefusalReason::NoPlacement
            | RefusalReason::Elsewhere
            | RefusalReason::NodeUnreachable
            | RefusalReason::HopFailed
            | RefusalReason::Picker
            | RefusalReason::Temporary
            | RefusalReason::LimitTemporary => Severity::Notice,
        }
    }
}

/// A refusal: the sentence for the user and the reason for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
    /// The limit that was reached, for the audit event.
    pub limit: Option<u64>,
}

fn refuse(reason: RefusalReason, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
        limit: None,
    }
}

fn refuse_limit(reason: RefusalReason, message: impl Into<String>, limit: u64) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
        limit: Some(limit),
    }
}

/// Parses the `SSH_USER_AUTH` file: the first `publickey <type> <base64>`.
pub fn parse_user_auth(text: &str) -> Option<(String, String)> {
    for line in text.lines() {
        let mut parts = line.split(' ');
        if parts.next() != Some("publickey") {
            continue;
        }
        let (Some(kind), Some(b64)) = (parts.next(), parts.next()) else {
            return None;
        };
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 16 * 1024
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=@.-".contains(&b))
        };
        return (ok(kind) && ok(b64)).then(|| (kind.to_owned(), b64.to_owned()));
    }
    None
}

/// Reads the auth-info file sshd wrote for this session: a regular file
/// (no symlink, no FIFO), owned by the session uid, size-capped.
pub fn read_user_auth(path: &str, uid: u32) -> Result<String, Refusal> {
    let bad = |why: &str| {
        refuse(
            RefusalReason::AuthInfo,
            format!("cannot verify the login key: {why}"),
        )
    };
    if !path.starts_with('/') {
        return Err(bad(
            "SSH_USER_AUTH is not an absolute path (is ExposeAuthInfo on?)",
        ));
    }
    // The variable is the caller's: a local user with the session uid can
    // name a device node or FIFO, which must not even be opened as root.
    let f = container::open_host_regular(std::path::Path::new(path)).map_err(|e| match e {
        FileError::NotRegular(n) if n.kind == FileKind::Symlink => {
            bad(&format!("{path}: symbolic links are not followed"))
        }
        FileError::NotRegular(_) => bad("the auth info is not a regular file"),
        FileError::TooLarge => bad("the auth info is too large"),
        FileError::Unavailable(e) => bad(&format!("{path}: {e}")),
    })?;
    let meta = f.metadata().map_err(|e| bad(&e.to_string()))?;
    if meta.uid() != uid {
        return Err(bad("the auth info belongs to another user"));
    }
    if meta.len() > MAX_AUTH_INFO {
        return Err(bad("the auth info is too large"));
    }
    let mut s = String::new();
    f.take(MAX_AUTH_INFO)
        .read_to_string(&mut s)
        .map_err(|_| bad("the auth info is not text"))?;
    Ok(s)
}

/// Who the session belongs to, established from the key and the cache.
#[derive(Debug, Clone)]
pub struct Identity {
    pub owner: String,
    pub fingerprint: String,
    pub key_type: String,
    /// The key blob as the control plane lists it (re-encoded after
    /// parsing): what the revocation watch looks for in later answers.
    pub key_base64: String,
}

fn lookup_uid(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

/// A login that passed every check up to the choice of instance.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub target: Target,
    pub identity: Identity,
    pub request: Request,
    /// The control plane's per-service `limits` object, if any.
    pub service_limits: Option<serde_json::Value>,
    /// The slugs the control plane lists for the service (API v1
    /// `instances`), when it lists them: then they are the authority, and
    /// no other container of the service is entered (Part 2 of the design).
    pub listed_slugs: Option<Vec<String>>,
    /// The control plane's placement of the service's instances, if any:
    /// where a front door hops.
    pub placement: Option<Vec<crate::control_plane::api::Instance>>,
    /// The certificate of a hop (front door or web shell), when the login
    /// came that way: its owner, front door and session id.
    pub hop: Option<crate::fleet::cert::HopClaim>,
    /// The control plane's recording mode for the service, if it names one.
    pub recording: Option<crate::config::RecordingMode>,
    /// The login gets a temporary instance of its own (a cron job, or the
    /// `srv-…-fresh` spelling): src/session/temporary.rs.
    pub temporary: bool,
    /// The one temporary instance this login may enter by its slug: the
    /// one its session started, or on a node the one a hop names.
    pub own_temporary: Option<String>,
}

/// Everything up to the choice of instance. Pure checks, no side effects.
pub fn authorize(cfg: &Config, h: &Handover) -> Result<Authorized, Refusal> {
    let user = h.user.as_deref().unwrap_or("");
    let target = Target::parse(user).ok_or_else(|| {
        refuse(
            RefusalReason::BadName,
            format!("{user:?} is not a service or instance name"),
        )
    })?;
    let session_uid = lookup_uid(&cfg.session.account).ok_or_else(|| {
        refuse(
            RefusalReason::Setup,
            format!("the session account {} does not exist", cfg.session.account),
        )
    })?;
    if h.real_uid != session_uid {
        return Err(refuse(
            RefusalReason::WrongUid,
            format!(
                "porthole-shell may only be run by sshd for the {} account",
                cfg.session.account
            ),
        ));
    }
    let auth_path = h.user_auth.as_deref().ok_or_else(|| {
        refuse(RefusalReason::AuthInfo, "cannot verify the login key: SSH_USER_AUTH is not set (ExposeAuthInfo yes is required)")
    })?;
    let auth = read_user_auth(auth_path, session_uid)?;
    let (key_type, b64) = parse_user_auth(&auth).ok_or_else(|| {
        refuse(
            RefusalReason::AuthInfo,
            "cannot verify the login key: no public key in the auth info",
        )
    })?;
    // The cache is trusted only when written by the keys user: without
    // knowing that uid there is nothing to check its owner against.
    let keys_uid = lookup_uid(&cfg.session.keys_user).ok_or_else(|| {
        refuse(
            RefusalReason::Setup,
            format!(
                "SSH is not available on this host right now: the keys user {} does not exist; the platform team has been notified",
                cfg.session.keys_user
            ),
        )
    })?;
    let now = crate::time::now_unix();
    let request = classify_request(h, &cfg.session.sftp_server_paths);
    let (doc, identity, hop) = if key_type.ends_with(CERT_SUFFIX) {
        let claim = verify_certificate(cfg, user, &key_type, &b64)?;
        let doc = service_doc(cfg, &target, keys_uid, true)?;
        let identity = hop_identity(&doc, &target, &claim, now)?;
        (doc, identity, Some(claim))
    } else {
        let doc = service_doc(cfg, &target, keys_uid, false)?;
        let (entry, key) = crate::control_plane::keys::find_listed_key(&doc, &key_type, &b64, now)
            .ok_or_else(|| not_listed(&target))?;
        let identity = Identity {
            owner: entry.owner.clone(),
            fingerprint: key.fingerprint,
            key_type: key.algorithm,
            key_base64: key.base64,
        };
        (doc, identity, None)
    };
    let temporary = match (shell_policy(&doc.service), target.slug.as_deref(), &hop) {
        (ShellPolicy::Refused(msg), _, _) => return Err(refuse(RefusalReason::ServiceType, msg)),
        // A hop names the temporary instance its front door started.
        (_, Some(slug), Some(_)) if slug != crate::names::TEMPORARY_SLUG => false,
        (ShellPolicy::Temporary, None, _) => true,
        (_, Some(crate::names::TEMPORARY_SLUG), _) => true,
        (ShellPolicy::Temporary, Some(_), _) => {
            return Err(refuse(
                RefusalReason::ServiceType,
                format!(
                    "{} is a cron job: its instances are not entered by name; log in as {} for a temporary instance of its latest build",
                    target.service, target.service
                ),
            ))
        }
        (ShellPolicy::Allowed, _, _) => false,
    };
    let own_temporary = match (&hop, target.slug.as_deref()) {
        (Some(_), Some(slug)) if slug != crate::names::TEMPORARY_SLUG => Some(slug.to_owned()),
        _ => None,
    };
    Ok(Authorized {
        target,
        identity,
        request,
        service_limits: doc.limits.clone(),
        listed_slugs: doc
            .placement()
            .map(|listed| listed.iter().map(|i| i.slug.clone()).collect()),
        placement: doc
            .placement()
            .map(|listed| listed.into_iter().cloned().collect()),
        hop,
        recording: doc.recording,
        temporary,
        own_temporary,
    })
}

/// The key type suffix of OpenSSH certificates.
const CERT_SUFFIX: &str = "-cert-v01@openssh.com";
/// The `via` of certificates the web shell mints: its sessions were
/// authorized by the dashboard's ticket, not by a listed SSH key.
pub const VIA_WEB: &str = "web";

fn not_listed(target: &Target) -> Refusal {
    refuse(
        RefusalReason::KeyNotListed,
        format!(
            "the key you logged in with is not (or no longer) allowed for {}",
            target.service
        ),
    )
}

/// The service's answer from the keys hook's cache, young enough to log in
/// with. A certificate login (`refresh`) was admitted by sshd without the
/// keys hook, so a missing or no longer fresh answer is first brought up to
/// date by running the hook's refresh mode, as the keys user.
fn service_doc(
    cfg: &Config,
    target: &Target,
    keys_uid: u32,
    refresh: bool,
) -> Result<crate::control_plane::api::ServiceDoc, Refusal> {
    let read = || {
        crate::control_plane::cache::read(&cfg.cache.dir, &target.service, Some(keys_uid)).map_err(
            |e| {
                refuse(
                    RefusalReason::Cache,
                    format!(
                        "cannot read the authorization record of {}: {e}",
                        target.service
                    ),
                )
            },
        )
    };
    let fresh = i64::try_from(cfg.cache.fresh_secs).unwrap_or(i64::MAX);
    let mut cached = read()?;
    let now = crate::time::now_unix();
    if refresh
        && cached
            .as_ref()
            .map_or(true, |c| now.saturating_sub(c.fetched_at) > fresh)
    {
        // A failed refresh is not the answer: what the cache holds next is.
        let _ = crate::session::revoke::refresh_blocking(cfg, &target.service);
        cached = read()?;
    }
    let cached = cached.ok_or_else(|| {
        refuse(
            RefusalReason::Cache,
            format!("no authorization record for {}; try again", target.service),
        )
    })?;
    let max_age = i64::try_from(cfg.cache.stale_secs).unwrap_or(i64::MAX);
    if crate::time::now_unix().saturating_sub(cached.fetched_at) > max_age {
        return Err(refuse(
            RefusalReason::Cache,
            format!(
                "the authorization record of {} is too old; try again",
                target.service
            ),
        ));
    }
    cached.doc.ok_or_else(|| {
        refuse(
            RefusalReason::NoService,
            format!("{} does not exist", target.service),
        )
    })
}

/// A certificate login: a hop from a front door or the web shell. Checked
/// again here (sshd checked it against `TrustedUserCAKeys`): signed by a
/// CA porthole.toml trusts, for exactly this login name, valid now, with
/// porthole's key id — only then is its owner believed.
fn verify_certificate(
    cfg: &Config,
    login: &str,
    key_type: &str,
    b64: &str,
) -> Result<crate::fleet::cert::HopClaim, Refusal> {
    let bad = |why: String| {
        refuse(
            RefusalReason::Certificate,
            format!("this host does not accept the certificate you logged in with: {why}"),
        )
    };
    let path = cfg
        .fleet
        .trusted_user_ca
        .as_deref()
        .ok_or_else(|| bad("it accepts no hops (fleet.trusted_user_ca is not set)".into()))?;
    let cas = crate::fleet::cert::load_ca_publics(path).map_err(|e| {
        refuse(
            RefusalReason::Setup,
            format!("SSH through the front door is not available on this host right now: {e}; the platform team has been notified"),
        )
    })?;
    let now = u64::try_from(crate::time::now_unix()).unwrap_or(0);
    crate::fleet::cert::verify_hop_any(&format!("publickey {key_type} {b64}"), &cas, login, now)
        .map_err(|e| bad(e.to_string()))
}

/// Who a hop belongs to: the owner the certificate names. The key the
/// developer logged in with at the front door must still be listed for
/// the service (a revocation between front door and node counts), and it
/// is the key the session's revocation watch follows. The web shell's
/// sessions have no SSH key: the dashboard's ticket authorized them.
fn hop_identity(
    doc: &crate::control_plane::api::ServiceDoc,
    target: &Target,
    claim: &crate::fleet::cert::HopClaim,
    now: i64,
) -> Result<Identity, Refusal> {
    let id = &claim.identity;
    match crate::control_plane::keys::find_listed_fingerprint(doc, &id.fingerprint, now) {
        Some((_, key)) => Ok(Identity {
            owner: id.owner.clone(),
            fingerprint: key.fingerprint,
            key_type: key.algorithm,
            key_base64: key.base64,
        }),
        None if id.via == VIA_WEB => Ok(Identity {
            owner: id.owner.clone(),
            fingerprint: id.fingerprint.clone(),
            key_type: "web-ticket".into(),
            key_base64: String::new(),
        }),
        None => Err(not_listed(target)),
    }
}

/// The whole session, as one list of steps: the first refusal ends it.
/// Returns only on refusal or error (with the exit code); a session that
/// ran exits like its process did.
pub fn run(cfg: &Config, log: &Logger, h: &Handover) -> i32 {
    // `ssh srv@host`: the menu chooses the login name, then the login is
    // an ordinary one to that name (src/session/pick.rs, issue 20).
    let (picked, picker_who);
    let h = if crate::names::is_picker(h.user.as_deref().unwrap_or("").as_bytes()) {
        match crate::session::pick::choose(cfg, log, h) {
            Ok(crate::session::pick::Picked::Login(chosen, who)) => {
                (picked, picker_who) = (chosen, Some(who));
                &*picked
            }
            Ok(crate::session::pick::Picked::Done(code)) => return code,
            Err(refused) => {
                let (r, who) = *refused;
                return Context::new(cfg, log, h).reject(&r, who.as_ref());
            }
        }
    } else {
        picker_who = None;
        h
    };
    let cx = Context::new(cfg, log, h);
    // An sftp client shows only protocol errors: a refusal is also said
    // in SFTP (issue 17).
    let sftp = classify_request(h, &cfg.session.sftp_server_paths) == Request::Sftp;
    let refused = |r: &Refusal, who| {
        let code = cx.reject(r, who);
        if sftp {
            let sentence = format!("porthole: {}", r.message);
            crate::sftp::refuse::answer(0, std::io::stdout().lock(), &sentence);
        }
        code
    };
    let login = match authorize(cfg, h) {
        Ok(login) => login,
        Err(r) => return refused(&r, picker_who.as_ref()),
    };
    // From here on the key is known: a refusal names its owner.
    let result = match destination(cfg, &login) {
        // Its own instance, wherever the platform puts it.
        _ if login.temporary => temporary_session(&cx, &login),
        Ok(Where::Here(None)) => enter_and_supervise(&cx, &login),
        Ok(Where::Here(Some(slug))) => {
            // Placement chose a local instance for a login without a slug:
            // enter exactly that one.
            let mut login = login.clone();
            login.target.slug = Some(slug);
            enter_and_supervise(&cx, &login)
        }
        Ok(Where::There(dest)) => hop_session(&cx, &login, &dest),
        Err(r) => Err(r),
    };
    match result {
        Ok(code) => code,
        Err(r) => refused(&r, Some(&login.identity)),
    }
}

/// Where a login is served.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Where {
    /// On this host; with the slug placement chose when the login named
    /// none.
    Here(Option<String>),
    /// On another host, through a hop.
    There(crate::session::hop::Destination),
}

/// The host's role and the control plane's placement decide where the
/// login goes. A node never hops, and a login that arrived by a hop is
/// never carried further (no chains: a node cannot reach other nodes).
fn destination(cfg: &Config, login: &Authorized) -> Result<Where, Refusal> {
    use crate::config::Role;
    let role = cfg.fleet.role;
    if role == Role::Node || login.hop.is_some() {
        return Ok(Where::Here(None));
    }
    let service = &login.target.service;
    let Some(placement) = &login.placement else {
        if role == Role::Both {
            return Ok(Where::Here(None));
        }
        return Err(refuse(
            RefusalReason::NoPlacement,
            format!(
                "the platform does not say where {service} runs, so this front door cannot reach it; the platform team has been notified"
            ),
        ));
    };
    let listed: Vec<&crate::control_plane::api::Instance> = placement.iter().collect();
    let mut random = [0u8; 8];
    // Without randomness the first listed instance is as good a choice.
    let _ = crate::fleet::cert::random_bytes(&mut random);
    let chosen = crate::control_plane::api::route(
        service,
        &listed,
        login.target.slug.as_deref(),
        u64::from_le_bytes(random),
    )
    .map_err(|e| refuse(RefusalReason::NoInstance, e.to_string()))?;
    if role == Role::Both && cfg.fleet.is_own_name(&chosen.host) {
        return Ok(Where::Here(Some(chosen.slug.clone())));
    }
    Ok(Where::There(crate::session::hop::Destination {
        login: service.instance_name(&chosen.slug),
        host: chosen.host.clone(),
        port: chosen.port.unwrap_or(cfg.fleet.node_port),
    }))
}

/// A session in a temporary instance of its own (src/session/temporary.rs):
/// started (or asked of the platform) for this session, entered here or
/// through a hop to the host the platform put it on, and removed when the
/// session ends, whichever way it ends.
fn temporary_session(cx: &Context<'_>, login: &Authorized) -> Result<i32, Refusal> {
    use crate::session::temporary::{self, TempError};
    let cfg = cx.cfg;
    let service = &login.target.service;
    sweep(cx);
    if let Some(d) = registry::active_drain(&cfg.session.state_dir, service, service.as_str()) {
        return Err(refuse(
            RefusalReason::Drained,
            format!("{service} is closed for maintenance: {}", d.message),
        ));
    }
    eprintln!(
        "porthole: starting a temporary instance of {service} (latest build); it is removed when you leave"
    );
    let session_id = registry::new_id();
    let say = |m: &str| eprintln!("porthole: {m}");
    let held = temporary::create(
        cfg,
        service,
        login.service_limits.as_ref(),
        &session_id,
        &say,
    )
    .map_err(|e| {
        let reason = match &e {
            TempError::Limit { max, .. } => {
                return refuse_limit(
                    RefusalReason::LimitTemporary,
                    e.to_string(),
                    u64::from(*max),
                )
            }
            TempError::State(_) => RefusalReason::State,
            _ => RefusalReason::Temporary,
        };
        refuse(reason, e.to_string())
    })?;
    let record = held.record.clone();
    let name = record.name();
    // Removed when the session ends, however it ends: `end` runs this
    // before the supervisor exits like the session did.
    let (end_cfg, end_name, end_id) = (cfg.clone(), name.clone(), session_id.clone());
    temporary::at_session_end(Box::new(move || {
        let log = Logger::new("porthole-shell", &end_cfg.log.socket);
        let (service, provider) = (held.record.service.clone(), held.record.provider);
        let removed = temporary::remove(&end_cfg, held);
        let mut event = Event::new(
            "temporary.removed",
            if removed.is_ok() {
                Severity::Info
            } else {
                Severity::Error
            },
        )
        .field("service", service)
        .field("instance", end_name)
        .field("provider", provider.as_str())
        .field("temporary_id", end_id)
        .field("reason", "session_ended");
        if let Err(e) = &removed {
            event = event.field("error", format!("{e}; the next sweep tries again"));
        }
        log.emit(&event);
    }));
    cx.log.emit(
        &Event::new("temporary.created", Severity::Info)
            .field("service", service.as_str())
            .field("instance", name.as_str())
            .field("provider", record.provider.as_str())
            .opt("host", record.host.clone())
            .field("owner", login.identity.owner.as_str())
            .field("temporary_id", session_id.as_str())
            .field("ms", elapsed_ms(cx.started)),
    );
    let mut entering = login.clone();
    entering.temporary = false;
    entering.target.slug = Some(record.slug.clone());
    entering.own_temporary = Some(record.slug.clone());
    let elsewhere = record
        .host
        .as_ref()
        .filter(|h| !cfg.fleet.is_own_name(h))
        .cloned();
    let result = match elsewhere {
        Some(host) if cfg.fleet.role.hops() => {
            let dest = crate::session::hop::Destination {
                login: name.clone(),
                host,
                port: cfg.fleet.node_port,
            };
            hop_session(cx, &entering, &dest)
        }
        Some(host) => Err(refuse(
            RefusalReason::Elsewhere,
            format!(
                "the platform started {name} on {host}, not on this host; connect through the region's SSH address (its front door)"
            ),
        )),
        None => {
            let ready = match record.provider {
                temporary::Provider::Local => Ok(()),
                // The platform answered: wait until it runs here.
                temporary::Provider::Platform => temporary::wait_running(
                    cfg,
                    service,
                    &record.slug,
                    Instant::now(),
                    Duration::from_secs(cfg.temporary.start_timeout_secs),
                    &say,
                )
                .map_err(|e| refuse(RefusalReason::Temporary, e.to_string())),
            };
            ready.and_then(|()| enter_and_supervise(cx, &entering))
        }
    };
    temporary::session_ended();
    result
}

/// The front door's session: carried to the node by a hop. Drains and
/// admins' close requests on the front door apply; limits, the instance's
/// own drains and its confinement are the node's, which says its refusals
/// itself (they reach the developer on stderr through the hop).
fn hop_session(
    cx: &Context<'_>,
    login: &Authorized,
    dest: &crate::session::hop::Destination,
) -> Result<i32, Refusal> {
    use crate::session::hop::{self, Carry, HopError, Watch};
    let cfg = cx.cfg;
    let state = &cfg.session.state_dir;
    let service = &login.target.service;
    let iname = dest.login.clone();
    if let Some(d) = registry::active_drain(state, service, &iname) {
        return Err(refuse(
            RefusalReason::Drained,
            format!("{iname} is closed for maintenance: {}", d.message),
        ));
    }
    let identity = &login.identity;
    let record = SessionRecord {
        id: registry::new_id(),
        service: service.to_string(),
        instance: iname.clone(),
        owner: identity.owner.clone(),
        fingerprint: identity.fingerprint.clone(),
        key_type: identity.key_type.clone(),
        client: cx.client.clone(),
        started: crate::time::now_unix(),
        command: login.request.describe(),
        tty: cx.h.stdin_is_tty,
        pid: std::process::id() as i32,
        leader: None,
    };
    let session_id = record.id.clone();
    let _registration = register(cx, &record)?;
    let node = format!("{}:{}", dest.host, dest.port);
    let via = cfg
        .fleet
        .own_names()
        .into_iter()
        .next()
        .unwrap_or_else(|| "front-door".into());
    let hop_identity = crate::fleet::cert::HopIdentity {
        owner: identity.owner.clone(),
        fingerprint: identity.fingerprint.clone(),
        session_id: session_id.clone(),
        via,
    };
    let carry = match &login.request {
        Request::Shell => Carry::Shell,
        Request::Exec(c) => Carry::Exec(c.clone()),
        Request::Sftp => Carry::Sftp,
    };
    let drain_name = iname.clone();
    let watch = Watch {
        close_message: Box::new(|| registry::close_message(state, &session_id)),
        drain_due: Box::new(move || {
            registry::active_drain(state, service, &drain_name)
                .filter(|d| d.deadline <= crate::time::now_unix())
                .map(|d| format!("{drain_name} is closed for maintenance: {}", d.message))
        }),
    };
    cx.log.emit(
        &Event::new("session.start", Severity::Info)
            .field("service", service.as_str())
            .field("instance", iname.as_str())
            .field("owner", identity.owner.as_str())
            .field("fingerprint", identity.fingerprint.as_str())
            .field("key_type", identity.key_type.as_str())
            .opt("client", cx.client.clone())
            .field("command", login.request.describe())
            .field("tty", cx.h.stdin_is_tty)
            .field("session_id", session_id.as_str())
            .field("hop", node.as_str()),
    );
    let ended = hop::run(
        cfg,
        dest,
        &hop_identity,
        cx.h.stdin_is_tty,
        cx.h.term.as_deref(),
        &carry,
        watch,
    )
    .map_err(|e| {
        let reason = match &e {
            HopError::Setup(_) | HopError::Mint(_) => RefusalReason::Setup,
            HopError::Unreachable(_) => RefusalReason::NodeUnreachable,
            HopError::HostKey(_) => RefusalReason::NodeHostKey,
            HopError::Refused(_) => RefusalReason::HopRefused,
            HopError::Failed(_) => RefusalReason::HopFailed,
        };
        let message = match &e {
            HopError::Setup(_) | HopError::Mint(_) => format!(
                "SSH through this front door is not available right now ({e}); the platform team has been notified"
            ),
            _ => e.to_string(),
        };
        refuse(reason, message)
    })?;
    let (exit_code, signal) = (ended.status.code(), ended.status.signal());
    let reason = match (&ended.ended_by, signal) {
        (Some((why, _)), _) => *why,
        (None, Some(_)) => "signal",
        (None, None) => "exit",
    };
    cx.log.emit(
        &Event::new("session.end", Severity::Info)
            .field("service", service.as_str())
            .field("instance", iname.as_str())
            .field("owner", identity.owner.as_str())
            .field("session_id", session_id.as_str())
            .field("reason", reason)
            .opt(
                "message",
                ended
                    .ended_by
                    .as_ref()
                    .map(|(_, m)| m.clone())
                    .filter(|m| !m.is_empty()),
            )
            .opt("exit_status", exit_code)
            .opt("signal", signal)
            .field("hop", node.as_str())
            .field("mint_us", ended.mint_us)
            .field("duration_ms", elapsed_ms(cx.started)),
    );
    Ok(match (&ended.ended_by, exit_code) {
        (Some(_), _) => 1,
        (None, Some(c)) => c,
        (None, None) => 128 + signal.unwrap_or(0),
    })
}

/// The steps after authorization, in order. What a step sets up is held
/// here until the session ends: the slots until its process is gone, the
/// registration until the end is logged.
fn enter_and_supervise(cx: &Context<'_>, login: &Authorized) -> Result<i32, Refusal> {
    let instance = find_instance(cx, login)?;
    let (pinned, mut plan) = prepare(cx, login, &instance)?;
    sweep(cx);
    let limits = crate::session::limits::effective(&cx.cfg.limits, login.service_limits.as_ref());
    let admitted = admit(
        cx.cfg,
        &limits,
        &login.target,
        &instance,
        &login.identity,
        &plan,
    )?;
    let record = session_record(cx, login, &instance, &plan);
    let session_id = record.id.clone();
    let mut registration = register(cx, &record)?;
    let recorded = record.clone();
    let events = sftp_event_pipe(&mut plan)?;
    let spawned = spawn(&pinned, &plan, &instance, &mut registration, record)?;
    // Only porthole-sftp holds the write end now: EOF when it is gone.
    drop(plan.pass_fd.take());
    let audit = events.map(|r| sftp_audit(cx, login, &instance, &session_id, r));
    // After the fork: the recorder's writer is a thread (entering forks a
    // single-threaded process).
    let recorder = crate::session::record::for_session(cx.cfg, cx.log, login.recording, &recorded);
    announce(
        cx,
        login,
        &instance,
        &plan,
        &limits,
        &session_id,
        spawned.outer_pid,
    );
    let controls = controls(cx, login, &instance, &session_id, &limits);
    let outcome = supervise::run_recorded(spawned, &pinned.pidfd, controls, recorder);
    if let Some(done) = audit {
        // Its last lines come at porthole-sftp's exit; a writer that keeps
        // the pipe open (a process of the instance that took the fd) does
        // not hold the end of the session.
        let _ = done.recv_timeout(std::time::Duration::from_secs(2));
    }
    drop(admitted);
    Ok(end(
        cx,
        login,
        &instance,
        &session_id,
        plan.pty.is_some(),
        outcome,
    ))
}

/// What every step of one login shares: the setup, the hand-over, and what
/// each audit event of this login carries.
struct Context<'a> {
    cfg: &'a Config,
    log: &'a Logger,
    h: &'a Handover,
    started: Instant,
    /// The login name as sshd gave it, checked or not.
    user: String,
    /// The client's address, from SSH_CONNECTION.
    client: Option<String>,
}

impl<'a> Context<'a> {
    fn new(cfg: &'a Config, log: &'a Logger, h: &'a Handover) -> Self {
        Context {
            cfg,
            log,
            h,
            started: Instant::now(),
            user: h.user.clone().unwrap_or_default(),
            client: h
                .connection
                .as_deref()
                .and_then(|c| c.split(' ').next())
                .map(str::to_owned),
        }
    }

    /// Ends a refused login: the sentence for the user on stderr, one
    /// `session.rejected` event for the admin, exit code 1.
    fn reject(&self, r: &Refusal, who: Option<&Identity>) -> i32 {
        eprintln!("porthole: {}", r.message);
        self.log.emit(
            &Event::new("session.rejected", r.reason.severity())
                .field("user", self.user.as_str())
                .field("reason", r.reason.as_str())
                .field("message", r.message.as_str())
                .opt("limit", r.limit)
                .opt("owner", who.map(|i| i.owner.clone()))
                .opt("fingerprint", who.map(|i| i.fingerprint.clone()))
                .opt("client", self.client.clone())
                .field("ms", elapsed_ms(self.started)),
        );
        1
    }
}

/// The running instance the login names. What the scan distrusted or
/// found claimed twice goes to the admin whichever instance was asked for.
fn find_instance(cx: &Context<'_>, login: &Authorized) -> Result<Instance, Refusal> {
    let cfg = cx.cfg;
    let scan = runtime::running_instances(
        &cfg.runtime.roots,
        &cfg.runtime.service_annotation,
        &cfg.runtime.instance_annotation,
    );
    let all = match scan {
        Ok(scan) => {
            report_scan(cx.log, &scan, &login.target.service);
            scan.instances
        }
        Err(e) => {
            let reason = match &e {
                runtime::ResolveError::UntrustedRuntime { untrusted } => {
                    report_untrusted(cx.log, untrusted);
                    RefusalReason::UntrustedRuntime
                }
                _ => RefusalReason::NoRuntime,
            };
            return Err(refuse(reason, e.to_string()));
        }
    };
    let all = own_temporary(all, login)?;
    runtime::choose(all, &login.target.service, login.target.slug.as_deref()).map_err(|e| {
        if let runtime::ResolveError::Conflicted { .. } = &e {
            return refuse(RefusalReason::InstanceConflict, e.to_string());
        }
        elsewhere(cfg, login).unwrap_or_else(|| refuse(RefusalReason::NoInstance, e.to_string()))
    })
}

/// A temporary instance belongs to the session that started it: another
/// login asking for it by slug is refused, and only this login's own one
/// (`own_temporary`) is exempt from the control plane's listing (a
/// platform may not list it; the local provider never does).
fn own_temporary(all: Vec<Instance>, login: &Authorized) -> Result<Vec<Instance>, Refusal> {
    let service = &login.target.service;
    let own = login.own_temporary.as_deref();
    if let Some(slug) = login.target.slug.as_deref() {
        let theirs = all
            .iter()
            .any(|i| &i.service == service && i.slug == slug && i.temporary);
        if theirs && own != Some(slug) {
            return Err(refuse(
                RefusalReason::NoInstance,
                format!(
                    "{} is a temporary instance of another session; log in as {}-{} for one of your own",
                    service.instance_name(slug),
                    service,
                    crate::names::TEMPORARY_SLUG
                ),
            ));
        }
    }
    let (mine, rest): (Vec<Instance>, Vec<Instance>) = all
        .into_iter()
        .partition(|i| &i.service == service && i.temporary && own == Some(i.slug.as_str()));
    let mut all = only_listed(rest, login)?;
    all.extend(mine);
    Ok(all)
}

/// The sentence for an instance placement puts on another host: a node
/// does not hop, the region's front door does.
fn elsewhere(cfg: &Config, login: &Authorized) -> Option<Refusal> {
    let slug = login.target.slug.as_deref()?;
    let placed = login
        .placement
        .as_ref()?
        .iter()
        .find(|i| i.slug == slug && !cfg.fleet.is_own_name(&i.host))?;
    let name = login.target.service.instance_name(slug);
    Some(refuse(
        RefusalReason::Elsewhere,
        format!(
            "{name} runs on {}, not on this host; connect through the region's SSH address (its front door), which reaches every instance",
            placed.host
        ),
    ))
}

/// Where the control plane lists the service's instances, a local
/// container of the service that it does not list is not one of them —
/// whatever its annotations or id say — and is never entered: asked for
/// by slug it is refused with a sentence, and it is never a random choice.
fn only_listed(all: Vec<Instance>, login: &Authorized) -> Result<Vec<Instance>, Refusal> {
    let Some(listed) = &login.listed_slugs else {
        return Ok(all);
    };
    let service = &login.target.service;
    let unlisted = |i: &Instance| &i.service == service && !listed.contains(&i.slug);
    if let Some(slug) = login.target.slug.as_deref() {
        if !listed.iter().any(|l| l == slug) && all.iter().any(|i| unlisted(i) && i.slug == slug) {
            return Err(refuse(
                RefusalReason::NoInstance,
                format!(
                    "instance {service}-{slug} runs on this host but the platform does not list it \
                     for {service}; refusing to enter it (listed: {})",
                    if listed.is_empty() {
                        "none".to_owned()
                    } else {
                        listed
                            .iter()
                            .map(|l| format!("{service}-{l}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ));
        }
    }
    Ok(all.into_iter().filter(|i| !unlisted(i)).collect())
}

/// Tells the admin what the scan of the runtime roots distrusted, and
/// every instance of `service` that more than one container claims (also
/// when the login went to another instance: the impostor is still there).
fn report_scan(log: &Logger, scan: &runtime::Scan, service: &crate::names::ServiceId) {
    report_untrusted(log, &scan.untrusted);
    for c in runtime::conflicts(&scan.instances)
        .into_iter()
        .filter(|c| &c.service == service)
    {
        let claimants: Vec<serde_json::Value> = c
            .claimants
            .iter()
            .map(|(id, root, claim)| {
                serde_json::json!({
                    "container": id,
                    "runtime_root": root.display().to_string(),
                    "claim": claim.as_str(),
                })
            })
            .collect();
        log.emit(
            &Event::new("instance.conflict", Severity::Error)
                .field("service", c.service.as_str())
                .field("instance", c.name())
                .field("containers", claimants)
                .field(
                    "message",
                    format!(
                        "{}; sessions to it are refused until only one container claims it",
                        c
                    ),
                ),
        );
    }
}

/// One `runtime.untrusted` event per runtime root, container directory or
/// state file whose containers were ignored.
fn report_untrusted(log: &Logger, untrusted: &[runtime::Untrusted]) {
    for u in untrusted {
        log.emit(
            &Event::new("runtime.untrusted", Severity::Error)
                .field("path", u.path.display().to_string())
                .field("why", u.why.as_str())
                .field(
                    "message",
                    format!(
                        "{} {}: its containers are ignored (runtime state must be root-owned and not group/other-writable)",
                        u.path.display(),
                        u.why
                    ),
                ),
        );
    }
}

/// Pins the instance and reads everything its entry needs (`plan_entry`),
/// then tells the user what was substituted for what the image lacks.
fn prepare(
    cx: &Context<'_>,
    login: &Authorized,
    instance: &Instance,
) -> Result<(enter::Pinned, Plan), Refusal> {
    let (pinned, plan, notices) =
        plan_entry(cx.cfg, cx.h, instance, &login.request).map_err(|r| {
            if r.reason == RefusalReason::ContainerFile {
                // Planted device nodes and FIFOs are an attack on the host
                // more often than a broken image: tell the admin which.
                cx.log.emit(
                    &Event::new("instance.untrusted_file", Severity::Warning)
                        .field("service", login.target.service.as_str())
                        .field("instance", instance.name())
                        .field("container", instance.container_id.as_str())
                        .field("message", r.message.as_str()),
                );
            }
            r
        })?;
    for n in notices {
        eprintln!("porthole: {n}");
    }
    Ok((pinned, plan))
}

type Prepared = (enter::Pinned, Plan, Vec<String>);

/// Pins the instance and reads everything the entry needs from the host
/// side, one step after the other (the first failure is the refusal):
/// credentials, user and shell, command line, environment, cgroups,
/// confinement. Also returns the notices for the user.
fn plan_entry(
    cfg: &Config,
    h: &Handover,
    inst: &Instance,
    req: &Request,
) -> Result<Prepared, Refusal> {
    let tty = h.stdin_is_tty;
    let pinned = enter::pin(inst.init_pid, inst.init_start).map_err(|e| match e {
        EnterError::Vanished => stopped(inst),
        other => refuse(RefusalReason::EnterFailed, other.to_string()),
    })?;
    let status = pinned.read_proc("status").map_err(|_| stopped(inst))?;
    let ids = ids(&pinned, &status, inst)?;
    let user = container_login(cfg, &pinned, ids.uid)?;
    let (program, argv) = command_line(cfg, &pinned, inst, req, &user.shell)?;
    let cgroups = cgroups(&pinned, inst)?;
    let config = bundle_config(inst)?;
    let env_config = inst.bundle.as_ref().and(config.as_deref());
    let env = environment(h, inst, env_config, &user, tty);
    let confinement = confinement(inst, &pinned, &status, config.as_deref())?;
    let program_fd = if *req == Request::Sftp && program == OWN_SFTP {
        if !crate::session::confine::allows_syscall(config.as_deref(), "execveat") {
            return Err(refuse(
                RefusalReason::Confinement,
                format!(
                    "sftp is not available: the seccomp profile of instance {} does not allow execveat, which starts porthole's sftp server",
                    inst.name()
                ),
            ));
        }
        Some(own_sftp(cfg)?)
    } else {
        None
    };
    let host_proc = match confinement.lsm {
        Some(_) => Some(crate::session::confine::host_proc().map_err(|e| {
            refuse(
                RefusalReason::Confinement,
                format!("cannot open the host's /proc: {e}"),
            )
        })?),
        None => None,
    };

    let cs = |s: String| {
        CString::new(s)
            .map_err(|_| refuse(RefusalReason::BadCommand, "the command contains a NUL byte"))
    };
    let pty = if tty {
        Some(supervise::window_size(0).unwrap_or(WinSize { rows: 24, cols: 80 }))
    } else {
        None
    };
    let plan = Plan {
        program: cs(program)?,
        argv: argv.into_iter().map(cs).collect::<Result<_, _>>()?,
        env: env.into_iter().map(cs).collect::<Result<_, _>>()?,
        uid: ids.uid,
        gid: ids.gid,
        groups: ids.groups,
        creds: ids.creds,
        home: cs(user.home)?,
        pty,
        cgroups,
        confinement,
        host_proc,
        program_fd,
        pass_fd: None,
    };
    Ok((pinned, plan, user.notices))
}

/// The init's credentials, and its ids as seen inside its user namespace
/// (what the session process takes on).
struct Ids {
    creds: container::ProcessCreds,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

fn ids(pinned: &enter::Pinned, status: &str, inst: &Instance) -> Result<Ids, Refusal> {
    let creds = container::parse_status(status).ok_or_else(|| {
        refuse(
            RefusalReason::EnterFailed,
            "cannot read the instance's credentials",
        )
    })?;
    let uid_map = IdMap::parse(&pinned.read_proc("uid_map").map_err(|_| stopped(inst))?)
        .ok_or_else(|| {
            refuse(
                RefusalReason::EnterFailed,
                "cannot read the instance's uid map",
            )
        })?;
    let gid_map = IdMap::parse(&pinned.read_proc("gid_map").map_err(|_| stopped(inst))?)
        .ok_or_else(|| {
            refuse(
                RefusalReason::EnterFailed,
                "cannot read the instance's gid map",
            )
        })?;
    let unmapped = || {
        refuse(
            RefusalReason::EnterFailed,
            "the instance's user is not mapped in its user namespace",
        )
    };
    let uid = uid_map.to_inside(creds.uid).ok_or_else(unmapped)?;
    let gid = gid_map.to_inside(creds.gid).ok_or_else(unmapped)?;
    let groups = creds
        .groups
        .iter()
        .filter_map(|g| gid_map.to_inside(*g))
        .collect();
    Ok(Ids {
        creds,
        uid,
        gid,
        groups,
    })
}

/// Who the session is inside the instance, from the image's /etc/passwd,
/// with what had to be substituted said in `notices`.
struct ContainerLogin {
    name: String,
    home: String,
    shell: String,
    notices: Vec<String>,
}

fn container_login(
    cfg: &Config,
    pinned: &enter::Pinned,
    uid: u32,
) -> Result<ContainerLogin, Refusal> {
    let mut notices = Vec::new();
    // A device, FIFO or socket at /etc/passwd was never opened (only looked
    // at through O_PATH); a session into such an image is refused.
    let pw = container::container_user(&pinned.root, uid)
        .map_err(|n| refuse(RefusalReason::ContainerFile, n.to_string()))?;
    let (name, home, login_shell) = match &pw {
        Some(p) => (p.name.clone(), p.home.clone(), p.shell.clone()),
        None => {
            notices.push(format!(
                "uid {uid} has no entry in the instance's /etc/passwd"
            ));
            (uid.to_string(), "/".to_owned(), String::new())
        }
    };
    let home = if home.starts_with('/') {
        home
    } else {
        "/".to_owned()
    };
    let shell = if container::usable_shell(&pinned.root, &login_shell) {
        login_shell
    } else {
        if pw.is_some() {
            let shown = if login_shell.is_empty() {
                "(none)"
            } else {
                login_shell.as_str()
            };
            notices.push(format!(
                "{name}'s login shell {shown} is not usable; using {}",
                cfg.session.fallback_shell
            ));
        }
        cfg.session.fallback_shell.clone()
    };
    Ok(ContainerLogin {
        name,
        home,
        shell,
        notices,
    })
}

/// The program and argv for the request: a login shell, `shell -c`, or
/// the image's sftp-server.
fn command_line(
    cfg: &Config,
    pinned: &enter::Pinned,
    inst: &Instance,
    req: &Request,
    shell: &str,
) -> Result<(String, Vec<String>), Refusal> {
    if !container::usable_shell(&pinned.root, shell) && *req != Request::Sftp {
        return Err(refuse(
            RefusalReason::NoShell,
            format!(
                "instance {} has no usable shell ({shell} is missing)",
                inst.name()
            ),
        ));
    }
    Ok(match req {
        Request::Shell => {
            let base = shell.rsplit('/').next().unwrap_or("sh");
            (shell.to_owned(), vec![format!("-{base}")])
        }
        Request::Exec(cmd) => (
            shell.to_owned(),
            vec![shell.to_owned(), "-c".into(), cmd.clone()],
        ),
        Request::Sftp => {
            let image = cfg
                .session
                .sftp_server_paths
                .iter()
                .find(|p| container::usable_shell(&pinned.root, p));
            match image {
                Some(server) if cfg.session.sftp_prefer_image => {
                    (server.clone(), vec![server.clone()])
                }
                // porthole-sftp, from its sealed copy (`plan_entry`).
                _ => (OWN_SFTP.to_owned(), vec![OWN_SFTP.to_owned()]),
            }
        }
    })
}

/// The program name of porthole's own SFTP server. Never looked up in the
/// container: a plan with it always carries the sealed copy (`own_sftp`).
const OWN_SFTP: &str = "porthole-sftp";

/// A sealed memfd copy of `session.sftp_binary`, made as root on the host
/// before entering: a root-owned executable regular file that no one else
/// may write, opened without following a final symlink.
fn own_sftp(cfg: &Config) -> Result<std::os::fd::OwnedFd, Refusal> {
    use std::os::unix::fs::MetadataExt;
    let path = &cfg.session.sftp_binary;
    let unavailable = |why: String| {
        refuse(
            RefusalReason::NoSftp,
            format!("sftp is not available on this host: {why}"),
        )
    };
    let mut f = container::open_host_regular(path)
        .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
    let m = f
        .metadata()
        .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
    if m.uid() != 0 || m.mode() & 0o022 != 0 || m.mode() & 0o111 == 0 {
        return Err(unavailable(format!(
            "{} must be a root-owned executable writable only by root",
            path.display()
        )));
    }
    crate::session::sealed::sealed_copy_of(&mut f, c"porthole-sftp")
        .map_err(|e| unavailable(e.to_string()))
}

/// For porthole-sftp: the pipe its audit lines come back on. The write end
/// goes into the plan (kept across exec, its number in argv), the read end
/// is returned for [`sftp_audit`].
fn sftp_event_pipe(plan: &mut Plan) -> Result<Option<std::os::fd::OwnedFd>, Refusal> {
    use std::os::fd::AsRawFd;
    if plan.program_fd.is_none() {
        return Ok(None);
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| {
        refuse(
            RefusalReason::EnterFailed,
            format!("cannot make the sftp event pipe: {e}"),
        )
    })?;
    let arg = |s: String| CString::new(s).unwrap_or_default();
    plan.argv.push(arg("--events-fd".into()));
    plan.argv.push(arg(w.as_raw_fd().to_string()));
    plan.pass_fd = Some(w);
    Ok(Some(r))
}

/// Logs porthole-sftp's per-file lines (`sftp::events`) as `sftp.write`,
/// `sftp.remove` and `sftp.rename` events, from a thread of its own (the
/// supervisor's loop stays as it is; nothing forks after this point). The
/// lines are the instance's claims, parsed strictly and bounded. The
/// receiver gets a message when the pipe is done.
fn sftp_audit(
    cx: &Context<'_>,
    login: &Authorized,
    instance: &Instance,
    session_id: &str,
    events: std::os::fd::OwnedFd,
) -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Logger::syslog_only("porthole-shell", &cx.cfg.log.socket);
    let base = [
        ("service", login.target.service.to_string()),
        ("instance", instance.name()),
        ("owner", login.identity.owner.clone()),
        ("session_id", session_id.to_owned()),
    ];
    let spawned = std::thread::Builder::new()
        .name("sftp-audit".into())
        .spawn(move || {
            let with_base = |mut ev: Event| {
                for (k, v) in &base {
                    ev = ev.field(k, v.as_str());
                }
                ev
            };
            let skipped = crate::sftp::events::relay(std::fs::File::from(events), |e| {
                use crate::sftp::events::FileEvent;
                let ev = with_base(Event::new(e.name(), Severity::Info));
                log.emit(&match e {
                    FileEvent::Write { path, bytes } => ev.field("path", path).field("bytes", bytes),
                    FileEvent::Remove { path } => ev.field("path", path),
                    FileEvent::Rename { from, to } => ev.field("path", from).field("to", to),
                });
            });
            if skipped != crate::sftp::events::Skipped::default() {
                log.emit(
                    &with_base(Event::new("sftp.events_skipped", Severity::Warning))
                        .field("malformed", skipped.malformed)
                        .field("over_limit", skipped.over_limit)
                        .field(
                            "message",
                            "porthole-sftp sent audit lines that were malformed or over the per-session limit",
                        ),
                );
            }
            let _ = tx.send(());
        });
    if spawned.is_err() {
        cx.log.emit(
            &Event::new("sftp.events_skipped", Severity::Warning)
                .field("session_id", session_id)
                .field(
                    "message",
                    "cannot start the sftp audit thread: per-file events are not logged",
                ),
        );
    }
    rx
}

/// The instance's own environment, with the login variables set for the
/// container user (never taken from the image or the client) and TERM
/// only for a terminal.
fn environment(
    h: &Handover,
    inst: &Instance,
    bundle_config: Option<&[u8]>,
    user: &ContainerLogin,
    tty: bool,
) -> Vec<String> {
    let mut env: Vec<String> = container::container_env(bundle_config, inst.init_pid)
        .into_iter()
        .filter(|e| {
            let k = e.split('=').next().unwrap_or("");
            !matches!(k, "HOME" | "USER" | "LOGNAME" | "SHELL" | "TERM")
        })
        .collect();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    env.push(format!("HOME={}", user.home));
    env.push(format!("USER={}", user.name));
    env.push(format!("LOGNAME={}", user.name));
    env.push(format!("SHELL={}", user.shell));
    if tty {
        let term = container::validated_term(h.term.as_deref()).unwrap_or_else(|| "xterm".into());
        env.push(format!("TERM={term}"));
    }
    env
}

/// The init's cgroups, opened on the host so the session is charged to
/// the instance (every v1 hierarchy the entry needs must be mounted).
fn cgroups(
    pinned: &enter::Pinned,
    inst: &Instance,
) -> Result<Vec<(container::CgroupDir, std::fs::File)>, Refusal> {
    let proc_cgroup = pinned.read_proc("cgroup").map_err(|_| stopped(inst))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| {
        refuse(
            RefusalReason::EnterFailed,
            format!("cannot read the mount table: {e}"),
        )
    })?;
    let dirs = container::cgroup_dirs_checked(&proc_cgroup, &mountinfo).map_err(|c| {
        refuse(
            RefusalReason::EnterFailed,
            format!("cannot enter the instance: its {c} cgroup is not mounted on this host"),
        )
    })?;
    enter::open_cgroups(dirs).map_err(|e| refuse(RefusalReason::EnterFailed, e.to_string()))
}

/// The sentence for a confinement that cannot be reproduced.
fn confine_refusal(inst: &Instance, e: crate::session::confine::ConfineError) -> Refusal {
    refuse(
        RefusalReason::Confinement,
        format!(
            "instance {} cannot be entered safely: {e}; the platform team has been notified",
            inst.name()
        ),
    )
}

/// The bundle's `config.json`, read once for the environment and the
/// seccomp profile, and only when trusted (see `confine`): the runtime's
/// bundle holding the rootfs, or Docker's, whose config must name the
/// container's rootfs.
fn bundle_config(inst: &Instance) -> Result<Option<Vec<u8>>, Refusal> {
    use crate::session::confine;
    match (&inst.bundle, &inst.confinement_source) {
        (Some(b), _) => confine::read_trusted_config(b),
        (None, Some((b, rootfs))) => confine::read_bound_config(b, rootfs),
        (None, None) => Ok(None),
    }
    .map_err(|e| confine_refusal(inst, e))
}

/// What `runc exec` would apply besides ids, capabilities and cgroups:
/// the instance's seccomp filter (from its trusted bundle, cross-checked
/// with the init's mode), LSM label, rlimits and oom_score_adj. Anything
/// that cannot be reproduced refuses the session (see `confine`).
fn confinement(
    inst: &Instance,
    pinned: &enter::Pinned,
    status: &str,
    config: Option<&[u8]>,
) -> Result<crate::session::confine::Confinement, Refusal> {
    use crate::session::confine;
    let refused = |e| confine_refusal(inst, e);
    let seccomp = confine::seccomp_for(config, confine::seccomp_mode(status)).map_err(refused)?;
    let lsm = confine::lsm_for(|p| pinned.read_proc(p).ok()).map_err(refused)?;
    let limits = pinned.read_proc("limits").map_err(|_| stopped(inst))?;
    let rlimits = confine::parse_limits(&limits).map_err(refused)?;
    let oom_score_adj = pinned
        .read_proc("oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    Ok(confine::Confinement {
        seccomp,
        lsm,
        rlimits,
        oom_score_adj,
    })
}

/// Removes the records of dead supervisors and kills what their sessions
/// left running (`registry::sweep`): at every login, so leftovers do not
/// outlive the next one on the host.
fn sweep(cx: &Context<'_>) {
    crate::session::temporary::report(cx.log, &crate::session::temporary::sweep(cx.cfg));
    let reaped = registry::sweep(&cx.cfg.session.state_dir);
    if reaped > 0 {
        cx.log.emit(
            &Event::new("session.reaped", Severity::Warning)
                .field("processes", reaped)
                .field(
                    "message",
                    "killed what sessions of dead supervisors left running",
                ),
        );
    }
}

/// The slots a session holds; dropping them frees them.
pub struct Admitted {
    _instance: Option<crate::session::limits::Slot>,
    _owner: Option<crate::session::limits::Slot>,
}

/// Admission control: maintenance windows, memory headroom and the
/// concurrent-session limits, in that order (cheapest refusal first).
fn admit(
    cfg: &Config,
    limits: &crate::config::Limits,
    target: &Target,
    instance: &Instance,
    identity: &Identity,
    plan: &Plan,
) -> Result<Admitted, Refusal> {
    let state = &cfg.session.state_dir;
    let name = instance.name();
    if let Some(d) = registry::active_drain(state, &target.service, &name) {
        return Err(refuse(
            RefusalReason::Drained,
            format!("{name} is closed for maintenance: {}", d.message),
        ));
    }
    if limits.memory_reserve_mib > 0 {
        let memory_dir = plan
            .cgroups
            .iter()
            .map(|(d, _)| d)
            .find(|d| d.controllers.split(',').any(|c| c == "memory"));
        let unified = plan
            .cgroups
            .iter()
            .map(|(d, _)| d)
            .find(|d| d.controllers.is_empty());
        let mem = match (memory_dir, unified) {
            (Some(d), _) => crate::session::limits::read_memory(&d.dir, false),
            (None, Some(d)) => crate::session::limits::read_memory(&d.dir, true),
            (None, None) => None,
        };
        let reserve = limits.memory_reserve_mib.saturating_mul(1024 * 1024);
        if let Some((left, limit)) = mem.and_then(|m| Some((m.headroom()?, m.limit?))) {
            if left < reserve {
                return Err(refuse_limit(
                    RefusalReason::Memory,
                    format!(
                        "{name} has only {} MiB of memory left of its {} MiB; a session needs at least {} MiB, so it was not started (it could make the instance run out of memory)",
                        left / (1024 * 1024),
                        limit / (1024 * 1024),
                        limits.memory_reserve_mib
                    ),
                    limits.memory_reserve_mib,
                ));
            }
        }
    }
    let slots = state.join("slots");
    let slot_err =
        |e: crate::session::limits::SlotError, full: String, reason: RefusalReason| match e {
            crate::session::limits::SlotError::Full(n) => {
                refuse_limit(reason, full.replace("{n}", &n.to_string()), u64::from(n))
            }
            crate::session::limits::SlotError::Io(..) => {
                refuse(RefusalReason::State, format!("cannot count sessions: {e}"))
            }
        };
    let inst = crate::session::limits::acquire(
        &slots.join(format!("instance-{name}")),
        limits.max_sessions_per_instance,
    )
    .map_err(|e| {
        slot_err(
            e,
            format!("{name} already has {{n}} SSH sessions (the limit)"),
            RefusalReason::LimitInstance,
        )
    })?;
    let owner = crate::session::limits::acquire(
        &slots.join(format!(
            "owner-{}",
            crate::session::limits::owner_key(&identity.owner)
        )),
        limits.max_sessions_per_owner,
    )
    .map_err(|e| {
        slot_err(
            e,
            format!(
                "{} already has {{n}} SSH sessions on this host (the limit)",
                identity.owner
            ),
            RefusalReason::LimitOwner,
        )
    })?;
    Ok(Admitted {
        _instance: inst,
        _owner: owner,
    })
}

/// The registry's record of this session; the leader is added once the
/// session process exists (`spawn`).
fn session_record(
    cx: &Context<'_>,
    login: &Authorized,
    instance: &Instance,
    plan: &Plan,
) -> SessionRecord {
    SessionRecord {
        // A hop keeps the front door's session id: both hosts' audit events
        // of one login share it.
        id: login
            .hop
            .as_ref()
            .map(|c| c.identity.session_id.clone())
            .unwrap_or_else(registry::new_id),
        service: login.target.service.to_string(),
        instance: instance.name(),
        owner: login.identity.owner.clone(),
        fingerprint: login.identity.fingerprint.clone(),
        key_type: login.identity.key_type.clone(),
        client: cx.client.clone(),
        started: crate::time::now_unix(),
        command: login.request.describe(),
        tty: plan.pty.is_some(),
        pid: std::process::id() as i32,
        leader: None,
    }
}

/// Blocks the signals the supervisor waits for, then records the session
/// where `porthole sessions`, close requests and the sweep find it.
fn register(cx: &Context<'_>, record: &SessionRecord) -> Result<registry::Registration, Refusal> {
    if !supervise::block_session_signals() {
        return Err(refuse(
            RefusalReason::State,
            "cannot set up signal handling for the session",
        ));
    }
    registry::register(&cx.cfg.session.state_dir, record).map_err(|e| {
        refuse(
            RefusalReason::State,
            format!(
                "cannot record the session ({}: {e})",
                cx.cfg.session.state_dir.display()
            ),
        )
    })
}

/// Starts the session process inside the instance and adds its leader to
/// the record.
fn spawn(
    pinned: &enter::Pinned,
    plan: &Plan,
    instance: &Instance,
    registration: &mut registry::Registration,
    record: SessionRecord,
) -> Result<enter::Spawned, Refusal> {
    let spawned = enter::spawn(pinned, plan).map_err(|e| match e {
        EnterError::Vanished => stopped(instance),
        e => refuse(RefusalReason::EnterFailed, e.to_string()),
    })?;
    if let Some(start) = runtime::process_start_time(spawned.inner_pid) {
        let leader = registry::Leader {
            pid: spawned.inner_pid,
            pid_ns: spawned.pid_ns,
            start,
        };
        let record = SessionRecord {
            leader: Some(leader),
            ..record
        };
        // Without it only a later sweep's safety net is lost; the session
        // itself is fine.
        let _ = registration.update(&record);
    }
    Ok(spawned)
}

/// The front door (or `web`) a hopped session came through.
fn via(login: &Authorized) -> Option<String> {
    login.hop.as_ref().map(|c| c.identity.via.clone())
}

/// The `session.start` event.
fn announce(
    cx: &Context<'_>,
    login: &Authorized,
    instance: &Instance,
    plan: &Plan,
    limits: &crate::config::Limits,
    session_id: &str,
    pid: i32,
) {
    let identity = &login.identity;
    cx.log.emit(
        &Event::new("session.start", Severity::Info)
            .field("service", login.target.service.as_str())
            .field("instance", instance.name())
            .field("container", instance.container_id.as_str())
            .field("owner", identity.owner.as_str())
            .field("fingerprint", identity.fingerprint.as_str())
            .field("key_type", identity.key_type.as_str())
            .opt("client", cx.client.clone())
            .field("command", login.request.describe())
            .field("tty", plan.pty.is_some())
            .field("uid", plan.uid)
            .field("pid", pid)
            .field("session_id", session_id)
            .opt("via", via(login))
            .field("limits", crate::session::limits::to_json(limits)),
    );
}

/// What the supervisor enforces and asks about while the session runs:
/// the limits, drains, close requests, key revocation, and where its
/// notices to the user are audited.
fn controls<'a>(
    cx: &'a Context<'a>,
    login: &'a Authorized,
    instance: &'a Instance,
    session_id: &'a str,
    limits: &crate::config::Limits,
) -> Controls<'a> {
    let cfg = cx.cfg;
    let identity = &login.identity;
    let state = cfg.session.state_dir.clone();
    let (svc, iname, sid) = (
        login.target.service.clone(),
        instance.name(),
        session_id.to_owned(),
    );
    let watch_key = !identity.key_base64.is_empty();
    let mut key_watch = crate::session::revoke::KeyWatch::new(
        cfg,
        cx.log,
        login.target.service.clone(),
        &identity.key_type,
        &identity.key_base64,
        vec![
            ("instance", instance.name()),
            ("session_id", session_id.to_owned()),
            ("owner", identity.owner.clone()),
            ("fingerprint", identity.fingerprint.clone()),
        ],
    );
    Controls {
        max_duration: (limits.max_duration_secs > 0)
            .then(|| Duration::from_secs(limits.max_duration_secs)),
        idle_timeout: (limits.idle_timeout_secs > 0)
            .then(|| Duration::from_secs(limits.idle_timeout_secs)),
        warn_before: limits
            .warn_before_secs
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
        drain_notices: limits
            .drain_notice_secs
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
        drain: Box::new(move || {
            registry::active_drain(&state, &svc, &iname).map(|d| DrainNotice {
                deadline_unix: d.deadline,
                message: d.message,
            })
        }),
        close_message: Box::new(move || registry::close_message(&cfg.session.state_dir, &sid)),
        // A web-shell session has no key to watch (its ticket was single use).
        key_revoked: Box::new(move || if watch_key { key_watch.poll() } else { None }),
        transfer: login.request == Request::Sftp,
        on_notice: Box::new(move |kind, text| {
            cx.log.emit(
                &Event::new("session.notice", Severity::Info)
                    .field("session_id", session_id)
                    .field("instance", instance.name())
                    .field("owner", identity.owner.as_str())
                    .field("kind", kind)
                    .field("message", text),
            )
        }),
    }
}

/// Tells the user why the session ended when porthole ended it, logs
/// `session.end`, and picks the exit code.
fn end(
    cx: &Context<'_>,
    login: &Authorized,
    instance: &Instance,
    session_id: &str,
    tty: bool,
    outcome: Outcome,
) -> i32 {
    let crlf = if tty { "\r\n" } else { "" };
    if outcome.reason == EndReason::InstanceStopped {
        eprint!(
            "{crlf}porthole: instance {} stopped (deploy or restart); session closed\r\n",
            instance.name()
        );
    } else if let Some(m) = &outcome.message {
        eprint!("{crlf}porthole: {m}\r\n");
    }
    let (exit_code, signal) = match outcome.status {
        ExitStatus::Code(c) => (Some(c), None),
        ExitStatus::Signal(s) => (None, Some(s)),
        ExitStatus::Unknown => (None, None),
    };
    cx.log.emit(
        &Event::new("session.end", Severity::Info)
            .field("service", login.target.service.as_str())
            .field("instance", instance.name())
            .field("owner", login.identity.owner.as_str())
            .field("session_id", session_id)
            .opt("via", via(login))
            .field("reason", outcome.reason.as_str())
            .opt("message", outcome.message.clone())
            .opt("exit_status", exit_code)
            .opt("signal", signal)
            .field("bytes_in", outcome.bytes_in)
            .field("bytes_out", outcome.bytes_out)
            .field("duration_ms", elapsed_ms(cx.started))
            .opt(
                "recording",
                outcome
                    .recording
                    .as_ref()
                    .map(|r| r.path.display().to_string()),
            )
            .opt(
                "recording_sha256",
                outcome.recording.as_ref().map(|r| r.sha256.clone()),
            )
            .opt(
                "recording_bytes",
                outcome.recording.as_ref().map(|r| r.bytes),
            )
            .opt(
                "recording_status",
                outcome.recording.as_ref().map(|r| r.status),
            ),
    );
    // A temporary instance goes with its session (before the exit below).
    crate::session::temporary::session_ended();
    match outcome.reason {
        EndReason::Exit | EndReason::ClientDisconnect | EndReason::Signal => {
            supervise::exit_like(outcome.status, 1)
        }
        // Ended by us: the command's fate is not the session's answer.
        EndReason::InstanceStopped
        | EndReason::Closed
        | EndReason::Drained
        | EndReason::MaxDuration
        | EndReason::Idle
        | EndReason::KeyRevoked => 1,
    }
}

/// The refusal for an instance that stopped between the scan and entry.
fn stopped(instance: &Instance) -> Refusal {
    refuse(
        RefusalReason::InstanceStopped,
        format!(
            "instance {} stopped while connecting; try again",
            instance.name()
        ),
    )
}

/// Checks that the running binary is installed as intended before doing
/// anything: effective uid root (setuid), and not run by root itself.
pub fn self_check(real_uid: u32, effective_uid: u32) -> Result<(), String> {
    if effective_uid != 0 {
        return Err("porthole-shell is not installed setuid root (expected mode 4750 root:porthole-session)".into());
    }
    if real_uid == 0 {
        return Err("porthole-shell is run by sshd for service logins, not by root".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes as they were strings, before the enum: admins' alerts
    /// and the integration tests match on exactly these.
    const OLD_CODES: [(RefusalReason, &str); 34] = [
        (RefusalReason::BadName, "bad_name"),
        (RefusalReason::Setup, "setup"),
        (RefusalReason::WrongUid, "wrong_uid"),
        (RefusalReason::AuthInfo, "auth_info"),
        (RefusalReason::Cache, "cache"),
        (RefusalReason::NoService, "no_service"),
        (RefusalReason::KeyNotListed, "key_not_listed"),
        (RefusalReason::ServiceType, "service_type"),
        (RefusalReason::UntrustedRuntime, "untrusted_runtime"),
        (RefusalReason::NoRuntime, "no_runtime"),
        (RefusalReason::InstanceConflict, "instance_conflict"),
        (RefusalReason::NoInstance, "no_instance"),
        (RefusalReason::InstanceStopped, "instance_stopped"),
        (RefusalReason::EnterFailed, "enter_failed"),
        (RefusalReason::ContainerFile, "container_file"),
        (RefusalReason::NoShell, "no_shell"),
        (RefusalReason::NoSftp, "no_sftp"),
        (RefusalReason::Confinement, "confinement"),
        (RefusalReason::BadCommand, "bad_command"),
        (RefusalReason::State, "state"),
        (RefusalReason::Drained, "drained"),
        (RefusalReason::Memory, "memory"),
        (RefusalReason::LimitInstance, "limit_instance"),
        (RefusalReason::LimitOwner, "limit_owner"),
        (RefusalReason::Certificate, "certificate"),
        (RefusalReason::NoPlacement, "no_placement"),
        (RefusalReason::Elsewhere, "elsewhere"),
        (RefusalReason::NodeUnreachable, "node_unreachable"),
        (RefusalReason::NodeHostKey, "node_host_key"),
        (RefusalReason::HopRefused, "hop_refused"),
        (RefusalReason::HopFailed, "hop_failed"),
        (RefusalReason::Picker, "picker"),
        (RefusalReason::Temporary, "temporary"),
        (RefusalReason::LimitTemporary, "limit_temporary"),
    ];

    /// Fails to compile when a reason is added, pointing here: the new
    /// reason belongs in `OLD_CODES` too (with its new code).
    fn position(r: RefusalReason) -> usize {
        match r {
            RefusalReason::BadName => 0,
            RefusalReason::Setup => 1,
            RefusalReason::WrongUid => 2,
            RefusalReason::AuthInfo => 3,
            RefusalReason::Cache => 4,
            RefusalReason::NoService => 5,
            RefusalReason::KeyNotListed => 6,
            RefusalReason::ServiceType => 7,
            RefusalReason::UntrustedRuntime => 8,
            RefusalReason::NoRuntime => 9,
            RefusalReason::InstanceConflict => 10,
            RefusalReason::NoInstance => 11,
            RefusalReason::InstanceStopped => 12,
            RefusalReason::EnterFailed => 13,
            RefusalReason::ContainerFile => 14,
            RefusalReason::NoShell => 15,
            RefusalReason::NoSftp => 16,
            RefusalReason::Confinement => 17,
            RefusalReason::BadCommand => 18,
            RefusalReason::State => 19,
            RefusalReason::Drained => 20,
            RefusalReason::Memory => 21,
            RefusalReason::LimitInstance => 22,
            RefusalReason::LimitOwner => 23,
            RefusalReason::Certificate => 24,
            RefusalReason::NoPlacement => 25,
            RefusalReason::Elsewhere => 26,
            RefusalReason::NodeUnreachable => 27,
            RefusalReason::NodeHostKey => 28,
            RefusalReason::HopRefused => 29,
            RefusalReason::HopFailed => 30,
            RefusalReason::Picker => 31,
            RefusalReason::Temporary => 32,
            RefusalReason::LimitTemporary => 33,
        }
    }

    #[test]
    fn refusal_codes_are_the_old_strings_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for (i, (reason, old)) in OLD_CODES.iter().enumerate() {
            assert_eq!(position(*reason), i, "{reason:?} listed once, in order");
            assert_eq!(reason.as_str(), *old, "{reason:?}");
            assert!(seen.insert(reason.as_str()), "{old} used twice");
        }
    }

    #[test]
    fn only_confinement_and_fleet_trust_refusals_are_warnings() {
        for (reason, _) in OLD_CODES {
            let want = if matches!(
                reason,
                RefusalReason::Confinement
                    | RefusalReason::Certificate
                    | RefusalReason::NodeHostKey
                    | RefusalReason::HopRefused
            ) {
                Severity::Warning
            } else {
                Severity::Notice
            };
            assert_eq!(reason.severity(), want, "{reason:?}");
        }
    }

    #[test]
    fn auth_info_parsing() {
        let t = "publickey ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB\n";
        assert_eq!(parse_user_auth(t).unwrap().0, "ssh-ed25519");
        assert!(parse_user_auth("password\n").is_none());
        assert!(parse_user_auth("publickey ssh-ed25519 AA\"AA\n").is_none());
        assert!(parse_user_auth("publickey ssh-ed25519\n").is_none());
        assert!(parse_user_auth("").is_none());
        let two = "keyboard-interactive\npublickey ecdsa-sha2-nistp256 AAAA\n";
        assert_eq!(parse_user_auth(two).unwrap().0, "ecdsa-sha2-nistp256");
    }

    #[test]
    fn request_classification() {
        let sftp = vec!["/usr/lib/openssh/sftp-server".to_string()];
        let mut h = Handover {
            dash_c: Some("/usr/lib/porthole/porthole-shell".into()),
            self_path: Some("/usr/lib/porthole/porthole-shell".into()),
            ..Default::default()
        };
        assert_eq!(classify_request(&h, &sftp), Request::Shell);
        h.original_command = Some("ls -l".into());
        assert_eq!(classify_request(&h, &sftp), Request::Exec("ls -l".into()));
        h.original_command = Some("/usr/lib/openssh/sftp-server".into());
        assert_eq!(classify_request(&h, &sftp), Request::Sftp);
        h.original_command = Some("internal-sftp".into());
        assert_eq!(classify_request(&h, &sftp), Request::Sftp);
        // Without ForceCommand sshd passes the client's command with -c.
        let h2 = Handover {
            dash_c: Some("echo hi".into()),
            self_path: Some("/usr/lib/porthole/porthole-shell".into()),
            original_command: Some("ignored".into()),
            ..Default::default()
        };
        assert_eq!(
            classify_request(&h2, &sftp),
            Request::Exec("echo hi".into())
        );
        assert_eq!(
            classify_request(&Handover::default(), &sftp),
            Request::Shell
        );
    }

    #[test]
    fn self_check_refuses_wrong_installs() {
        assert!(self_check(1000, 1000).is_err());
        assert!(self_check(0, 0).is_err());
        assert!(self_check(1000, 0).is_ok());
    }

    #[test]
    fn user_auth_file_checks() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::getuid().as_raw();
        let p = dir.path().join("auth");
        std::fs::write(&p, "publickey ssh-ed25519 AAAA\n").unwrap();
        assert!(read_user_auth(p.to_str().unwrap(), me).is_ok());
        assert!(
            read_user_auth(p.to_str().unwrap(), me + 1).is_err(),
            "other owner"
        );
        let l = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(read_user_auth(l.to_str().unwrap(), me).is_err(), "symlink");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(
            read_user_auth(fifo.to_str().unwrap(), me).is_err(),
            "fifo must not hang"
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 70 * 1024]).unwrap();
        assert!(read_user_auth(big.to_str().unwrap(), me).is_err(), "huge");
        assert!(read_user_auth("relative", me).is_err());
    }
}
