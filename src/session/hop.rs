//! The front door's half of a hop (DESIGN.md Part 2, issue 14): the login
//! was authorized here, placement named the node that runs the instance,
//! and this module carries the session there with the stock OpenSSH client.
//!
//! Per hop: an ephemeral key and a one-minute user certificate for exactly
//! the instance's login name ([`crate::fleet::cert::mint`], with the user
//! CA's root-only private key), written with a generated known_hosts file
//! (`@cert-authority * <host CA>`) into a fresh root-only directory under
//! the state directory that is removed when the hop ends. `ssh` runs as
//! root with no configuration file, no agent, no other identity, strict
//! host-key checking against the host CA only (never trust on first use),
//! no forwarding and no escape character, on the session's own stdin,
//! stdout and stderr: the pty (and its window changes, which reach `ssh`
//! as SIGWINCH in the foreground process group), the command or shell,
//! the exit status. The client's own diagnostics go to a log file
//! (`-E`), never to the developer raw: when the hop fails before the node
//! answered, the log decides which sentence the developer reads.
//!
//! What it trusts: porthole.toml (root's), the CA files it names, the
//! placement the keys hook cached (host names are validated by
//! [`crate::control_plane::api::valid_host`]: never an option or a
//! `user@` for `ssh`). The node's words (its refusals, the instance-stop
//! sentence) come back on stderr as the session's own and are passed on.

use crate::config::Config;
use crate::fleet::cert::{self, HopIdentity, HopRequest};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The OpenSSH client the hop runs (Debian's openssh-client).
pub const SSH_CLIENT: &str = "/usr/bin/ssh";
/// What the client's log may hold that we read back.
const MAX_LOG: u64 = 16 * 1024;
/// How often the wait loop looks at drains and close requests.
const TICK: Duration = Duration::from_millis(250);
/// Keepalives inside the fleet: a node that died mid-session is noticed
/// within about 45 s.
const ALIVE_INTERVAL_SECS: u32 = 15;
const ALIVE_COUNT: u32 = 3;

/// Where one hop goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The login name on the node: always the instance's full name.
    pub login: String,
    pub host: String,
    pub port: u16,
}

/// What the client asked for, as the hop carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carry {
    Shell,
    Exec(String),
    Sftp,
}

/// Why a hop did not reach the node's session shell. Each variant is one
/// sentence for the developer and one refusal code for the admin.
#[derive(Debug)]
pub enum HopError {
    /// The CA key or the hop directory is not usable: the front door is
    /// misconfigured; refuse and tell the admin.
    Setup(String),
    /// No certificate could be minted: refuse, tell the admin.
    Mint(cert::MintError),
    /// The node's sshd did not answer in time (down, filtered, refused).
    Unreachable(String),
    /// The node's host key is not certified by the host CA for its name.
    HostKey(String),
    /// The node's sshd refused the certificate.
    Refused(String),
    /// `ssh` failed otherwise (its own last words).
    Failed(String),
}

impl std::fmt::Display for HopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HopError::Setup(m) => write!(f, "the front door is not set up for hops: {m}"),
            HopError::Mint(e) => write!(f, "no certificate for the hop: {e}"),
            HopError::Unreachable(m) => write!(f, "{m}"),
            HopError::HostKey(m) => write!(f, "{m}"),
            HopError::Refused(m) => write!(f, "{m}"),
            HopError::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for HopError {}

/// How a hop that reached the node ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub status: std::process::ExitStatus,
    /// Why the front door ended it, when it did: `closed` or `drained`
    /// with the message shown, `client_disconnect` on SIGHUP.
    pub ended_by: Option<(&'static str, String)>,
    /// Microseconds spent minting the certificate (for the audit event).
    pub mint_us: u64,
}

/// What the wait loop asks while the hop runs: an admin's close request
/// (on SIGTERM) and a drain whose deadline has passed.
pub struct Watch<'a> {
    pub close_message: Box<dyn FnMut() -> Option<String> + 'a>,
    pub drain_due: Box<dyn FnMut() -> Option<String> + 'a>,
}

/// The root-only directory of one hop's files; removed on drop, also when
/// the hop fails.
struct HopDir(PathBuf);

impl Drop for HopDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn hop_dir(state: &Path, session_id: &str) -> Result<HopDir, HopError> {
    let base = state.join("hop");
    let setup =
        |what: &Path, e: std::io::Error| HopError::Setup(format!("{}: {e}", what.display()));
    match fs::DirBuilder::new().mode(0o700).create(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(setup(&base, e)),
    }
    let meta = fs::symlink_metadata(&base).map_err(|e| setup(&base, e))?;
    use std::os::unix::fs::MetadataExt;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(HopError::Setup(format!(
            "{} must be a directory of root's, mode 0700",
            base.display()
        )));
    }
    let dir = base.join(session_id);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| setup(&dir, e))?;
    Ok(HopDir(dir))
}

/// The generated known_hosts: only the host CA, for every host name.
fn known_hosts(cfg: &Config, dir: &Path) -> Result<PathBuf, HopError> {
    let path = cfg
        .fleet
        .host_ca_public_key
        .as_deref()
        .ok_or_else(|| HopError::Setup("fleet.host_ca_public_key is not set".into()))?;
    let cas = cert::load_ca_publics(path).map_err(|e| HopError::Setup(e.to_string()))?;
    let mut text = String::new();
    for ca in cas {
        let line = ca
            .to_openssh()
            .map_err(|e| HopError::Setup(format!("{}: {e}", path.display())))?;
        text.push_str(&format!("@cert-authority * {line}\n"));
    }
    let kh = dir.join("known_hosts");
    fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&kh)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .map_err(|e| HopError::Setup(format!("{}: {e}", kh.display())))?;
    Ok(kh)
}

/// The files of one hop, in its private directory.
#[derive(Debug, Clone, Copy)]
pub struct HopFiles<'a> {
    pub key: &'a Path,
    pub certificate: &'a Path,
    pub known_hosts: &'a Path,
    pub log: &'a Path,
}

/// The `ssh` command line of a hop (everything but the binary).
pub fn ssh_args(
    dest: &Destination,
    files: HopFiles<'_>,
    connect_timeout_secs: u64,
    tty: bool,
    carry: &Carry,
) -> Vec<String> {
    let o = |k: &str, v: &str| ["-o".to_owned(), format!("{k}={v}")];
    let mut a: Vec<String> = vec!["-F".into(), "/dev/null".into()];
    let path = |p: &Path| p.to_string_lossy().into_owned();
    for (k, v) in [
        ("IdentityFile", path(files.key)),
        ("CertificateFile", path(files.certificate)),
        ("IdentitiesOnly", "yes".into()),
        ("IdentityAgent", "none".into()),
        ("PreferredAuthentications", "publickey".into()),
        ("PasswordAuthentication", "no".into()),
        ("KbdInteractiveAuthentication", "no".into()),
        ("BatchMode", "yes".into()),
        ("StrictHostKeyChecking", "yes".into()),
        ("UserKnownHostsFile", path(files.known_hosts)),
        ("GlobalKnownHostsFile", "/dev/null".into()),
        ("CheckHostIP", "no".into()),
        ("UpdateHostKeys", "no".into()),
        ("HashKnownHosts", "no".into()),
        ("ConnectTimeout", connect_timeout_secs.to_string()),
        ("ConnectionAttempts", "1".into()),
        ("ServerAliveInterval", ALIVE_INTERVAL_SECS.to_string()),
        ("ServerAliveCountMax", ALIVE_COUNT.to_string()),
        ("ForwardAgent", "no".into()),
        ("ForwardX11", "no".into()),
        ("ClearAllForwardings", "yes".into()),
        ("PermitLocalCommand", "no".into()),
        ("ControlMaster", "no".into()),
        ("ControlPath", "none".into()),
        ("EscapeChar", "none".into()),
        ("LogLevel", "ERROR".into()),
        ("User", dest.login.clone()),
        ("Port", dest.port.to_string()),
        ("RequestTTY", if tty { "force" } else { "no" }.into()),
    ] {
        a.extend(o(k, &v));
    }
    a.push("-E".into());
    a.push(path(files.log));
    if *carry == Carry::Sftp {
        a.push("-s".into());
    }
    // `--` ends the options: the host (validated, never `-…`) and the
    // command are operands whatever they hold.
    a.push("--".into());
    a.push(dest.host.clone());
    match carry {
        Carry::Shell => {}
        Carry::Exec(c) => a.push(c.clone()),
        Carry::Sftp => a.push("sftp".into()),
    }
    a
}

/// Runs one hop to its end. Signals the supervisor handles are blocked by
/// the caller (they are read here with `sigtimedwait`); `ssh` starts with
/// an empty mask, in this process group, so the terminal's SIGWINCH
/// reaches it.
#[allow(clippy::too_many_arguments)]
pub fn run(
    cfg: &Config,
    dest: &Destination,
    identity: &HopIdentity,
    tty: bool,
    term: Option<&str>,
    carry: &Carry,
    mut watch: Watch<'_>,
) -> Result<Ended, HopError> {
    let key_path = cfg
        .fleet
        .user_ca_key
        .as_deref()
        .ok_or_else(|| HopError::Setup("fleet.user_ca_key is not set".into()))?;
    let ca = cert::load_ca_key(key_path).map_err(|e| HopError::Setup(e.to_string()))?;
    let dir = hop_dir(&cfg.session.state_dir, &identity.session_id)?;
    let minting = Instant::now();
    let source = cfg.fleet.source_addresses();
    let now = u64::try_from(crate::time::now_unix()).unwrap_or(0);
    let minted = cert::mint(
        &ca,
        &HopRequest {
            login: &dest.login,
            identity,
            source_address: &source,
        },
        now,
    )
    .map_err(HopError::Mint)?;
    let mint_us = u64::try_from(minting.elapsed().as_micros()).unwrap_or(u64::MAX);
    let (key, certificate) = minted
        .write_files(&dir.0, "id")
        .map_err(|e| HopError::Setup(format!("{}: {e}", dir.0.display())))?;
    let kh = known_hosts(cfg, &dir.0)?;
    let log = dir.0.join("ssh.log");
    let timeout_secs = cfg.fleet.hop_timeout_ms.div_ceil(1000).max(1);
    let files = HopFiles {
        key: &key,
        certificate: &certificate,
        known_hosts: &kh,
        log: &log,
    };
    let args = ssh_args(dest, files, timeout_secs, tty, carry);
    let mut cmd = Command::new(SSH_CLIENT);
    cmd.args(&args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        // Nothing of root's home is read: -F /dev/null, no agent, the
        // identity and known hosts named above.
        .env("HOME", &dir.0)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .current_dir("/")
        .uid(0)
        .gid(0);
    if let Some(t) = term.filter(|_| tty) {
        cmd.env("TERM", t);
    }
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe calls (setgroups, sigprocmask, signal) on
    // locals.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The session's signals are blocked in this process (they are
            // read with sigtimedwait). ssh unblocks only what it inherited
            // unblocked while it waits: with SIGWINCH still blocked, window
            // changes would never reach the node.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            Ok(())
        });
    }
    // SIGCHLD too waits for `wait_signal`: the end of `ssh` wakes the loop
    // at once instead of at its next tick (the child unblocks everything
    // before exec).
    block_sigchld();
    let mut child = cmd
        .spawn()
        .map_err(|e| HopError::Failed(format!("cannot start {SSH_CLIENT}: {e}")))?;
    let (status, ended_by) = wait(&mut child, &mut watch);
    // Once authenticated the key is worthless; delete it now, not at exit.
    let _ = fs::remove_file(&key);
    if status.code() == Some(255) && ended_by.is_none() {
        if let Some(e) = classify(dest, &read_log(&log)) {
            return Err(e);
        }
    }
    Ok(Ended {
        status,
        ended_by,
        mint_us,
    })
}

/// Waits for `ssh`, passing on what the session's signals mean: SIGHUP
/// (the client is gone) and SIGTERM (an admin's close) end the hop,
/// SIGINT/SIGQUIT are the terminal's and ssh's business.
fn wait(
    child: &mut Child,
    watch: &mut Watch<'_>,
) -> (std::process::ExitStatus, Option<(&'static str, String)>) {
    let mut ended_by: Option<(&'static str, String)> = None;
    let pid = child.id() as i32;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return (st, ended_by),
            Ok(None) => {}
            Err(_) => return (std::process::ExitStatus::from_raw(255 << 8), ended_by),
        }
        let sig = wait_signal(TICK);
        let stop = |sig: i32| {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(pid, sig) };
        };
        match sig {
            Some(libc::SIGHUP) => {
                ended_by.get_or_insert(("client_disconnect", String::new()));
                stop(libc::SIGHUP);
            }
            Some(libc::SIGTERM) => {
                let m = (watch.close_message)()
                    .unwrap_or_else(|| "the session was closed by an administrator".into());
                eprint!("\r\nporthole: {m}\r\n");
                ended_by.get_or_insert(("closed", m));
                stop(libc::SIGTERM);
            }
            _ => {}
        }
        if ended_by.is_none() {
            if let Some(m) = (watch.drain_due)() {
                eprint!("\r\nporthole: {m}\r\n");
                ended_by = Some(("drained", m));
                stop(libc::SIGTERM);
            }
        }
    }
}

/// Blocks SIGCHLD in this process, so that a child's exit stays pending
/// for `wait_signal` (its default disposition would discard it).
fn block_sigchld() {
    // SAFETY: sigset manipulation on a local; sigprocmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// One of the handled (blocked) signals, or None after `timeout`.
fn wait_signal(timeout: Duration) -> Option<i32> {
    // SAFETY: sigset manipulation on locals; sigtimedwait only reads them.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGHUP,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGCHLD,
        ] {
            libc::sigaddset(&mut set, s);
        }
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        let s = libc::sigtimedwait(&set, std::ptr::null_mut(), &ts);
        (s > 0).then_some(s)
    }
}

fn read_log(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(f) = fs::File::open(path) {
        let _ = f.take(MAX_LOG).read_to_string(&mut s);
    }
    s
}

/// Turns the OpenSSH client's log of a failed hop into the developer's
/// sentence. None: the log says nothing of a failure of ours (the remote
/// command itself exited 255).
pub fn classify(dest: &Destination, log: &str) -> Option<HopError> {
    let last = log
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())?
        .to_owned();
    let has = |needles: &[&str]| needles.iter().any(|n| log.contains(n));
    let node = format!("{} (the host running {})", dest.host, dest.login);
    if has(&[
        "Host key verification failed",
        "host key is known",
        "Certificate invalid",
        "No matching host key",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "not signed by a trusted CA",
    ]) {
        return Some(HopError::HostKey(format!(
            "refusing to connect to {node}: it did not prove to be a node of this platform (its host key is not certified by the platform's host CA for that name); the platform team has been notified"
        )));
    }
    if has(&["Permission denied"]) {
        return Some(HopError::Refused(format!(
            "{node} refused this front door's certificate; the platform team has been notified"
        )));
    }
    if has(&[
        "Connection refused",
        "timed out",
        "No route to host",
        "Network is unreachable",
        "Could not resolve hostname",
        "Connection closed by",
        "Connection reset",
        "banner exchange",
    ]) {
        return Some(HopError::Unreachable(format!(
            "cannot reach {node} right now ({}); try again in a moment",
            last.trim_start_matches("ssh: ")
        )));
    }
    Some(HopError::Failed(format!(
        "the connection to {node} failed: {last}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest() -> Destination {
        Destination {
            login: "srv-web1-aaaaa".into(),
            host: "node-1.fleet.test".into(),
            port: 22,
        }
    }

    #[test]
    fn the_client_logs_become_sentences() {
        let d = dest();
        let cases = [
            (
                "ssh: connect to host node-1.fleet.test port 22: Connection refused\n",
                "Unreachable",
            ),
            (
                "ssh: connect to host 10.0.0.9 port 22: Connection timed out\n",
                "Unreachable",
            ),
            (
                "No ED25519 host key is known for node-1.fleet.test and you have requested strict checking.\nHost key verification failed.\n",
                "HostKey",
            ),
            (
                "Certificate invalid: name is not a listed principal\nHost key verification failed.\n",
                "HostKey",
            ),
            (
                "srv-web1-aaaaa@node-1.fleet.test: Permission denied (publickey).\n",
                "Refused",
            ),
            ("something new went wrong\n", "Failed"),
        ];
        for (log, want) in cases {
            let e = classify(&d, log).unwrap();
            let got = format!("{e:?}");
            assert!(got.starts_with(want), "{log:?} -> {got}");
            assert!(e.to_string().contains("node-1.fleet.test"), "{e}");
        }
        // An empty log: the remote command exited 255 by itself.
        assert!(classify(&d, "").is_none());
        assert!(classify(&d, "\n \n").is_none());
    }

    #[test]
    fn the_command_line_is_strict_and_ends_options_before_the_host() {
        let d = dest();
        let p = Path::new;
        let files = HopFiles {
            key: p("/run/porthole/hop/x/id"),
            certificate: p("/run/porthole/hop/x/id-cert.pub"),
            known_hosts: p("/run/porthole/hop/x/known_hosts"),
            log: p("/run/porthole/hop/x/ssh.log"),
        };
        let a = ssh_args(
            &d,
            files,
            2,
            true,
            &Carry::Exec("-oProxyCommand=evil".into()),
        );
        let joined = a.join(" ");
        for want in [
            "-F /dev/null",
            "StrictHostKeyChecking=yes",
            "IdentitiesOnly=yes",
            "IdentityAgent=none",
            "EscapeChar=none",
            "ClearAllForwardings=yes",
            "GlobalKnownHostsFile=/dev/null",
            "User=srv-web1-aaaaa",
            "RequestTTY=force",
            "ConnectTimeout=2",
        ] {
            assert!(joined.contains(want), "{want} missing in {joined}");
        }
        let dd = a.iter().position(|x| x == "--").unwrap();
        assert_eq!(a[dd + 1], "node-1.fleet.test");
        assert_eq!(
            a[dd + 2],
            "-oProxyCommand=evil",
            "the command is an operand"
        );
        assert_eq!(a.len(), dd + 3);
        let s = ssh_args(&d, files, 2, false, &Carry::Sftp);
        let dd = s.iter().position(|x| x == "--").unwrap();
        assert_eq!(s[dd - 1], "-s");
        assert_eq!(&s[dd + 1..], ["node-1.fleet.test", "sftp"]);
        assert!(s.join(" ").contains("RequestTTY=no"));
    }
}
