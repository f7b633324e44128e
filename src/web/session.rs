//! One web session's OpenSSH client: its hop certificate and files, the
//! process in a pty porthole-web owns, and the sentence that ends it.
//!
//! The client is the stock `ssh` with no configuration file, no agent, no
//! other identity, strict host key checking against a known_hosts file
//! written for this session (this host's own host keys for the target,
//! plus the platform's host CA when the fleet has one), and no escape
//! character (a browser's `~.` is text, not a command).

use crate::config::{Fleet, Web};
use crate::fleet::cert::{self, HopIdentity, HopRequest};
use ssh_key::PrivateKey;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What porthole-web tells sshd for the audit: the node's events and
/// `porthole sessions` show `via: "web"`.
pub const VIA: &str = "web";
/// Bytes of the client's last output kept to explain the end.
pub const TAIL_BYTES: usize = 4096;

/// Where one session goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `srv-abc123-d4e5f`: the certificate's principal and the login.
    pub login: String,
    pub host: String,
    pub port: u16,
}

/// Why a session could not start. All are for the admin (logged as
/// `web.error`); the browser reads a generic sentence and close code 1011.
#[derive(Debug)]
pub enum StartError {
    /// The certificate could not be minted (identity field, CA key).
    Mint(cert::MintError),
    /// The private directory or a file in it could not be written.
    Files(String),
    /// The OpenSSH client did not start (path, pty).
    Spawn(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Mint(e) => write!(f, "cannot mint the session certificate: {e}"),
            StartError::Files(e) => write!(f, "cannot write the session files: {e}"),
            StartError::Spawn(e) => write!(f, "cannot start the OpenSSH client: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Reads porthole-web's own user-CA private key: a regular file owned by
/// the user porthole-web runs as, readable by nobody else (0600 or
/// stricter), unencrypted OpenSSH format.
pub fn load_ca_key(path: &Path) -> Result<PrivateKey, String> {
    let f = fs::File::options()
        .read(true)
        .custom_flags_nofollow()
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let md = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !md.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if md.uid() != me {
        return Err(format!(
            "{} is owned by uid {}, not by the user porthole-web runs as (uid {me})",
            path.display(),
            md.uid()
        ));
    }
    if md.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is mode {:o}: a CA key must be readable by its owner only (chmod 0600)",
            path.display(),
            md.mode() & 0o7777
        ));
    }
    let mut text = String::new();
    f.take(16 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let key = PrivateKey::from_openssh(&text)
        .map_err(|e| format!("{}: not an OpenSSH private key: {e}", path.display()))?;
    if key.is_encrypted() {
        return Err(format!("{} is passphrase-protected", path.display()));
    }
    Ok(key)
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
    }
}

/// The per-session private directory (key, certificate, known_hosts);
/// removed when dropped.
pub struct Files {
    pub dir: PathBuf,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub known_hosts: PathBuf,
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The known_hosts lines for `target`: this host's own public host keys
/// under the target's name (a server that proves one of them is this
/// host), and `@cert-authority *` for the platform's host CA, if any.
pub fn known_hosts(web: &Web, fleet: &Fleet, target: &Target) -> Result<String, String> {
    let name = if target.port == 22 {
        target.host.clone()
    } else {
        format!("[{}]:{}", target.host, target.port)
    };
    let mut out = String::new();
    let entries = fs::read_dir(&web.host_keys_dir)
        .map_err(|e| format!("{}: {e}", web.host_keys_dir.display()))?;
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ssh_host_") && n.ends_with("_key.pub"))
        })
        .collect();
    names.sort();
    for p in names {
        let text = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let key = ssh_key::PublicKey::from_openssh(text.trim())
            .map_err(|e| format!("{}: {e}", p.display()))?;
        let line = key
            .to_openssh()
            .map_err(|e| format!("{}: {e}", p.display()))?;
        let mut words = line.split(' ');
        if let (Some(kind), Some(b64)) = (words.next(), words.next()) {
            out.push_str(&format!("{name} {kind} {b64}\n"));
        }
    }
    if let Some(ca) = &fleet.host_ca_public_key {
        let key = cert::load_ca_public(ca).map_err(|e| e.to_string())?;
        let line = key.to_openssh().map_err(|e| e.to_string())?;
        let mut words = line.split(' ');
        if let (Some(kind), Some(b64)) = (words.next(), words.next()) {
            out.push_str(&format!("@cert-authority * {kind} {b64}\n"));
        }
    }
    if out.is_empty() {
        return Err(format!(
            "no host key in {} and no fleet.host_ca_public_key: no sshd can be verified",
            web.host_keys_dir.display()
        ));
    }
    Ok(out)
}

/// Mints the session's certificate and writes its files.
pub fn prepare(
    web: &Web,
    fleet: &Fleet,
    ca: &PrivateKey,
    target: &Target,
    identity: &HopIdentity,
    now: u64,
) -> Result<Files, StartError> {
    let minted = cert::mint(
        ca,
        &HopRequest {
            login: &target.login,
            identity,
            source_address: &fleet.source_addresses(),
        },
        now,
    )
    .map_err(StartError::Mint)?;
    let kh = known_hosts(web, fleet, target).map_err(StartError::Files)?;
    let dir = web.runtime_dir.join(&identity.session_id);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| StartError::Files(format!("{}: {e}", dir.display())))?;
    // From here the directory is removed however this function returns.
    let mut files = Files {
        key: PathBuf::new(),
        cert: PathBuf::new(),
        known_hosts: dir.join("known_hosts"),
        dir,
    };
    fs::set_permissions(&files.dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| StartError::Files(e.to_string()))?;
    let (key, cert) = minted
        .write_files(&files.dir, "id")
        .map_err(|e| StartError::Files(e.to_string()))?;
    files.key = key;
    files.cert = cert;
    fs::write(&files.known_hosts, kh).map_err(|e| StartError::Files(e.to_string()))?;
    Ok(files)
}

/// The OpenSSH client's arguments for one session.
pub fn ssh_args(files: &Files, target: &Target, connect_timeout_secs: u64) -> Vec<String> {
    let opt = |k: &str, v: &str| ["-o".to_owned(), format!("{k}={v}")];
    let p = |p: &Path| p.display().to_string();
    let mut a: Vec<String> = vec!["-tt".into(), "-F".into(), "/dev/null".into()];
    for (k, v) in [
        ("IdentitiesOnly", "yes".to_owned()),
        ("IdentityAgent", "none".to_owned()),
        ("IdentityFile", p(&files.key)),
        ("CertificateFile", p(&files.cert)),
        ("StrictHostKeyChecking", "yes".to_owned()),
        ("UserKnownHostsFile", p(&files.known_hosts)),
        ("GlobalKnownHostsFile", "/dev/null".to_owned()),
        ("UpdateHostKeys", "no".to_owned()),
        ("CheckHostIP", "no".to_owned()),
        ("BatchMode", "yes".to_owned()),
        ("PasswordAuthentication", "no".to_owned()),
        ("KbdInteractiveAuthentication", "no".to_owned()),
        ("ForwardAgent", "no".to_owned()),
        ("ForwardX11", "no".to_owned()),
        ("ClearAllForwardings", "yes".to_owned()),
        ("ControlMaster", "no".to_owned()),
        ("ControlPath", "none".to_owned()),
        ("EscapeChar", "none".to_owned()),
        ("LogLevel", "ERROR".to_owned()),
        ("ConnectTimeout", connect_timeout_secs.max(1).to_string()),
        ("ServerAliveInterval", "30".to_owned()),
        ("Port", target.port.to_string()),
        ("User", target.login.clone()),
    ] {
        a.extend(opt(k, &v));
    }
    a.push("--".into());
    a.push(target.host.clone());
    a
}

/// A running client: the pty's master side and the process.
pub struct Running {
    pub pty: pty_process::Pty,
    pub child: tokio::process::Child,
    /// Kept until the session ends (removed on drop).
    pub files: Files,
}

/// Starts the client in a new pty of `cols` x `rows`.
pub fn spawn(
    web: &Web,
    files: Files,
    target: &Target,
    cols: u16,
    rows: u16,
    connect_timeout_secs: u64,
) -> Result<Running, StartError> {
    let (pty, pts) = pty_process::open().map_err(|e| StartError::Spawn(e.to_string()))?;
    pty.resize(pty_process::Size::new(rows, cols))
        .map_err(|e| StartError::Spawn(e.to_string()))?;
    let child = pty_process::Command::new(&web.ssh)
        .args(ssh_args(&files, target, connect_timeout_secs))
        .env_clear()
        .env("TERM", "xterm-256color")
        .env("LANG", "C.UTF-8")
        .env("HOME", &files.dir)
        .env("PATH", "/usr/bin:/bin")
        .current_dir(&files.dir)
        .kill_on_drop(true)
        .spawn(pts)
        .map_err(|e| StartError::Spawn(format!("{}: {e}", web.ssh.display())))?;
    Ok(Running { pty, child, files })
}

/// Remembers the last [`TAIL_BYTES`] of output.
#[derive(Default)]
pub struct Tail(Vec<u8>);

impl Tail {
    pub fn push(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
        if self.0.len() > TAIL_BYTES {
            let cut = self.0.len() - TAIL_BYTES;
            self.0.drain(..cut);
        }
    }

    /// The output's lines as plain text: escape sequences and control
    /// characters removed, blank lines dropped.
    pub fn lines(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0);
        let mut out = Vec::new();
        let mut line = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\u{1b}' => {
                    // CSI: ESC [ params final (0x40..=0x7e); OSC: ESC ] ... BEL
                    // or ESC \; others: ESC + one character.
                    match chars.next() {
                        Some('[') => {
                            for c in chars.by_ref() {
                                if ('\u{40}'..='\u{7e}').contains(&c) {
                                    break;
                                }
                            }
                        }
                        Some(']') => {
                            while let Some(c) = chars.next() {
                                if c == '\u{7}' {
                                    break;
                                }
                                if c == '\u{1b}' {
                                    chars.next();
                                    break;
                                }
                            }
                        }
                        _ => {}
                    }
                }
                '\n' => {
                    let l = line.trim().to_owned();
                    if !l.is_empty() {
                        out.push(l);
                    }
                    line.clear();
                }
                '\r' => {}
                c if c.is_control() => {}
                c => line.push(c),
            }
        }
        let l = line.trim().to_owned();
        if !l.is_empty() {
            out.push(l);
        }
        out
    }
}

/// Why the session ended, for the page: the node's own `porthole:`
/// sentence when it is the last thing printed (instance stopped, drained
/// with the admin's message, idle timeout, limit reached, refusals; a
/// notice earlier in the session, such as "this session is recorded", is
/// not why it ended), the client's error when it could not connect (exit
/// 255), else the exit status.
pub fn end_reason(tail: &Tail, exit: Option<i32>) -> String {
    let lines = tail.lines();
    if let Some(l) = lines.last().filter(|l| l.starts_with("porthole: ")) {
        return l.trim_start_matches("porthole: ").to_owned();
    }
    match exit {
        Some(0) => "the session ended".to_owned(),
        Some(255) => match lines.last() {
            Some(l) => format!("could not reach the instance: {l}"),
            None => "could not reach the instance".to_owned(),
        },
        Some(n) => format!("the session ended (exit status {n})"),
        None => "the session ended (the connection was closed)".to_owned(),
    }
}

/// Cuts a reason to fit a websocket close frame (123 bytes), on a
/// character boundary.
pub fn close_reason(reason: &str) -> String {
    let mut s = String::new();
    for c in reason.chars() {
        if s.len() + c.len_utf8() > 123 {
            break;
        }
        s.push(c);
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_end_reason_is_the_nodes_last_sentence() {
        let mut t = Tail::default();
        t.push(b"/ # sleep 100\r\n\x1b[1;31m\r\nporthole: instance srv-a-aaaaa stopped (deploy or restart); session closed\r\n");
        assert_eq!(
            end_reason(&t, Some(1)),
            "instance srv-a-aaaaa stopped (deploy or restart); session closed"
        );
        let mut t = Tail::default();
        t.push(b"/ # exit 3\r\n");
        assert_eq!(end_reason(&t, Some(3)), "the session ended (exit status 3)");
        // A notice at the start of the session is not why it ended.
        let mut t = Tail::default();
        t.push(b"porthole: this session is recorded (what you see)\r\n/ # exit 3\r\n");
        assert_eq!(end_reason(&t, Some(3)), "the session ended (exit status 3)");
        let mut t = Tail::default();
        t.push(b"ssh: connect to host 127.0.0.1 port 1: Connection refused\r\n");
        assert_eq!(
            end_reason(&t, Some(255)),
            "could not reach the instance: ssh: connect to host 127.0.0.1 port 1: Connection refused"
        );
        let long = "é".repeat(100);
        let c = close_reason(&long);
        assert!(c.len() <= 123 && c.chars().all(|ch| ch == 'é'));
    }

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let mut t = Tail::default();
        for _ in 0..100 {
            t.push(&[b'x'; 100]);
        }
        t.push(b"\nlast\n");
        assert_eq!(t.lines().last().map(String::as_str), Some("last"));
        assert!(t.0.len() <= TAIL_BYTES);
    }
}
