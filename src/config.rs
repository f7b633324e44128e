//! `/etc/porthole/porthole.toml`: the one file an admin edits.
//!
//! Every program reads it, one of them setuid root, so it is opened like
//! sudo-rs opens sudoers: no symlinks, a regular root-owned file that nobody
//! else can write, in a directory nobody else can write, size-capped.
//! Unknown keys are refused so that a typo never silently means "default".

use serde::Deserialize;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the programs look unless an admin-only override says otherwise.
pub const DEFAULT_PATH: &str = "/etc/porthole/porthole.toml";
const MAX_CONFIG_BYTES: u64 = 256 * 1024;

/// Why the configuration could not be used. Every variant is for the admin:
/// the hooks fail closed and log the message; the CLI prints it.
#[derive(Debug)]
pub enum ConfigError {
    /// The file is absent: install or restore it.
    Missing(PathBuf),
    /// Ownership, mode or type is unsafe: fix with chown root / chmod go-w.
    Unsafe { path: PathBuf, why: String },
    /// Reading failed for another reason (permissions, I/O).
    Io { path: PathBuf, err: std::io::Error },
    /// TOML syntax or an unknown/mistyped key: the message names the line.
    Parse { path: PathBuf, msg: String },
    /// A value parses but makes no sense (zero timeout, relative path, …).
    Invalid(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Missing(p) => write!(f, "configuration {} does not exist", p.display()),
            ConfigError::Unsafe { path, why } => {
                write!(f, "refusing configuration {}: {why}", path.display())
            }
            ConfigError::Io { path, err } => write!(f, "cannot read {}: {err}", path.display()),
            ConfigError::Parse { path, msg } => write!(f, "{}: {msg}", path.display()),
            ConfigError::Invalid(msg) => write!(f, "invalid configuration: {msg}"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub control_plane: ControlPlane,
    pub cache: Cache,
    pub runtime: Runtime,
    pub session: Session,
    pub limits: Limits,
    pub log: Log,
    pub fleet: Fleet,
    pub web: Web,
    pub recording: Recording,
    pub temporary: Temporary,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlane {
    /// `https://…`, `http://…` (API v1) or `file:///dir` (one `<service>.json` each).
    pub url: String,
    /// Root-owned file holding the bearer token; none for `file://`.
    pub token_file: Option<PathBuf>,
    /// Hard budget for one keys-hook call, connect to last byte, in ms.
    pub timeout_ms: u64,
    /// Largest answer body accepted, in bytes.
    pub max_body_bytes: u64,
    /// After the control plane failed (5xx, timeout, refused, cut answer)
    /// for a service, it is not asked about that service again for this
    /// long: logins are served from the stale cache or refused at once
    /// instead of each waiting out the budget again. 0 turns this off.
    pub failure_backoff_secs: u64,
    /// Lets a token travel over plain `http://` to a host that is not
    /// loopback. Off: such a configuration is refused (anyone on the path
    /// could read the bastion's token).
    pub allow_insecure_http: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    /// Directory owned by the keys-hook user.
    pub dir: PathBuf,
    /// An answer younger than this is used without asking the control plane.
    pub fresh_secs: u64,
    /// When the control plane fails, an answer up to this old is still served.
    pub stale_secs: u64,
    /// How long a 404 ("no such service") is remembered.
    pub negative_secs: u64,
    /// Most entries (answers, 404s, failure records) kept; beyond, the
    /// oldest are removed, 404s and failure records first.
    pub max_entries: u64,
    /// Most bytes those entries may take together.
    pub max_bytes: u64,
    /// Most 404s and failure records kept (anyone who can reach sshd can
    /// make the hook write one per name it tries).
    pub max_negative_entries: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// OCI runtime state roots to search for instances, in order.
    pub roots: Vec<PathBuf>,
    /// Annotation naming the service a container belongs to.
    pub service_annotation: String,
    /// Annotation naming the instance slug.
    pub instance_annotation: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Session {
    /// The user sshd runs the keys hook as; owns the cache the shell trusts.
    pub keys_user: String,
    /// The keys hook (sshd's AuthorizedKeysCommand program). Session
    /// supervisors run it as `keys_user` with `--refresh <service>` when
    /// the cached answer is no longer fresh, to close the sessions of
    /// revoked keys (src/revoke.rs).
    pub keys_command: PathBuf,
    /// The shared account every service name maps to (the NSS module reads
    /// its uid/gid/home/shell from /etc/passwd).
    pub account: String,
    /// Shell used when the container user's login shell is missing or nologin.
    pub fallback_shell: String,
    /// Subsystem command sshd passes for sftp; mapped to the container's server.
    pub sftp_server_paths: Vec<String>,
    /// porthole's own SFTP server (static), copied into a sealed memfd for
    /// each sftp session and run inside the instance. Must be a root-owned
    /// regular file writable by no one else.
    pub sftp_binary: PathBuf,
    /// Run the image's own sftp-server (the first of `sftp_server_paths`
    /// it has) instead of `sftp_binary` where there is one. Off: every
    /// image gets the same server, with per-file audit events.
    pub sftp_prefer_image: bool,
    /// Root-owned runtime directory: live sessions, slots, drains.
    pub state_dir: PathBuf,
    /// The picker (`ssh srv@host`, issue 20): the session shell runs it
    /// as the session account with the menu's data and the client's
    /// terminal, and takes back one choice.
    pub picker_command: PathBuf,
}

/// Session limits. Every one can be overridden per service by the
/// control plane's optional `limits` object (same key names).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent sessions per instance (0 = no limit).
    pub max_sessions_per_instance: u32,
    /// Concurrent sessions per key owner on this host (0 = no limit).
    pub max_sessions_per_owner: u32,
    /// Refuse a session when the instance's memory limit minus its usage
    /// is below this (MiB; 0 = never refuse).
    pub memory_reserve_mib: u64,
    /// Close sessions after this long (seconds; 0 = no limit).
    pub max_duration_secs: u64,
    /// Close interactive sessions without input for this long (seconds; 0 = never).
    pub idle_timeout_secs: u64,
    /// Warn this many seconds before a duration limit or idle close.
    pub warn_before_secs: Vec<u64>,
    /// Notices before a drain deadline, seconds before it (plus one at once).
    pub drain_notice_secs: Vec<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// The syslog socket; events go to facility authpriv.
    pub socket: PathBuf,
}

/// `[temporary]`: temporary instances, for cron jobs (which have no
/// running instance) and the explicit `srv-…-fresh` login (see
/// src/session/temporary.rs).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Temporary {
    /// Temporary instances of one service on this host at once (0 = no
    /// limit); the control plane's `limits.max_temporary_instances`
    /// overrides it per service.
    pub max_per_service: u32,
    /// Temporary instances on this host at once, all services together
    /// (0 = no limit).
    pub max_per_host: u32,
    /// Longest wait for a temporary instance to be running, in seconds.
    pub start_timeout_secs: u64,
    /// The OCI runtime the local provider (a `file://` control plane)
    /// starts a service's latest bundle with; its state goes under the
    /// first of `runtime.roots`.
    pub runc: PathBuf,
}

impl Default for Temporary {
    fn default() -> Self {
        Temporary {
            max_per_service: 2,
            max_per_host: 10,
            start_timeout_secs: 30,
            runc: "/usr/sbin/runc".into(),
        }
    }
}

/// What this host is in a region (DESIGN.md Part 2).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs instances; a login enters a local one (Part 1).
    #[default]
    Node,
    /// No containers: authenticates, asks placement, hops to the node.
    FrontDoor,
    /// Enters locally when the instance is here, hops otherwise.
    Both,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::FrontDoor => "front_door",
            Role::Both => "both",
        }
    }
    /// Mints certificates and hops to nodes.
    pub fn hops(self) -> bool {
        matches!(self, Role::FrontDoor | Role::Both)
    }
}

/// `[fleet]`: the host's role and the certificate authorities of the hop.
/// Without the section a host is a node that accepts no hops (Part 1).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Fleet {
    pub role: Role,
    /// Front door: the user-CA private key that signs hop certificates.
    /// Root-owned, mode 0600 (checked whenever it is read).
    pub user_ca_key: Option<PathBuf>,
    /// Front door: the host-CA public key nodes' host certificates are
    /// verified with (never trust-on-first-use inside the fleet).
    pub host_ca_public_key: Option<PathBuf>,
    /// Front door: the port nodes' sshd listens on when placement names none.
    pub node_port: u16,
    /// Front door: longest wait for a node's TCP connect and handshake, ms.
    pub hop_timeout_ms: u64,
    /// Front door: its own addresses as nodes see them; put in each
    /// certificate's `source-address`. Empty: no such restriction (use
    /// when a NAT or load balancer sits between front door and nodes).
    pub source_address: Vec<String>,
    /// Node: the user-CA public keys (one per line) whose certificates are
    /// hops from a front door or the web shell (the same file sshd's
    /// `TrustedUserCAKeys` names in the drop-in).
    pub trusted_user_ca: Option<PathBuf>,
    /// The names placement uses for this host (`instances[].host`). The
    /// first is also the `via` a front door writes into its certificates.
    /// Empty: the kernel's host name.
    pub host_names: Vec<String>,
}

/// `[web]`: porthole-web, the dashboard's browser shell (off until its
/// systemd unit is enabled; see README "web shell").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Web {
    /// `host:port` (loopback behind the platform's reverse proxy) or
    /// `unix:/path`.
    pub listen: String,
    /// The dashboard's Ed25519 public key (PEM) tickets are checked with.
    pub ticket_public_key: Option<PathBuf>,
    /// The matching private key, for `porthole web-ticket` only (the
    /// embedded default and the demo); porthole-web never reads it.
    pub ticket_signing_key: Option<PathBuf>,
    /// porthole-web's own user-CA private key (OpenSSH format, owned by
    /// the porthole-web user, 0600); nodes list its public half in
    /// fleet.trusted_user_ca.
    pub user_ca_key: Option<PathBuf>,
    /// The sshd web sessions go to when placement names no host.
    pub ssh_host: String,
    pub ssh_port: u16,
    /// Where this host's `ssh_host_*_key.pub` are: trusted for the local
    /// sshd (other hosts are verified with fleet.host_ca_public_key).
    pub host_keys_dir: PathBuf,
    /// Private (0700) directory for the per-session key, certificate and
    /// known_hosts files.
    pub runtime_dir: PathBuf,
    /// The OpenSSH client.
    pub ssh: PathBuf,
    /// Most web terminals open at once.
    pub max_sessions: u32,
    /// How long a page opened with a ticket may open sessions (one at a
    /// time, e.g. after picking another instance), seconds.
    pub page_secs: u64,
    /// Largest websocket message accepted from a browser, bytes.
    pub max_message_bytes: usize,
}

impl Default for Web {
    fn default() -> Self {
        Web {
            listen: "127.0.0.1:8022".into(),
            ticket_public_key: None,
            ticket_signing_key: None,
            user_ca_key: None,
            ssh_host: "127.0.0.1".into(),
            ssh_port: 22,
            host_keys_dir: "/etc/ssh".into(),
            runtime_dir: "/run/porthole-web".into(),
            ssh: "/usr/bin/ssh".into(),
            max_sessions: 100,
            page_secs: 600,
            max_message_bytes: 65536,
        }
    }
}

impl Web {
    fn validate(&self) -> Result<(), ConfigError> {
        let listen_ok = match self.listen.strip_prefix("unix:") {
            Some(p) => Path::new(p).is_absolute(),
            None => self.listen.parse::<std::net::SocketAddr>().is_ok(),
        };
        if !listen_ok {
            return Err(ConfigError::Invalid(format!(
                "web.listen {:?} must be an address:port or unix:/absolute/path",
                self.listen
            )));
        }
        if !crate::control_plane::api::valid_host(&self.ssh_host) {
            return Err(ConfigError::Invalid(format!(
                "web.ssh_host {:?} is not a host name or IP address",
                self.ssh_host
            )));
        }
        if self.ssh_port == 0 {
            return Err(ConfigError::Invalid(
                "web.ssh_port must be between 1 and 65535".into(),
            ));
        }
        if self.max_sessions == 0 || self.page_secs == 0 || self.page_secs > 86_400 {
            return Err(ConfigError::Invalid(
                "web.max_sessions must be at least 1 and web.page_secs between 1 and 86400".into(),
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(ConfigError::Invalid(
                "web.max_message_bytes must be between 1024 and 16777216".into(),
            ));
        }
        for (key, p) in [
            ("web.ticket_public_key", self.ticket_public_key.as_deref()),
            ("web.ticket_signing_key", self.ticket_signing_key.as_deref()),
            ("web.user_ca_key", self.user_ca_key.as_deref()),
            ("web.host_keys_dir", Some(self.host_keys_dir.as_path())),
            ("web.runtime_dir", Some(self.runtime_dir.as_path())),
            ("web.ssh", Some(self.ssh.as_path())),
        ] {
            if let Some(p) = p.filter(|p| !p.is_absolute()) {
                return Err(ConfigError::Invalid(format!(
                    "{key} {} must be an absolute path",
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            role: Role::Node,
            user_ca_key: None,
            host_ca_public_key: None,
            node_port: 22,
            hop_timeout_ms: 2000,
            source_address: Vec::new(),
            trusted_user_ca: None,
            host_names: Vec::new(),
        }
    }
}

impl Fleet {
    /// The `source_address` entries as addresses (validated already).
    pub fn source_addresses(&self) -> Vec<std::net::IpAddr> {
        self.source_address
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// The names this host has in placement: `host_names`, else the
    /// kernel's host name.
    pub fn own_names(&self) -> Vec<String> {
        if !self.host_names.is_empty() {
            return self.host_names.clone();
        }
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .into_iter()
            .collect()
    }

    /// Whether placement's `host` names this host (case-insensitive, as
    /// DNS names are).
    pub fn is_own_name(&self, host: &str) -> bool {
        self.own_names()
            .iter()
            .any(|n| n.eq_ignore_ascii_case(host))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(bad) = self
            .host_names
            .iter()
            .find(|h| !crate::control_plane::api::valid_host(h))
        {
            return Err(ConfigError::Invalid(format!(
                "fleet.host_names entry {bad:?} is not a host name or IP address"
            )));
        }
        let role = self.role.as_str();
        let front_only: [(&str, bool); 4] = [
            ("fleet.user_ca_key", self.user_ca_key.is_some()),
            (
                "fleet.host_ca_public_key",
                self.host_ca_public_key.is_some(),
            ),
            ("fleet.source_address", !self.source_address.is_empty()),
            (
                "fleet.node_port",
                self.node_port != Fleet::default().node_port,
            ),
        ];
        if !self.role.hops() {
            if let Some((key, _)) = front_only.iter().find(|(_, set)| *set) {
                return Err(ConfigError::Invalid(format!(
                    "{key} is set but fleet.role is \"{role}\": only a front door hops to \
                     nodes (a node never holds the user CA's private key); remove it or set \
                     fleet.role = \"front_door\" or \"both\""
                )));
            }
        } else {
            if self.user_ca_key.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "fleet.role is \"{role}\" but fleet.user_ca_key is not set: a front door \
                     signs each hop's certificate with the user CA's private key"
                )));
            }
            if self.host_ca_public_key.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "fleet.role is \"{role}\" but fleet.host_ca_public_key is not set: a front \
                     door verifies every node's host certificate and never trusts a node's \
                     key on first use"
                )));
            }
        }
        if self.role == Role::FrontDoor && self.trusted_user_ca.is_some() {
            return Err(ConfigError::Invalid(
                "fleet.trusted_user_ca is set but fleet.role is \"front_door\": a front door \
                 runs no instances and accepts no hops; remove it or set fleet.role = \"both\""
                    .into(),
            ));
        }
        if self.node_port == 0 {
            return Err(ConfigError::Invalid(
                "fleet.node_port must be between 1 and 65535".into(),
            ));
        }
        if self.hop_timeout_ms == 0 || self.hop_timeout_ms > 30_000 {
            return Err(ConfigError::Invalid(
                "fleet.hop_timeout_ms must be between 1 and 30000".into(),
            ));
        }
        if let Some(bad) = self
            .source_address
            .iter()
            .find(|a| a.parse::<std::net::IpAddr>().is_err())
        {
            return Err(ConfigError::Invalid(format!(
                "fleet.source_address {bad:?} is not an IP address"
            )));
        }
        for (key, p) in [
            ("fleet.user_ca_key", &self.user_ca_key),
            ("fleet.host_ca_public_key", &self.host_ca_public_key),
            ("fleet.trusted_user_ca", &self.trusted_user_ca),
        ] {
            if let Some(p) = p.as_deref().filter(|p| !p.is_absolute()) {
                return Err(ConfigError::Invalid(format!(
                    "{key} {} must be an absolute path",
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

/// What of a session is recorded (`[recording] mode`, or the control
/// plane's per-service `"recording"`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RecordingMode {
    /// No recording file (the audit events still say who ran what).
    Off,
    /// A recording file without the session's bytes: who, what, when, the
    /// window sizes and how it ended.
    Metadata,
    /// The session's output as well (what the user saw).
    #[default]
    Output,
    /// Output and the client's input (keystrokes, including passwords
    /// typed at prompts that do not echo).
    Full,
}

impl RecordingMode {
    /// The mode named `s`, as in porthole.toml; None for anything else.
    pub fn parse(s: &str) -> Option<RecordingMode> {
        match s {
            "off" => Some(RecordingMode::Off),
            "metadata" => Some(RecordingMode::Metadata),
            "output" => Some(RecordingMode::Output),
            "full" => Some(RecordingMode::Full),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordingMode::Off => "off",
            RecordingMode::Metadata => "metadata",
            RecordingMode::Output => "output",
            RecordingMode::Full => "full",
        }
    }
}

/// `[recording]`: session recordings (src/session/record.rs).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Recording {
    /// The host's mode; the control plane may name another per service.
    pub mode: RecordingMode,
    /// Also record sessions without a terminal (`ssh host command`, scp,
    /// rsync), per the mode; the notice then goes to their stderr. Off:
    /// their audit events (command, exit status, byte counts) are all.
    pub commands: bool,
    /// Root-only directory (0700) the recordings are written to, on the
    /// host side: never inside a container.
    pub dir: PathBuf,
    /// Largest recording of one session, in bytes; a marker line ends it
    /// there and the session goes on (0 = no cap).
    pub max_bytes: u64,
    /// Recordings older than this are removed (days; 0 = kept).
    pub max_age_days: u64,
    /// Most MiB all recordings may take; beyond, the oldest are removed
    /// (0 = no limit).
    pub max_total_mib: u64,
}

impl Default for Recording {
    fn default() -> Self {
        Recording {
            mode: RecordingMode::Output,
            commands: false,
            dir: "/var/log/porthole/sessions".into(),
            max_bytes: 256 * 1024 * 1024,
            max_age_days: 90,
            max_total_mib: 10 * 1024,
        }
    }
}

impl Recording {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.dir.is_absolute() || self.dir == Path::new("/") {
            return Err(ConfigError::Invalid(format!(
                "recording.dir {} must be an absolute path below /",
                self.dir.display()
            )));
        }
        if self.max_bytes != 0 && self.max_bytes < 4096 {
            return Err(ConfigError::Invalid(
                "recording.max_bytes must be 0 (no cap) or at least 4096".into(),
            ));
        }
        Ok(())
    }
}

impl Default for ControlPlane {
    fn default() -> Self {
        ControlPlane {
            url: "file:///etc/porthole/services".into(),
            token_file: None,
            timeout_ms: 3000,
            max_body_bytes: 4 * 1024 * 1024,
            failure_backoff_secs: 5,
            allow_insecure_http: false,
        }
    }
}

impl ControlPlane {
    /// Why this control plane must not be asked, when the bearer token
    /// would cross a network in clear: a plain `http://` URL, a token file,
    /// a host that is not loopback, and no `allow_insecure_http`. Checked
    /// when the configuration is read (every program refuses it) and again
    /// before a request, whatever built the value.
    pub fn insecure_http_refusal(&self) -> Option<String> {
        let rest = self.url.strip_prefix("http://")?;
        if self.token_file.is_none() || self.allow_insecure_http || http_host_is_loopback(rest) {
            return None;
        }
        Some(format!(
            "control_plane.url {:?} is plain http:// to a host that is not loopback: \
             the bearer token would cross the network in clear. Use https://, or set \
             control_plane.allow_insecure_http = true if that network path is trusted",
            self.url
        ))
    }
}

/// True when the authority of an `http://` URL (the text after the scheme)
/// names a loopback host: 127.0.0.0/8, `[::1]` (or `[::ffff:127.x.y.z]`),
/// `localhost`. Strict on purpose: anything unusual (user info, odd IPv4
/// spellings like `127.1`, whitespace, percent-escapes) is "not loopback",
/// so a URL another parser reads differently can only be refused, never
/// let through.
fn http_host_is_loopback(rest: &str) -> bool {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..end).unwrap_or("");
    if authority.is_empty()
        || authority.contains(['@', '%', '\\'])
        || authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, port)) = v6.split_once(']') else {
            return false;
        };
        return (port.is_empty() || port.starts_with(':'))
            && addr.parse::<std::net::Ipv6Addr>().is_ok_and(|a| {
                a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            });
    }
    // host[:port]; a second colon is an IPv6 address without brackets.
    let mut parts = authority.split(':');
    let host = parts.next().unwrap_or("");
    if parts.count() > 1 {
        return false;
    }
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            dir: "/var/cache/porthole".into(),
            fresh_secs: 60,
            stale_secs: 24 * 3600,
            negative_secs: 30,
            max_entries: 10_000,
            max_bytes: 64 * 1024 * 1024,
            max_negative_entries: 1_000,
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            roots: vec![
                "/run/runc".into(),
                "/run/containerd/runc/default".into(),
                "/run/containerd/runc/k8s.io".into(),
                "/run/docker/runtime-runc/moby".into(),
            ],
            service_annotation: "io.porthole.service".into(),
            instance_annotation: "io.porthole.instance".into(),
        }
    }
}

impl Default for Session {
    fn default() -> Self {
        Session {
            keys_user: "porthole".into(),
            keys_command: "/usr/lib/porthole/porthole-keys".into(),
            account: "porthole-session".into(),
            fallback_shell: "/bin/sh".into(),
            sftp_server_paths: vec![
                "/usr/lib/openssh/sftp-server".into(),
                "/usr/libexec/sftp-server".into(),
                "/usr/lib/ssh/sftp-server".into(),
                "/usr/libexec/openssh/sftp-server".into(),
            ],
            sftp_binary: "/usr/lib/porthole/porthole-sftp".into(),
            sftp_prefer_image: false,
            state_dir: "/run/porthole".into(),
            picker_command: "/usr/lib/porthole/porthole-picker".into(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions_per_instance: 10,
            max_sessions_per_owner: 20,
            memory_reserve_mib: 32,
            max_duration_secs: 0,
            idle_timeout_secs: 3600,
            warn_before_secs: vec![600, 60],
            drain_notice_secs: vec![1800, 600, 60],
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            socket: "/dev/log".into(),
        }
    }
}

impl Config {
    /// Parses TOML text and checks the values (no file-safety checks).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            msg: e.to_string().trim_end().replace('\n', " "),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let cp = &self.control_plane;
        let scheme_ok = ["https://", "http://", "file:///"]
            .iter()
            .any(|s| cp.url.starts_with(s));
        if !scheme_ok {
            return Err(ConfigError::Invalid(format!(
                "control_plane.url {:?} must start with https://, http:// or file:///",
                cp.url
            )));
        }
        if let Some(why) = cp.insecure_http_refusal() {
            return Err(ConfigError::Invalid(why));
        }
        if cp.timeout_ms == 0 || cp.timeout_ms > 60_000 {
            return Err(ConfigError::Invalid(
                "control_plane.timeout_ms must be between 1 and 60000".into(),
            ));
        }
        if cp.failure_backoff_secs > 300 {
            return Err(ConfigError::Invalid(
                "control_plane.failure_backoff_secs must be at most 300".into(),
            ));
        }
        if cp.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "control_plane.max_body_bytes must be at least 1024".into(),
            ));
        }
        let c = &self.cache;
        if c.max_entries < 10 || c.max_entries > 10_000_000 {
            return Err(ConfigError::Invalid(
                "cache.max_entries must be between 10 and 10000000".into(),
            ));
        }
        if c.max_negative_entries < 10 || c.max_negative_entries > c.max_entries {
            return Err(ConfigError::Invalid(
                "cache.max_negative_entries must be at least 10 and at most cache.max_entries"
                    .into(),
            ));
        }
        // Room for two answers of the largest size: a fresh answer is never
        // evicted to make room for itself.
        if c.max_bytes
            < cp.max_body_bytes
                .saturating_mul(2)
                .saturating_add(64 * 1024)
        {
            return Err(ConfigError::Invalid(
                "cache.max_bytes must be at least twice control_plane.max_body_bytes plus 64 KiB"
                    .into(),
            ));
        }
        let mut paths: Vec<(&str, &Path)> = vec![
            ("cache.dir", &self.cache.dir),
            ("log.socket", &self.log.socket),
            ("session.state_dir", &self.session.state_dir),
            ("session.keys_command", &self.session.keys_command),
            ("session.picker_command", &self.session.picker_command),
            ("session.sftp_binary", &self.session.sftp_binary),
        ];
        if let Some(t) = &cp.token_file {
            paths.push(("control_plane.token_file", t));
        }
        for r in &self.runtime.roots {
            paths.push(("runtime.roots", r));
        }
        for (key, p) in paths {
            if !p.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{key} {} must be an absolute path",
                    p.display()
                )));
            }
        }
        if !self.session.fallback_shell.starts_with('/') {
            return Err(ConfigError::Invalid(
                "session.fallback_shell must be an absolute path".into(),
            ));
        }
        if self.runtime.service_annotation.is_empty() || self.runtime.instance_annotation.is_empty()
        {
            return Err(ConfigError::Invalid(
                "runtime annotations must not be empty".into(),
            ));
        }
        let t = &self.temporary;
        if t.start_timeout_secs == 0 || t.start_timeout_secs > 600 {
            return Err(ConfigError::Invalid(
                "temporary.start_timeout_secs must be between 1 and 600".into(),
            ));
        }
        if !t.runc.is_absolute() {
            return Err(ConfigError::Invalid(
                "temporary.runc must be an absolute path".into(),
            ));
        }
        self.fleet.validate()?;
        self.web.validate()?;
        self.recording.validate()
    }

    /// Loads the file at `path` after checking it is safe to trust.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_root_owned(path, MAX_CONFIG_BYTES).map_err(|e| match e {
            SecureReadError::Missing => ConfigError::Missing(path.to_owned()),
            SecureReadError::Unsafe(why) => ConfigError::Unsafe {
                path: path.to_owned(),
                why,
            },
            SecureReadError::Io(err) => ConfigError::Io {
                path: path.to_owned(),
                err,
            },
        })?;
        let text = String::from_utf8(text).map_err(|_| ConfigError::Parse {
            path: path.to_owned(),
            msg: "not UTF-8".into(),
        })?;
        Config::from_toml(&text, path)
    }
}

/// The `[log] socket` of the file at `path` even when the rest of it is
/// invalid, so that a hook refusing a broken configuration still reaches
/// the admin's log. Only a safe file (see [`read_root_owned`]) is read, and
/// only an absolute path is taken; `None` otherwise.
pub fn log_socket_hint(path: &Path) -> Option<PathBuf> {
    let text = String::from_utf8(read_root_owned(path, MAX_CONFIG_BYTES).ok()?).ok()?;
    let table = text.parse::<toml::Table>().ok()?;
    let socket = PathBuf::from(table.get("log")?.get("socket")?.as_str()?);
    socket.is_absolute().then_some(socket)
}

/// Why a root-owned file could not be trusted.
#[derive(Debug)]
pub enum SecureReadError {
    Missing,
    Unsafe(String),
    Io(std::io::Error),
}

impl std::fmt::Display for SecureReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecureReadError::Missing => f.write_str("does not exist"),
            SecureReadError::Unsafe(why) => f.write_str(why),
            SecureReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Reads a file that must be a regular file owned by root, not writable by
/// group or others, in a directory with the same properties, at most `max`
/// bytes. Used for the config and the bearer-token file.
pub fn read_root_owned(path: &Path, max: u64) -> Result<Vec<u8>, SecureReadError> {
    read_checked(path, max, false)
}

fn read_checked(path: &Path, max: u64, secret: bool) -> Result<Vec<u8>, SecureReadError> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => SecureReadError::Missing,
            Some(libc::ELOOP) => SecureReadError::Unsafe("it is a symbolic link".into()),
            _ => SecureReadError::Io(e),
        })?;
    let meta = file.metadata().map_err(SecureReadError::Io)?;
    check_root_owned(&meta, "file")?;
    // Checked on the open descriptor, like the owner: what is read is
    // what was checked.
    if secret && meta.mode() & 0o077 != 0 {
        return Err(SecureReadError::Unsafe(format!(
            "file is readable by group or others (mode {:o}); it must be 0600",
            meta.mode() & 0o7777
        )));
    }
    if !meta.file_type().is_file() {
        return Err(SecureReadError::Unsafe("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(SecureReadError::Unsafe(format!("larger than {max} bytes")));
    }
    if let Some(dir) = path.parent() {
        let dmeta = std::fs::metadata(dir).map_err(SecureReadError::Io)?;
        check_root_owned(&dmeta, "directory")?;
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(SecureReadError::Io)?;
    if buf.len() as u64 > max {
        return Err(SecureReadError::Unsafe(format!("larger than {max} bytes")));
    }
    Ok(buf)
}

/// Like [`read_root_owned`], for secrets (the user CA's private key): the
/// file must also be unreadable by group and others (0600 or stricter).
pub fn read_root_only(path: &Path, max: u64) -> Result<Vec<u8>, SecureReadError> {
    read_checked(path, max, true)
}

fn check_root_owned(meta: &std::fs::Metadata, what: &str) -> Result<(), SecureReadError> {
    if meta.uid() != 0 {
        return Err(SecureReadError::Unsafe(format!(
            "{what} is owned by uid {}, not root",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(SecureReadError::Unsafe(format!(
            "{what} is writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_defaults() {
        let cfg = Config::from_toml(
            "[control_plane]\nurl = \"https://api.example.com\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(cfg.control_plane.url, "https://api.example.com");
        assert_eq!(cfg.control_plane.timeout_ms, 3000);
        assert_eq!(cfg.cache, Cache::default());
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        assert_eq!(
            Config::from_toml("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = Config::from_toml("[cache]\nfresh_sec = 5\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("fresh_sec"), "{e}");
        let e =
            Config::from_toml("[control_plane]\nurl = \"ftp://x\"\n", Path::new("x")).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)));
        let e = Config::from_toml("[control_plane]\ntimeout_ms = 0\n", Path::new("x")).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)));
        let e = Config::from_toml("[cache]\ndir = \"rel\"\n", Path::new("x")).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)));
    }

    #[test]
    fn cache_caps_have_sane_defaults_and_bounds() {
        let c = Cache::default();
        assert_eq!(
            (c.max_entries, c.max_negative_entries, c.max_bytes),
            (10_000, 1_000, 64 * 1024 * 1024)
        );
        for bad in [
            "[cache]\nmax_entries = 0\n",
            "[cache]\nmax_negative_entries = 0\n",
            "[cache]\nmax_entries = 100\nmax_negative_entries = 101\n",
            // Not even two answers of the largest accepted size.
            "[cache]\nmax_bytes = 1048576\n",
        ] {
            let e = Config::from_toml(bad, Path::new("x")).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid(_)), "{bad}: {e}");
        }
        let ok = "[control_plane]\nmax_body_bytes = 1024\n[cache]\nmax_entries = 10\n\
                  max_negative_entries = 10\nmax_bytes = 67584\n";
        assert!(Config::from_toml(ok, Path::new("x")).is_ok());
    }

    #[test]
    fn plain_http_with_a_token_is_refused_unless_loopback_or_allowed() {
        let cfg = |url: &str, token: bool, allow: bool| {
            let mut t = format!("[control_plane]\nurl = \"{url}\"\n");
            if token {
                t.push_str("token_file = \"/etc/porthole/token\"\n");
            }
            if allow {
                t.push_str("allow_insecure_http = true\n");
            }
            Config::from_toml(&t, Path::new("x"))
        };
        for url in [
            "http://api.example.com",
            "http://10.0.0.5:8080/base",
            "http://127.0.0.1.nip.io",
            "http://127.1",
            "http://127.0.0.1@api.example.com",
            "http://api.example.com#@127.0.0.1",
            "http://api.example.com/@127.0.0.1",
            "http://[::2]:80",
            "http://localhost.example.com",
            "http://%31%32%37.0.0.1",
            "http://",
        ] {
            let e = cfg(url, true, false).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid(_)), "{url}: {e}");
            let text = e.to_string();
            assert!(
                text.contains("plain http:// to a host that is not loopback")
                    && text.contains("bearer token would cross the network in clear")
                    && text.contains("allow_insecure_http = true"),
                "{url}: {text}"
            );
            let ok = cfg(url, true, true);
            assert!(ok.is_ok() || url == "http://", "{url}: {ok:?}");
            assert!(
                cfg(url, false, false).is_ok(),
                "{url}: no token, nothing to leak"
            );
        }
        for url in [
            "http://127.0.0.1:8080",
            "http://127.9.8.7/base/",
            "http://localhost:1234",
            "http://LOCALHOST",
            "http://[::1]:8080/x",
            "http://[::ffff:127.0.0.1]",
            "https://api.example.com",
        ] {
            assert!(cfg(url, true, false).is_ok(), "{url}");
        }
    }

    #[test]
    fn fleet_defaults_to_a_node_without_hops() {
        let cfg = Config::from_toml("", Path::new("x")).unwrap();
        assert_eq!(cfg.fleet.role, Role::Node);
        assert_eq!((cfg.fleet.node_port, cfg.fleet.hop_timeout_ms), (22, 2000));
        assert!(cfg.fleet.trusted_user_ca.is_none() && cfg.fleet.user_ca_key.is_none());
        let node = Config::from_toml(
            "[fleet]\nrole = \"node\"\ntrusted_user_ca = \"/etc/porthole/user_ca.pub\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            node.fleet.trusted_user_ca.as_deref(),
            Some(Path::new("/etc/porthole/user_ca.pub"))
        );
    }

    #[test]
    fn front_door_needs_both_cas_and_nodes_hold_no_private_key() {
        let front = "[fleet]\nrole = \"front_door\"\nuser_ca_key = \"/etc/porthole/user_ca\"\n\
                     host_ca_public_key = \"/etc/porthole/host_ca.pub\"\nnode_port = 2222\n\
                     hop_timeout_ms = 1500\nsource_address = [\"10.0.0.2\", \"fd00::2\"]\n";
        let cfg = Config::from_toml(front, Path::new("x")).unwrap();
        assert_eq!(cfg.fleet.role, Role::FrontDoor);
        assert!(cfg.fleet.role.hops());
        assert_eq!(cfg.fleet.node_port, 2222);
        assert_eq!(cfg.fleet.source_addresses().len(), 2);
        let both = front.replace("front_door", "both")
            + "trusted_user_ca = \"/etc/porthole/user_ca.pub\"\n";
        assert_eq!(
            Config::from_toml(&both, Path::new("x")).unwrap().fleet.role,
            Role::Both
        );
        let err = |t: &str| match Config::from_toml(t, Path::new("x")) {
            Err(ConfigError::Invalid(m)) => m,
            other => panic!("{t}: {other:?}"),
        };
        for (text, says) in [
            (
                "[fleet]\nuser_ca_key = \"/etc/porthole/user_ca\"\n".to_owned(),
                "a node never holds the user CA's private key",
            ),
            (
                "[fleet]\nrole = \"front_door\"\nhost_ca_public_key = \"/h.pub\"\n".into(),
                "fleet.user_ca_key is not set",
            ),
            (
                "[fleet]\nrole = \"both\"\nuser_ca_key = \"/u\"\n".into(),
                "never trusts a node's key on first use",
            ),
            (
                front.to_owned() + "trusted_user_ca = \"/u.pub\"\n",
                "accepts no hops",
            ),
            (
                front.replace("2222", "0"),
                "fleet.node_port must be between 1 and 65535",
            ),
            (
                front.replace("1500", "0"),
                "fleet.hop_timeout_ms must be between",
            ),
            (
                front.replace("10.0.0.2", "10.0.0.0/8"),
                "is not an IP address",
            ),
            (
                front.replace("/etc/porthole/user_ca", "user_ca"),
                "must be an absolute path",
            ),
        ] {
            let m = err(&text);
            assert!(m.contains(says), "{text}: {m}");
        }
        let e = Config::from_toml("[fleet]\nrole = \"gateway\"\n", Path::new("x")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = Config::from_toml("[fleet]\nnode_port = 70000\n", Path::new("x")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    }

    #[test]
    fn secrets_must_be_unreadable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "s").unwrap();
        if nix::unistd::geteuid().is_root() {
            for mode in [0o644, 0o640, 0o604] {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
                assert!(read_root_owned(&p, 10).is_ok());
                assert!(
                    matches!(read_root_only(&p, 10), Err(SecureReadError::Unsafe(_))),
                    "{mode:o}"
                );
            }
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(read_root_only(&p, 10).unwrap(), b"s");
        }
    }

    #[test]
    fn unsafe_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = dir.path().join("porthole.toml");
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        if nix::unistd::geteuid().is_root() {
            assert!(matches!(Config::load(&p), Err(ConfigError::Unsafe { .. })));
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(Config::load(&p).is_ok());
            let link = dir.path().join("link.toml");
            std::os::unix::fs::symlink(&p, &link).unwrap();
            assert!(matches!(
                Config::load(&link),
                Err(ConfigError::Unsafe { .. })
            ));
            std::os::unix::fs::chown(&p, Some(1), None).unwrap();
            assert!(matches!(Config::load(&p), Err(ConfigError::Unsafe { .. })));
        }
        assert!(matches!(
            Config::load(&dir.path().join("absent.toml")),
            Err(ConfigError::Missing(_))
        ));
    }
}
