//! End-to-end test harness: a real sshd in a private mount namespace on a
//! loopback port, the real `ssh` client, a real HTTP control plane on
//! 127.0.0.1, a syslog socket, and real runc busybox containers.
//!
//! Nothing on the host is modified: sshd sees a copy of /etc (with our
//! passwd/group entries, nsswitch.conf, ld.so.cache, host keys, drop-in and
//! porthole.toml) bind-mounted over /etc, a per-test directory over /run
//! (privilege-separation dir, utmp) and per-test copies over
//! /var/log/{wtmp,btmp,lastlog}, all inside its own mount namespace.
//! Everything started is stopped when the [`TestHost`] (or [`Instance`]) is
//! dropped, also when the test panics. Set `PORTHOLE_KEEP_TEST_DIR=1` to keep
//! the per-test directory (`<target>/e2e/<name>-<pid>-<n>`) for debugging.

#![allow(dead_code, unused_imports)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod container;
pub mod control_plane;
pub mod netns;
pub mod region;
pub mod ssh;
pub mod syslog;
pub mod util;
pub mod web;

pub use container::{Instance, InstanceOpts};
pub use control_plane::{v1_body, web_service, ControlPlane, KeySpec, Reply};
pub use ssh::{ClientKey, KeyKind, SshCmd, SshRun};
pub use syslog::LogEvent;

use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use syslog::SyslogCapture;

/// What the auth-probe ForceCommand prints: `porthole-auth-ok <USER>`.
pub const AUTH_PROBE_OK: &str = "porthole-auth-ok";
/// A plain local account with an authorized_keys file (anchor comparisons).
pub const PLAIN_USER: &str = "plainuser";
/// Environment variable that keeps the per-test directory.
pub const KEEP_ENV: &str = "PORTHOLE_KEEP_TEST_DIR";

/// What a successful `srv-*` login runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionMode {
    /// The shipped drop-in: ForceCommand `porthole-shell`, which is also the
    /// session account's login shell.
    PortholeShell,
    /// For authentication tests that must not depend on the session shell:
    /// login shell `/bin/sh`, ForceCommand `echo porthole-auth-ok $USER`.
    AuthProbe,
}

/// Where the keys hook gets its answers.
#[derive(Clone, Debug)]
pub enum KeysSource {
    /// The harness's HTTP [`ControlPlane`] (bearer token in a root:porthole
    /// 0640 file).
    ControlPlane,
    /// `file://<dir>/services`, filled with [`TestHost::write_service_file`].
    Files,
    /// Any URL (no token file).
    Url(String),
}

/// Options for [`TestHost::start`].
#[derive(Clone, Debug)]
pub struct TestHostOpts {
    /// Directory name prefix; default: the test's thread name.
    pub name: Option<String>,
    pub session: SessionMode,
    pub source: KeysSource,
    /// Bearer token written to the token file (and expected by the server).
    pub token: String,
    /// `("section.key", value)` overrides of porthole.toml, applied in order.
    pub config: Vec<(String, Value)>,
    /// Extra global lines for the test sshd_config (before Debian's own).
    pub sshd_lines: Vec<String>,
    /// Run sshd (and this host's `ssh` clients) in this network namespace
    /// of a [`netns::Fabric`]; sshd also listens on its address.
    pub netns: Option<netns::Spot>,
}

impl Default for TestHostOpts {
    fn default() -> Self {
        TestHostOpts {
            name: None,
            session: SessionMode::PortholeShell,
            source: KeysSource::ControlPlane,
            token: "porthole-test-token-0123456789".into(),
            config: Vec::new(),
            sshd_lines: Vec::new(),
            netns: None,
        }
    }
}

impl TestHostOpts {
    /// Session shell replaced by `echo porthole-auth-ok $USER`.
    pub fn auth_probe() -> Self {
        TestHostOpts {
            session: SessionMode::AuthProbe,
            ..TestHostOpts::default()
        }
    }

    pub fn name(mut self, n: &str) -> Self {
        self.name = Some(n.into());
        self
    }

    pub fn source(mut self, s: KeysSource) -> Self {
        self.source = s;
        self
    }

    /// Any porthole.toml key: `set("cache.fresh_secs", 1)`.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// `control_plane.timeout_ms`.
    pub fn timeout_ms(self, ms: u64) -> Self {
        self.set("control_plane.timeout_ms", ms)
    }

    pub fn sshd_line(mut self, line: &str) -> Self {
        self.sshd_lines.push(line.into());
        self
    }

    /// A host of its own on a private network (see [`netns`]).
    pub fn on(mut self, spot: &netns::Spot) -> Self {
        self.netns = Some(spot.clone());
        self
    }
}

/// Uids/gids of the accounts the harness adds (unused on the host).
#[derive(Clone, Copy, Debug)]
pub struct Ids {
    /// `porthole`: runs the keys hook, owns the cache.
    pub porthole: u32,
    /// `porthole-session`: the account every service name maps to.
    pub session: u32,
    /// `plainuser`.
    pub plain: u32,
}

/// One sshd with its own /etc, control plane, syslog socket and runc root.
pub struct TestHost {
    name: String,
    tag: String,
    dir: PathBuf,
    port: u16,
    ids: Ids,
    mode: SessionMode,
    token: String,
    config: Mutex<BTreeMap<String, BTreeMap<String, Value>>>,
    cp: Option<ControlPlane>,
    syslog: SyslogCapture,
    sshd: Option<Child>,
    sshd_ns: Option<String>,
    /// An open fd on sshd's mount namespace: while it is held the kernel
    /// cannot give the namespace's inode number to another test's sshd, so
    /// the "kill everything in this namespace" sweep never hits a stranger.
    sshd_ns_pin: Option<fs::File>,
    sshd_lines: Vec<String>,
    keys: Mutex<HashMap<KeyKind, ClientKey>>,
    netns: Option<netns::Spot>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `<target>/<profile>` where cargo put the binaries under test.
fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_porthole-keys"))
        .parent()
        .expect("bin dir")
        .to_owned()
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl TestHost {
    /// Builds the per-test directory and starts sshd (see the module docs).
    pub fn start(opts: TestHostOpts) -> TestHost {
        let name = sanitize(
            opts.name
                .clone()
                .or_else(|| std::thread::current().name().map(str::to_owned))
                .as_deref()
                .unwrap_or("test"),
        );
        let tag = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let e2e = e2e_base();
        let dir = e2e.join(format!("{name}-{tag}"));
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("remove stale test dir");
        }
        util::mkdir(&dir, 0o755, 0, 0);
        check_safe_path(&dir);
        assert!(
            dir.join("log.sock").as_os_str().len() < 100,
            "test dir path {} too long for a unix socket; use a shorter CARGO_TARGET_DIR or test name",
            dir.display()
        );

        let ids = pick_ids();
        let d = |p: &str| dir.join(p);
        util::run_ok(Command::new("cp").arg("-a").arg("/etc").arg(d("etc")));
        for sub in [
            "bin", "lib", "home", "bundles", "run", "run/sshd", "varlog", "users",
        ] {
            util::mkdir(&d(sub), 0o755, 0, 0);
        }
        util::mkdir(&d("keys"), 0o700, 0, 0);
        util::mkdir(&d("runc"), 0o700, 0, 0);
        util::mkdir(&d("cache"), 0o700, ids.porthole, ids.porthole);
        for f in ["wtmp", "btmp", "lastlog"] {
            util::write_file(&d("varlog").join(f), "", 0o640, 0, 0);
        }

        let shell_path = match opts.session {
            SessionMode::PortholeShell => format!("{}/bin/porthole-shell", dir.display()),
            SessionMode::AuthProbe => "/bin/sh".to_owned(),
        };
        edit_accounts(&dir, ids, &shell_path);
        edit_nsswitch(&dir);
        install_binaries(&dir, ids);
        build_ld_cache(&dir);
        host_keys(&dir);
        install_drop_in(&dir, opts.session);

        // porthole.toml and the token file.
        util::mkdir(&d("etc/porthole"), 0o755, 0, 0);
        let token_file = d("etc/porthole/token");
        util::write_file(
            &token_file,
            format!("{}\n", opts.token),
            0o640,
            0,
            ids.porthole,
        );

        let syslog = SyslogCapture::bind(&d("log.sock"));
        let cp = match opts.source {
            KeysSource::ControlPlane => Some(ControlPlane::start(&opts.token)),
            _ => None,
        };
        let mut config: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        let mut put = |k: &str, v: Value| set_key(&mut config, k, v);
        match &opts.source {
            KeysSource::ControlPlane => {
                put("control_plane.url", cp.as_ref().expect("cp").url().into());
                put(
                    "control_plane.token_file",
                    token_file.display().to_string().into(),
                );
            }
            KeysSource::Files => {
                util::mkdir(&d("services"), 0o755, 0, 0);
                put(
                    "control_plane.url",
                    format!("file://{}", d("services").display()).into(),
                );
            }
            KeysSource::Url(u) => put("control_plane.url", u.clone().into()),
        }
        put("cache.dir", d("cache").display().to_string().into());
        // Session recordings stay in the test directory (made 0700 by the
        // shell on first use), never the host's /var/log.
        put(
            "recording.dir",
            d("recordings").display().to_string().into(),
        );
        put("log.socket", d("log.sock").display().to_string().into());
        put(
            "runtime.roots",
            Value::Array(vec![d("runc").display().to_string().into()]),
        );
        // Session supervisors run the installed hook to notice revoked keys.
        put(
            "session.keys_command",
            d("bin/porthole-keys").display().to_string().into(),
        );
        // The menu of `ssh srv@host` (issue 20).
        put(
            "session.picker_command",
            d("bin/porthole-picker").display().to_string().into(),
        );
        put(
            "session.sftp_binary",
            d("bin/porthole-sftp").display().to_string().into(),
        );
        for (k, v) in &opts.config {
            put(k, v.clone());
        }

        let mut host = TestHost {
            name,
            tag,
            dir,
            port: 0,
            ids,
            mode: opts.session,
            token: opts.token.clone(),
            config: Mutex::new(config),
            cp,
            syslog,
            sshd: None,
            sshd_ns: None,
            sshd_ns_pin: None,
            sshd_lines: opts.sshd_lines.clone(),
            keys: Mutex::new(HashMap::new()),
            netns: opts.netns.clone(),
        };
        host.write_config();
        util::mkdir(&host.plain_home(), 0o755, ids.plain, ids.plain);
        util::mkdir(&host.plain_home().join(".ssh"), 0o700, ids.plain, ids.plain);
        host.start_sshd();
        host
    }

    // ----- paths and identities -------------------------------------------

    /// The per-test directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<pid>-<n>`, unique per TestHost in this machine's lifetime of pids.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// sshd's loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn ids(&self) -> Ids {
        self.ids
    }

    pub fn mode(&self) -> SessionMode {
        self.mode
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// `<dir>/bin`: where porthole-keys and porthole-shell are installed.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// `runtime.roots[0]`: pass to `runc --root`.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// `recording.dir`: where the session shell writes recordings.
    pub fn recordings_dir(&self) -> PathBuf {
        self.dir.join("recordings")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// The porthole.toml sshd's children see as /etc/porthole/porthole.toml.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("etc/porthole/porthole.toml")
    }

    pub fn sshd_log_path(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    pub fn plain_home(&self) -> PathBuf {
        self.dir.join("users").join(PLAIN_USER)
    }

    // ----- control plane and configuration --------------------------------

    /// The HTTP control plane (only with [`KeysSource::ControlPlane`]).
    pub fn control_plane(&self) -> &ControlPlane {
        self.cp
            .as_ref()
            .expect("this TestHost has no HTTP control plane (KeysSource)")
    }

    /// Writes `<dir>/services/<service>.json` for [`KeysSource::Files`].
    pub fn write_service_file(&self, service: &str, body: &Value) {
        let dir = self.dir.join("services");
        assert!(dir.is_dir(), "this TestHost does not use KeysSource::Files");
        util::write_file(
            &dir.join(format!("{service}.json")),
            body.to_string(),
            0o644,
            0,
            0,
        );
    }

    /// Changes one porthole.toml key (`"cache.fresh_secs"`) and rewrites the
    /// file atomically; the next hook call reads it.
    pub fn set_config(&self, key: &str, value: impl Into<Value>) {
        set_key(&mut self.config.lock().unwrap(), key, value.into());
        self.write_config();
    }

    /// The current porthole.toml text.
    pub fn config_text(&self) -> String {
        render_toml(&self.config.lock().unwrap())
    }

    fn write_config(&self) {
        let path = self.config_path();
        let tmp = path.with_extension("toml.tmp");
        util::write_file(&tmp, self.config_text(), 0o644, 0, 0);
        fs::rename(&tmp, &path).expect("install porthole.toml");
    }

    // ----- logs ---------------------------------------------------------------

    /// Every JSON event that reached the syslog socket so far.
    pub fn events(&self) -> Vec<LogEvent> {
        self.syslog.events()
    }

    /// Every raw syslog line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.syslog.lines()
    }

    pub fn wait_event(
        &self,
        pred: impl Fn(&LogEvent) -> bool,
        timeout: Duration,
    ) -> Option<LogEvent> {
        self.syslog.wait_event(pred, timeout)
    }

    /// Like [`wait_event`](Self::wait_event), panicking with every event seen.
    pub fn expect_event(
        &self,
        what: &str,
        pred: impl Fn(&LogEvent) -> bool,
        timeout: Duration,
    ) -> LogEvent {
        match self.wait_event(pred, timeout) {
            Some(e) => e,
            None => panic!(
                "no syslog event {what} within {timeout:?}; got:\n{}",
                self.log_lines().join("\n")
            ),
        }
    }

    /// `keys.decision` events about `service`, in order.
    pub fn decisions(&self, service: &str) -> Vec<LogEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.name() == "keys.decision" && e.str("service") == Some(service))
            .collect()
    }

    /// sshd's log (stderr of `sshd -D -e`, LogLevel VERBOSE).
    pub fn sshd_log(&self) -> String {
        fs::read_to_string(self.sshd_log_path()).unwrap_or_default()
    }

    /// Waits until sshd's log contains `needle`.
    pub fn wait_sshd_log(&self, needle: &str, timeout: Duration) -> bool {
        util::wait_for(timeout, || self.sshd_log().contains(needle).then_some(())).is_some()
    }

    // ----- clients -----------------------------------------------------------

    /// This test's key of `kind` (generated on first use).
    pub fn key(&self, kind: KeyKind) -> ClientKey {
        let mut keys = self.keys.lock().unwrap();
        keys.entry(kind)
            .or_insert_with(|| ssh::keygen(&self.dir.join("keys"), kind, kind.label()))
            .clone()
    }

    /// A further, distinct key (`label` names the file; unique per test).
    pub fn new_key(&self, kind: KeyKind, label: &str) -> ClientKey {
        ssh::keygen(&self.dir.join("keys"), kind, label)
    }

    /// A builder for one real `ssh` run against this sshd.
    pub fn ssh_cmd(&self, user: &str, key: &ClientKey) -> SshCmd {
        let c = SshCmd::new(self.port, user, &key.path);
        match &self.netns {
            Some(spot) => c.nsenter(spot.nsenter_args()),
            None => c,
        }
    }

    /// This host's place on a private network, if it has one.
    pub fn spot(&self) -> Option<&netns::Spot> {
        self.netns.as_ref()
    }

    /// `ssh -l user -i key … 127.0.0.1 args…` with a 30 s guard.
    pub fn ssh(&self, user: &str, key: &ClientKey, args: &[&str]) -> SshRun {
        self.ssh_cmd(user, key).args(args).run()
    }

    /// Adds `key` to plainuser's authorized_keys.
    pub fn authorize_plainuser(&self, key: &ClientKey) {
        let ak = self.plain_home().join(".ssh/authorized_keys");
        let mut text = fs::read_to_string(&ak).unwrap_or_default();
        text.push_str(&key.public_line);
        text.push('\n');
        util::write_file(&ak, text, 0o600, self.ids.plain, self.ids.plain);
    }

    // ----- inside sshd's namespace ------------------------------------------

    /// sshd's pid (the listener).
    pub fn sshd_pid(&self) -> u32 {
        self.sshd.as_ref().expect("sshd running").id()
    }

    /// Runs a command in sshd's mount namespace (sees the test /etc and /run).
    pub fn in_ns(&self, args: &[&str]) -> Output {
        let mut c = Command::new("nsenter");
        c.arg("-t").arg(self.sshd_pid().to_string()).arg("-m");
        if self.netns.is_some() {
            // A host on a private network: its network too.
            c.arg("-n");
        }
        c.arg("--");
        c.args(args);
        util::run_with_timeout(&mut c, None, Duration::from_secs(30)).output
    }

    /// `sshd -f /etc/ssh/sshd_config <args>` against the test config
    /// (e.g. `["-t"]`, `["-T", "-C", "user=srv-abc123,host=h,addr=127.0.0.1"]`).
    pub fn sshd_test(&self, args: &[&str]) -> Output {
        let mut all = vec!["/usr/sbin/sshd", "-f", "/etc/ssh/sshd_config"];
        all.extend_from_slice(args);
        self.in_ns(&all)
    }

    /// Runs the installed keys hook as sshd would (user `porthole`, in the
    /// namespace), e.g. `["srv-abc123", fp, type, b64]`; for timings.
    pub fn run_keys_hook(&self, args: &[&str]) -> util::Timed {
        let bin = self.bin_dir().join("porthole-keys");
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.sshd_pid().to_string())
            .arg("-m")
            .arg("--");
        c.args([
            "setpriv",
            "--reuid=porthole",
            "--regid=porthole",
            "--clear-groups",
        ]);
        c.arg(&bin).args(args);
        c.env_clear();
        util::run_with_timeout(&mut c, None, Duration::from_secs(30))
    }

    // ----- sshd lifecycle -------------------------------------------------------

    fn write_sshd_config(&self, port: u16) {
        let path = self.dir.join("etc/ssh/sshd_config");
        let debian = fs::read_to_string("/etc/ssh/sshd_config").expect("read sshd_config");
        let mut text = format!(
            "# --- porthole e2e harness: test-only settings, read first ---\n\
             Port {port}\n\
             ListenAddress 127.0.0.1\n\
             PidFile {}/sshd.pid\n\
             LogLevel VERBOSE\n\
             # Parallel-login tests open more than 10 unauthenticated connections.\n\
             MaxStartups 200\n",
            self.dir.display()
        );
        if let Some(spot) = &self.netns {
            text.push_str(&format!("ListenAddress {}\n", spot.addr));
        }
        for l in &self.sshd_lines {
            text.push_str(l);
            text.push('\n');
        }
        text.push_str("# --- Debian's sshd_config ---\n");
        text.push_str(&debian);
        util::write_file(&path, text, 0o644, 0, 0);
    }

    fn start_sshd(&mut self) {
        const SCRIPT: &str = r#"set -e
d="$1"
mount -n --bind "$d/run" /run
mount -n --bind "$d/etc" /etc
for f in wtmp btmp lastlog; do
  if [ -f "/var/log/$f" ]; then mount -n --bind "$d/varlog/$f" "/var/log/$f"; fi
done
exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config
"#;
        let own_ns = util::mnt_ns(std::process::id());
        for attempt in 0..5 {
            let port = free_port();
            self.write_sshd_config(port);
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.sshd_log_path())
                .expect("sshd.log");
            let mut start = match &self.netns {
                Some(spot) => {
                    let mut c = Command::new("nsenter");
                    c.args(spot.nsenter_args()).arg("unshare");
                    c
                }
                None => Command::new("unshare"),
            };
            let spot = self.netns.clone();
            let banner = move || match &spot {
                Some(s) => s.on_net(move || ssh_banner(port)),
                None => ssh_banner(port),
            };
            let mut child = start
                .args(["-m", "--propagation", "private", "sh", "-c", SCRIPT, "sh"])
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("start unshare/sshd");
            let up = util::wait_for(Duration::from_secs(15), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                banner().then_some(true)
            });
            match up {
                Some(true) => {
                    let ns = util::mnt_ns(child.id());
                    assert!(
                        ns.is_some() && ns != own_ns,
                        "sshd is not in a private mount namespace"
                    );
                    self.port = port;
                    self.sshd_ns_pin = fs::File::open(format!("/proc/{}/ns/mnt", child.id())).ok();
                    // Re-read after pinning: the pin is only good if it is the same namespace.
                    assert_eq!(
                        util::mnt_ns(child.id()),
                        ns,
                        "sshd's namespace changed while pinning it"
                    );
                    self.sshd_ns = ns;
                    self.sshd = Some(child);
                    return;
                }
                Some(false) => {
                    let _ = child.wait();
                    let log = self.sshd_log();
                    if log.contains("Address already in use") && attempt < 4 {
                        continue;
                    }
                    panic!("sshd exited at start:\n{log}");
                }
                None => {
                    util::kill(-(child.id() as i32), libc::SIGKILL);
                    let _ = child.wait();
                    panic!(
                        "sshd did not accept on 127.0.0.1:{port} within 15 s:\n{}",
                        self.sshd_log()
                    );
                }
            }
        }
    }

    /// Stops sshd and starts it again (re-reads the test /etc; new port).
    pub fn restart_sshd(&mut self) {
        self.stop_sshd();
        self.start_sshd();
    }

    /// Kills sshd and every process in its mount namespace (connection
    /// handlers, hooks, sessions), then reaps it.
    pub fn stop_sshd(&mut self) {
        let Some(mut child) = self.sshd.take() else {
            return;
        };
        let own_ns = util::mnt_ns(std::process::id());
        util::kill(-(child.id() as i32), libc::SIGKILL);
        if let Some(ns) = self.sshd_ns.take().filter(|n| Some(n) != own_ns.as_ref()) {
            for _ in 0..500 {
                let pids = util::pids_in_mnt_ns(&ns);
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    util::kill(p as i32, libc::SIGKILL);
                }
                let _ = child.try_wait();
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        self.sshd_ns_pin = None;
    }

    /// Kills and deletes every container left in this test's runc root.
    fn sweep_containers(&self) {
        let root = self.runc_root();
        let out = container::runc(&root, &["list", "-q"]);
        for id in util::lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
            let _ = container::runc(&root, &["delete", "--force", id]);
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        self.stop_sshd();
        self.sweep_containers();
        if let Some(cp) = &self.cp {
            cp.stop();
        }
        let keep = std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty() && v != "0");
        if panicking {
            let log = self.sshd_log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- {} failed; sshd.log tail:\n{}\n--- syslog:\n{}\n--- test dir {} {}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                self.log_lines().join("\n"),
                self.dir.display(),
                if keep {
                    "kept"
                } else {
                    "removed (set PORTHOLE_KEEP_TEST_DIR=1 to keep it)"
                }
            );
        }
        if !keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ----- setup steps ------------------------------------------------------------

fn sanitize(name: &str) -> String {
    let s: String = name
        .rsplit("::")
        .next()
        .unwrap_or(name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    if s.is_empty() {
        "test".into()
    } else {
        s
    }
}

/// Where the per-test directories go: `<target>/e2e` when every directory
/// above it is root-owned and not group/world-writable (what sshd demands
/// of an AuthorizedKeysCommand's path), else `/var/lib/porthole-e2e` (a
/// checkout under /tmp, as CI may use, would make sshd refuse the hook).
fn e2e_base() -> PathBuf {
    let target = profile_dir().parent().expect("target dir").join("e2e");
    let safe = |p: &Path| {
        p.ancestors().skip(1).all(|a| {
            fs::metadata(a)
                .map(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
                .unwrap_or(false)
        })
    };
    let base = if safe(&target) && target.as_os_str().len() < 48 {
        target
    } else {
        PathBuf::from("/var/lib/porthole-e2e")
    };
    if !base.is_dir() {
        fs::create_dir_all(&base).expect("create e2e dir");
        util::set_owner_mode(&base, 0o755, 0, 0);
    }
    base.canonicalize().expect("canonical e2e dir")
}

/// sshd refuses an AuthorizedKeysCommand with a group/world-writable or
/// non-root directory anywhere on its path.
fn check_safe_path(dir: &Path) {
    for p in dir.ancestors() {
        let m = fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        if m.uid() != 0 || m.mode() & 0o022 != 0 {
            panic!(
                "{} is owned by uid {} with mode {:o}: sshd refuses an AuthorizedKeysCommand \
                 below a directory that is not root-owned or is group/world-writable \
                 (\"Unsafe AuthorizedKeysCommand\"). Put CARGO_TARGET_DIR on a root-owned \
                 path without such directories (not under /tmp).",
                p.display(),
                m.uid(),
                m.mode() & 0o7777
            );
        }
    }
}

/// Three numbers in 900..999 free as both uid and gid on the host.
fn pick_ids() -> Ids {
    static IDS: OnceLock<Ids> = OnceLock::new();
    *IDS.get_or_init(|| {
        let used = |file: &str| -> HashSet<u32> {
            fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split(':').nth(2)?.parse().ok())
                .collect()
        };
        let (uids, gids) = (used("/etc/passwd"), used("/etc/group"));
        let free: Vec<u32> = (900..1000)
            .filter(|n| !uids.contains(n) && !gids.contains(n))
            .take(3)
            .collect();
        assert!(free.len() == 3, "no three free uids/gids in 900..999");
        Ids {
            porthole: free[0],
            session: free[1],
            plain: free[2],
        }
    })
}

fn append(path: &Path, text: &str) {
    let mut s = fs::read_to_string(path).unwrap_or_default();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(text);
    fs::write(path, s).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn edit_accounts(dir: &Path, ids: Ids, session_shell: &str) {
    let etc = dir.join("etc");
    let Ids {
        porthole: p,
        session: s,
        plain: u,
    } = ids;
    append(
        &etc.join("passwd"),
        &format!(
            "porthole:x:{p}:{p}:porthole keys hook:/nonexistent:/usr/sbin/nologin\n\
             porthole-session:x:{s}:{s}:porthole session:{home}:{session_shell}\n\
             {PLAIN_USER}:x:{u}:{u}:porthole test user:{plain}:/bin/sh\n",
            home = dir.join("home").display(),
            plain = dir.join("users").join(PLAIN_USER).display(),
        ),
    );
    append(
        &etc.join("group"),
        &format!("porthole:x:{p}:\nporthole-session:x:{s}:\n{PLAIN_USER}:x:{u}:\n"),
    );
    if etc.join("shadow").exists() {
        append(
            &etc.join("shadow"),
            &format!(
                "porthole:!:19000::::::\nporthole-session:!:19000::::::\n{PLAIN_USER}:*:19000:0:99999:7:::\n"
            ),
        );
    }
    if etc.join("gshadow").exists() {
        append(
            &etc.join("gshadow"),
            &format!("porthole:!::\nporthole-session:!::\n{PLAIN_USER}:!::\n"),
        );
    }
}

fn edit_nsswitch(dir: &Path) {
    let path = dir.join("etc/nsswitch.conf");
    let text = fs::read_to_string(&path).unwrap_or_default();
    let mut out = String::new();
    let (mut saw_passwd, mut saw_group) = (false, false);
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("passwd:") {
            out.push_str("passwd:         files porthole\n");
            saw_passwd = true;
        } else if t.starts_with("group:") {
            out.push_str("group:          files porthole\n");
            saw_group = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !saw_passwd {
        out.push_str("passwd:         files porthole\n");
    }
    if !saw_group {
        out.push_str("group:          files porthole\n");
    }
    util::write_file(&path, out, 0o644, 0, 0);
}

fn install_binaries(dir: &Path, ids: Ids) {
    let bin = dir.join("bin");
    let keys = bin.join("porthole-keys");
    fs::copy(env!("CARGO_BIN_EXE_porthole-keys"), &keys).expect("copy porthole-keys");
    util::set_owner_mode(&keys, 0o755, 0, 0);
    let picker = bin.join("porthole-picker");
    fs::copy(env!("CARGO_BIN_EXE_porthole-picker"), &picker).expect("copy porthole-picker");
    util::set_owner_mode(&picker, 0o755, 0, 0);
    let shell = bin.join("porthole-shell");
    fs::copy(env!("CARGO_BIN_EXE_porthole-shell"), &shell).expect("copy porthole-shell");
    util::set_owner_mode(&shell, 0o4750, 0, ids.session);
    // Root-owned and writable only by root, as the shell demands before
    // it copies it into a sealed memfd for an sftp session.
    let sftp = bin.join("porthole-sftp");
    fs::copy(env!("CARGO_BIN_EXE_porthole-sftp"), &sftp).expect("copy porthole-sftp");
    util::set_owner_mode(&sftp, 0o755, 0, 0);
    let so = dir.join("lib/libnss_porthole.so.2");
    fs::copy(nss_module(), &so).expect("copy libnss_porthole.so");
    util::set_owner_mode(&so, 0o644, 0, 0);
}

/// `libnss_porthole.so` of the same profile, built when absent or older
/// than its sources (integration tests of `porthole` do not build it).
pub fn nss_module() -> PathBuf {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        let profile = profile_dir();
        let so = profile.join("libnss_porthole.so");
        let root = manifest_dir();
        let built = fs::metadata(&so).and_then(|m| m.modified()).ok();
        let newest_src = [root.join("nss"), root.join("src/names.rs")]
            .iter()
            .filter_map(|p| newest_mtime(p))
            .max();
        let stale = match (built, newest_src) {
            (None, _) => true,
            (Some(b), Some(s)) => s > b,
            (Some(_), None) => false,
        };
        if stale {
            let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            c.current_dir(&root).args(["build", "-p", "nss_porthole"]);
            match profile.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => {}
                Some("release") => {
                    c.arg("--release");
                }
                Some(other) => {
                    c.args(["--profile", other]);
                }
            }
            c.arg("--target-dir")
                .arg(profile.parent().expect("target dir"));
            util::run_ok(&mut c);
        }
        assert!(
            so.is_file(),
            "{} missing after cargo build -p nss_porthole",
            so.display()
        );
        so
    })
    .clone()
}

fn newest_mtime(p: &Path) -> Option<std::time::SystemTime> {
    let m = fs::symlink_metadata(p).ok()?;
    if m.is_dir() {
        if p.file_name().is_some_and(|n| n == "target") {
            return None;
        }
        fs::read_dir(p)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| newest_mtime(&e.path()))
            .max()
    } else {
        m.modified().ok()
    }
}

/// `<dir>/etc/ld.so.cache` that also finds `<dir>/lib` (libnss_porthole.so.2).
/// ldconfig runs in its own mount namespace with a tmpfs over
/// /var/cache/ldconfig (it rewrites the host's aux-cache even with -i) and
/// with -X (it would otherwise touch symlinks in the host's library dirs).
fn build_ld_cache(dir: &Path) {
    let conf = dir.join("ld.so.conf");
    util::write_file(
        &conf,
        format!(
            "{}\ninclude /etc/ld.so.conf.d/*.conf\n",
            dir.join("lib").display()
        ),
        0o644,
        0,
        0,
    );
    let cache = dir.join("etc/ld.so.cache");
    util::run_ok(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(
                "set -e; mount -n -t tmpfs -o size=16m tmpfs /var/cache/ldconfig; \
                 exec ldconfig -X -C \"$1\" -f \"$2\"",
            )
            .arg("sh")
            .arg(&cache)
            .arg(&conf),
    );
    util::set_owner_mode(&cache, 0o644, 0, 0);
    let listed = util::run_ok(Command::new("ldconfig").arg("-p").arg("-C").arg(&cache));
    assert!(
        util::lossy(&listed.stdout).contains("libnss_porthole.so.2"),
        "ld.so.cache of the test does not list libnss_porthole.so.2"
    );
}

/// Fresh host keys for this test (never the host's).
fn host_keys(dir: &Path) {
    let ssh = dir.join("etc/ssh");
    for e in fs::read_dir(&ssh).expect("etc/ssh").filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().starts_with("ssh_host_") {
            fs::remove_file(e.path()).expect("remove copied host key");
        }
    }
    util::run_ok(Command::new("ssh-keygen").arg("-A").arg("-f").arg(dir));
}

/// The shipped drop-in with `/usr/lib/porthole/` → `<dir>/bin/` (and, for
/// [`SessionMode::AuthProbe`], the echo ForceCommand).
fn install_drop_in(dir: &Path, mode: SessionMode) {
    let shipped = util::read_to_string(&manifest_dir().join("sshd_config.d/10-porthole.conf"));
    let bin = format!("{}/", dir.join("bin").display());
    let mut text = shipped.replace("/usr/lib/porthole/", &bin);
    assert!(
        text.contains(&format!("{bin}porthole-keys")),
        "the shipped drop-in no longer names /usr/lib/porthole/porthole-keys"
    );
    if mode == SessionMode::AuthProbe {
        let mut replaced = false;
        text = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("ForceCommand ") {
                    replaced = true;
                    format!("\tForceCommand echo {AUTH_PROBE_OK} $USER")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        text.push('\n');
        assert!(replaced, "no ForceCommand line in the shipped drop-in");
    }
    let d = dir.join("etc/ssh/sshd_config.d");
    if !d.is_dir() {
        util::mkdir(&d, 0o755, 0, 0);
    }
    util::write_file(&d.join("10-porthole.conf"), text, 0o644, 0, 0);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// True when 127.0.0.1:port answers with an SSH banner.
fn ssh_banner(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8];
    let start = Instant::now();
    let mut got = 0;
    while got < buf.len() && start.elapsed() < Duration::from_secs(2) {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    &buf[..got] == b"SSH-2.0-"
}

fn set_key(config: &mut BTreeMap<String, BTreeMap<String, Value>>, key: &str, v: Value) {
    let (section, k) = key
        .split_once('.')
        .unwrap_or_else(|| panic!("config key {key:?} must be section.key"));
    let section = config.entry(section.to_owned()).or_default();
    // Null removes the key (back to the program's default).
    if v.is_null() {
        section.remove(k);
    } else {
        section.insert(k.to_owned(), v);
    }
}

fn render_toml(config: &BTreeMap<String, BTreeMap<String, Value>>) -> String {
    let mut out = String::from("# porthole e2e test configuration\n");
    for (section, keys) in config {
        out.push_str(&format!("\n[{section}]\n"));
        for (k, v) in keys {
            out.push_str(&format!("{k} = {}\n", toml_value(v)));
        }
    }
    out
}

fn toml_value(v: &Value) -> String {
    match v {
        // JSON string escapes are valid TOML basic-string escapes.
        Value::String(s) => serde_json::to_string(s).expect("string"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Null | Value::Object(_) => panic!("config value {v} has no TOML form here"),
    }
}

/// An auth-probe login (see [`SessionMode::AuthProbe`]) as `user` got in.
pub fn assert_accepted(r: &SshRun, user: &str) {
    assert!(
        r.success() && r.stdout_str().trim() == format!("{AUTH_PROBE_OK} {user}"),
        "login as {user} should be accepted:\n{}",
        r.describe()
    );
}

/// An auth-probe login as `user` was refused by sshd.
pub fn assert_refused(r: &SshRun, user: &str) {
    assert!(
        r.denied() && !r.stdout_str().contains(AUTH_PROBE_OK),
        "login as {user} should be refused with \"Permission denied\":\n{}",
        r.describe()
    );
}

#[cfg(test)]
mod harness_self_tests {
    use super::*;

    #[test]
    fn renders_toml_the_config_parser_accepts() {
        let mut c = BTreeMap::new();
        set_key(&mut c, "control_plane.url", "http://127.0.0.1:1".into());
        set_key(&mut c, "control_plane.timeout_ms", 500.into());
        set_key(
            &mut c,
            "runtime.roots",
            serde_json::json!(["/a \"b\"", "/c"]),
        );
        let text = render_toml(&c);
        let cfg = porthole::config::Config::from_toml(&text, Path::new("t")).unwrap();
        assert_eq!(cfg.control_plane.timeout_ms, 500);
        assert_eq!(cfg.runtime.roots[0], PathBuf::from("/a \"b\""));
    }
}
