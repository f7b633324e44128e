#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 8: what porthole adds to a login, measured side by side with the
//! tools users would otherwise reach for (a plain sshd user, `nsenter`,
//! `runc exec`, `cat`), in one run, anchor and subject interleaved sample
//! by sample so that drift on a shared machine hits both alike.
//!
//! These are `#[ignore]`d: they report, they never fail CI. `bench/run`
//! (the one command in the README) builds release binaries and runs
//! `bench_all`, which writes `BENCHMARKS.md` at the repository root.
//! `PORTHOLE_BENCH_QUICK=1` shrinks every sample count (development);
//! `PORTHOLE_BENCH_OUT=path` writes elsewhere; `PORTHOLE_BENCH_ONLY=login,pty,recording`
//! runs a subset.

mod common;

use common::*;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVICE: &str = "srv-bench";
const SLUG: &str = "aaaaa";
const OWNER: &str = "bench@example.com";
/// Marker after which a hand-written analysis in BENCHMARKS.md is kept.
const ANALYSIS_MARK: &str = "<!-- hand-written analysis below: bench/run keeps it -->";

fn quick() -> bool {
    std::env::var_os("PORTHOLE_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// `full` samples normally, `small` with PORTHOLE_BENCH_QUICK.
fn n(full: usize, small: usize) -> usize {
    if quick() {
        small
    } else {
        full
    }
}

fn wanted(name: &str) -> bool {
    match std::env::var("PORTHOLE_BENCH_ONLY") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|s| s.trim() == name),
        _ => true,
    }
}

// ----- statistics -------------------------------------------------------------

/// Samples of one figure (seconds, or any unit the caller picks).
#[derive(Clone, Debug, Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, v: f64) {
        self.0.push(v);
    }
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    }
    /// Nearest-rank percentile (p in 0..=100).
    fn pct(&self, p: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank.min(v.len()) - 1]
    }
    fn median(&self) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let m = v.len() / 2;
        if v.len() % 2 == 0 {
            (v[m - 1] + v[m]) / 2.0
        } else {
            v[m]
        }
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

fn ms(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

// ----- running things, timed ---------------------------------------------------

/// Runs `cmd` to completion (stdin from `input` or /dev/null, output
/// collected) and returns the wall time from spawn to reaped exit. The wait
/// blocks in waitpid: no polling quantum is added to any figure.
fn timed(cmd: &mut Command) -> (Duration, std::process::Output) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", util::show(cmd)));
    (t.elapsed(), out)
}

fn must(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        util::lossy(&out.stdout),
        util::lossy(&out.stderr)
    );
}

/// A command that runs in sshd's mount namespace (the test /etc and /run)
/// as `uid:gid`, entered in `pre_exec` so that no wrapper process (nsenter,
/// setpriv) is part of the time: the measured exec is the program itself.
fn as_user_in_ns(host: &TestHost, uid: u32, gid: u32, program: &Path) -> Command {
    let ns = fs::File::open(format!("/proc/{}/ns/mnt", host.sshd_pid())).expect("sshd mnt ns");
    let mut c = Command::new(program);
    c.env_clear();
    // SAFETY: only async-signal-safe syscalls between fork and exec; the
    // namespace fd is moved into the closure and stays open until exec.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0
                || libc::setgroups(1, &gid) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

// ----- the bench world -----------------------------------------------------------

struct World {
    // Dropped first: its `runc delete` must run while the host's runc root
    // still exists (fields drop in declaration order).
    inst: Instance,
    host: TestHost,
    key: ClientKey,
}

/// One bastion: a paid web service `srv-bench` whose key is also in
/// plainuser's authorized_keys (same key type for subject and anchor), one
/// busybox instance running as `app`, a cache that stays warm for the run.
fn world() -> World {
    let host = TestHost::start(
        TestHostOpts::default()
            .name("bench")
            .set("cache.fresh_secs", 3600)
            .set("limits.max_sessions_per_instance", 0)
            .set("limits.max_sessions_per_owner", 0)
            .set("limits.memory_reserve_mib", 0),
    );
    let key = host.key(KeyKind::Ed25519);
    host.control_plane()
        .set_body(SERVICE, &web_service(SERVICE, &[KeySpec::new(&key, OWNER)]));
    host.authorize_plainuser(&key);
    let inst = Instance::start(&host, SERVICE, SLUG, InstanceOpts::default().app_user());
    World { inst, host, key }
}

impl World {
    fn srv(&self) -> String {
        format!("{SERVICE}-{SLUG}")
    }

    fn ssh(&self, user: &str) -> SshCmd {
        self.host.ssh_cmd(user, &self.key)
    }

    fn login(&self, user: &str, args: &[&str]) -> Duration {
        let (d, out) = timed(&mut self.ssh(user).args(args).command());
        must(&format!("ssh {user} {args:?}"), &out);
        d
    }
}

// ----- 1. login ---------------------------------------------------------------------

struct Pair {
    subject: Samples,
    anchor: Samples,
}

fn bench_login(w: &World) -> Pair {
    let srv = w.srv();
    for _ in 0..3 {
        w.login(&srv, &["true"]);
        w.login(PLAIN_USER, &["true"]);
    }
    let mut p = Pair {
        subject: Samples::default(),
        anchor: Samples::default(),
    };
    for i in 0..n(100, 6) {
        // Alternate which goes first so neither always follows the other.
        if i % 2 == 0 {
            p.anchor.push(w.login(PLAIN_USER, &["true"]).as_secs_f64());
            p.subject.push(w.login(&srv, &["true"]).as_secs_f64());
        } else {
            p.subject.push(w.login(&srv, &["true"]).as_secs_f64());
            p.anchor.push(w.login(PLAIN_USER, &["true"]).as_secs_f64());
        }
    }
    p
}

// ----- 2. entering ---------------------------------------------------------------

struct Enter {
    porthole: Samples,
    nsenter: Samples,
    runc: Samples,
}

/// porthole-shell started the way sshd starts it for `ssh srv-…@host true`:
/// as the session account, argv `porthole-shell -c <ForceCommand>`, with
/// USER, SSH_ORIGINAL_COMMAND, SSH_USER_AUTH and SSH_CONNECTION.
fn shell_cmd(w: &World, auth_file: &Path, command: &str) -> Command {
    let ids = w.host.ids();
    let shell = w.host.bin_dir().join("porthole-shell");
    let mut c = as_user_in_ns(&w.host, ids.session, ids.session, &shell);
    c.arg0("porthole-shell")
        .arg("-c")
        .arg(&shell)
        .env("USER", w.srv())
        .env("LOGNAME", w.srv())
        .env("HOME", w.host.dir().join("home"))
        .env("PATH", "/usr/bin:/bin")
        .env("SSH_ORIGINAL_COMMAND", command)
        .env("SSH_USER_AUTH", auth_file)
        .env("SSH_CONNECTION", "127.0.0.1 40000 127.0.0.1 22");
    c
}

fn auth_file(w: &World) -> PathBuf {
    let p = w.host.dir().join("bench-user-auth");
    util::write_file(
        &p,
        format!("publickey {} {}\n", w.key.key_type, w.key.base64),
        0o600,
        w.host.ids().session,
        w.host.ids().session,
    );
    p
}

fn bench_enter(w: &World) -> Enter {
    // One real login fills the cache the shell reads.
    w.login(&w.srv(), &["true"]);
    let auth = auth_file(w);
    let pid = w.inst.init_pid().to_string();
    let root = w.host.runc_root();
    let porthole = || {
        let (d, out) = timed(&mut shell_cmd(w, &auth, "true"));
        must("porthole-shell true", &out);
        d.as_secs_f64()
    };
    let nsenter = || {
        let (d, out) = timed(Command::new("nsenter").args(["-t", &pid, "-a", "true"]));
        must("nsenter -a true", &out);
        d.as_secs_f64()
    };
    let runc = || {
        let (d, out) = timed(Command::new("runc").arg("--root").arg(&root).args([
            "exec",
            w.inst.id(),
            "true",
        ]));
        must("runc exec true", &out);
        d.as_secs_f64()
    };
    for _ in 0..3 {
        porthole();
        nsenter();
        runc();
    }
    // Development aid: one run of the shell under `strace -f -r -T`.
    if let Some(out) = std::env::var_os("PORTHOLE_BENCH_STRACE") {
        std::thread::sleep(Duration::from_millis(200));
        let shell = w.host.bin_dir().join("porthole-shell");
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(w.host.sshd_pid().to_string())
            .args(["-m", "--", "strace", "-f", "-tt", "-T", "-o"])
            .arg(&out)
            .args(["-u", "porthole-session", "env", "-i"])
            .arg(format!("USER={}", w.srv()))
            .arg("SSH_ORIGINAL_COMMAND=true")
            .arg(format!("SSH_USER_AUTH={}", auth.display()))
            .arg("SSH_CONNECTION=127.0.0.1 40000 127.0.0.1 22")
            .arg(&shell)
            .arg("-c")
            .arg(&shell);
        let (_, o) = timed(&mut c);
        must("strace porthole-shell", &o);
    }
    let mut e = Enter {
        porthole: Samples::default(),
        nsenter: Samples::default(),
        runc: Samples::default(),
    };
    // A pause before every sample: joining a v1 cgroup waits for an RCU
    // grace period unless another cgroup migration just happened, so
    // back-to-back samples would flatter whoever follows runc exec.
    let gap = Duration::from_millis(60);
    for i in 0..n(60, 5) {
        let order: [usize; 3] = match i % 3 {
            0 => [0, 1, 2],
            1 => [1, 2, 0],
            _ => [2, 0, 1],
        };
        for k in order {
            std::thread::sleep(gap);
            match k {
                0 => e.porthole.push(porthole()),
                1 => e.nsenter.push(nsenter()),
                _ => e.runc.push(runc()),
            }
        }
    }
    e
}

// ----- 3. keys hook -------------------------------------------------------------

struct Keys {
    warm: Samples,
    cold: Samples,
    cat1: Samples,
    stale: Samples,
    cat2: Samples,
}

fn bench_keys(w: &World) -> Keys {
    let ids = w.host.ids();
    let hook = w.host.bin_dir().join("porthole-keys");
    let call = || {
        let mut c = as_user_in_ns(&w.host, ids.porthole, ids.porthole, &hook);
        c.args([SERVICE, &w.key.fingerprint, &w.key.key_type, &w.key.base64]);
        let (d, out) = timed(&mut c);
        must("porthole-keys", &out);
        assert!(
            util::lossy(&out.stdout).contains(&w.key.base64),
            "the hook did not print the key: {}",
            util::lossy(&out.stdout)
        );
        (d.as_secs_f64(), out.stdout)
    };
    // The lines the hook prints, for `cat` to print the same.
    let (_, lines) = call();
    let lines_file = w.host.dir().join("bench-authorized-lines");
    util::write_file(&lines_file, &lines, 0o644, 0, 0);
    let cat = || {
        let mut c = as_user_in_ns(&w.host, ids.porthole, ids.porthole, Path::new("/bin/cat"));
        c.arg(&lines_file);
        let (d, out) = timed(&mut c);
        must("cat", &out);
        d.as_secs_f64()
    };
    let clear_cache = || {
        for e in fs::read_dir(w.host.cache_dir()).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                let _ = fs::remove_dir_all(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    };
    for _ in 0..5 {
        call();
        cat();
    }
    let mut k = Keys {
        warm: Samples::default(),
        cold: Samples::default(),
        cat1: Samples::default(),
        stale: Samples::default(),
        cat2: Samples::default(),
    };
    let before = w.host.control_plane().requests(SERVICE);
    let rounds = n(200, 10);
    for _ in 0..rounds {
        k.warm.push(call().0);
        k.cat1.push(cat());
        clear_cache();
        k.cold.push(call().0);
    }
    let asked = w.host.control_plane().requests(SERVICE) - before;
    assert_eq!(
        asked, rounds,
        "cold calls must each ask the API, warm ones never"
    );
    // Stale: the cache is older than fresh_secs and the API is down.
    w.host.set_config("cache.fresh_secs", 0);
    w.host.control_plane().stop();
    for _ in 0..3 {
        call();
    }
    for _ in 0..n(200, 10) {
        k.stale.push(call().0);
        k.cat2.push(cat());
    }
    w.host.control_plane().restart();
    w.host.set_config("cache.fresh_secs", 3600);
    k
}

// ----- 4. throughput ----------------------------------------------------------

const GIB: u64 = 1 << 30;

/// Pushes `total` bytes through `ssh user cat` and reads them back at the
/// same time; returns MB/s (10^6 bytes per second) of the round trip.
fn pipe_through(w: &World, user: &str, total: u64) -> f64 {
    let mut child = w.ssh(user).args(&["cat"]).spawn();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let t = Instant::now();
    let writer = std::thread::spawn(move || {
        let block: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        let mut left = total;
        while left > 0 {
            let k = left.min(block.len() as u64) as usize;
            stdin.write_all(&block[..k]).expect("write to ssh");
            left -= k as u64;
        }
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let r = stdout.read(&mut buf).expect("read from ssh");
        if r == 0 {
            break;
        }
        got += r as u64;
    }
    let st = child.wait().unwrap();
    let elapsed = t.elapsed().as_secs_f64();
    writer.join().unwrap();
    assert!(st.success(), "ssh {user} cat: {st}");
    assert_eq!(got, total, "ssh {user} cat returned {got} of {total} bytes");
    total as f64 / elapsed / 1e6
}

fn bench_throughput(w: &World) -> Pair {
    let srv = w.srv();
    let total = if quick() { 64 << 20 } else { GIB };
    pipe_through(w, &srv, 64 << 20);
    pipe_through(w, PLAIN_USER, 64 << 20);
    let mut p = Pair {
        subject: Samples::default(),
        anchor: Samples::default(),
    };
    for i in 0..n(5, 2) {
        if i % 2 == 0 {
            p.anchor.push(pipe_through(w, PLAIN_USER, total));
            p.subject.push(pipe_through(w, &srv, total));
        } else {
            p.subject.push(pipe_through(w, &srv, total));
            p.anchor.push(pipe_through(w, PLAIN_USER, total));
        }
    }
    p
}

// ----- 5. pty echo -----------------------------------------------------------------

/// A session with a remote pty running `cat`; each round trip is one byte
/// typed and its echo (by the remote terminal's line discipline) seen.
struct Echo {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::process::ChildStdout,
}

impl Echo {
    fn start(w: &World, user: &str) -> Echo {
        let mut child = w.ssh(user).tty(true).args(&["cat"]).spawn();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut e = Echo {
            child,
            stdin,
            stdout,
        };
        // The first echo proves the session is up; waiting for a byte no
        // notice contains (the recording notice comes first) keeps every
        // later round trip in step with its own echo.
        e.stdin.write_all(b"Z").unwrap();
        e.stdin.flush().unwrap();
        let mut seen = Vec::new();
        while !seen.contains(&b'Z') {
            let mut b = [0u8; 256];
            let r = e.stdout.read(&mut b).unwrap();
            assert!(r > 0, "session closed before its first echo");
            seen.extend_from_slice(&b[..r]);
        }
        e
    }

    fn round_trip(&mut self) -> f64 {
        let t = Instant::now();
        self.stdin.write_all(b"a").unwrap();
        self.stdin.flush().unwrap();
        let mut b = [0u8; 64];
        loop {
            let r = self.stdout.read(&mut b).unwrap();
            assert!(r > 0, "session closed while waiting for the echo");
            if b[..r].contains(&b'a') {
                break;
            }
        }
        t.elapsed().as_secs_f64()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench_pty(w: &World) -> Pair {
    let mut srv = Echo::start(w, &w.srv());
    let mut plain = Echo::start(w, PLAIN_USER);
    for _ in 0..20 {
        srv.round_trip();
        plain.round_trip();
    }
    // Development aid: the supervisor's system calls for a few round trips.
    if let Some(out) = std::env::var_os("PORTHOLE_BENCH_STRACE_PTY") {
        let sup = descendants(w.host.sshd_pid())
            .into_iter()
            .find(|(pid, c)| {
                c == "porthole-shell"
                    && ppid_comm(*pid)
                        .is_some_and(|(pp, _)| ppid_comm(pp).is_some_and(|(_, pc)| pc == "sshd"))
            })
            .expect("supervisor")
            .0;
        let mut st = Command::new("strace")
            .args(["-tt", "-T", "-o"])
            .arg(&out)
            .args(["-p", &sup.to_string()])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..20 {
            srv.round_trip();
            std::thread::sleep(Duration::from_millis(5));
        }
        util::kill(st.id() as i32, libc::SIGINT);
        let _ = st.wait();
    }
    let mut p = Pair {
        subject: Samples::default(),
        anchor: Samples::default(),
    };
    // Fewer than the 4095 characters a canonical-mode line holds.
    for i in 0..n(1000, 50) {
        if i % 2 == 0 {
            p.anchor.push(plain.round_trip());
            p.subject.push(srv.round_trip());
        } else {
            p.subject.push(srv.round_trip());
            p.anchor.push(plain.round_trip());
        }
    }
    p
}

// ----- 8. recording on vs off ------------------------------------------------

/// Subject: the session recorded (mode "output"); anchor: recording off;
/// both porthole sessions into the same instance, in the same run.
struct RecordingBench {
    echo: Pair,
    bulk: Pair,
    bulk_bytes: u64,
    /// In process: CPU seconds (all threads) per GiB of pty-like output
    /// through a `Recorder` into a file, and the wall seconds per GiB.
    cpu_per_gib: f64,
    wall_per_gib: f64,
}

/// Process CPU time (user + system, every thread), seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data filled by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to one rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// 256 MiB of 100-byte text lines, in 4 KiB reads as a pty gives them,
/// through the library's recorder into a file under the target directory.
fn recorder_in_process(w: &World) -> (f64, f64) {
    use porthole::config::{Recording, RecordingMode};
    use porthole::session::record;
    let dir = w.host.dir().join("rec-inproc");
    let cfg = Recording {
        dir: dir.clone(),
        max_bytes: 0,
        ..Recording::default()
    };
    let log = porthole::log::Logger::stderr("bench");
    let meta = record::Meta {
        session_id: "00000000000000be".into(),
        service: SERVICE.into(),
        instance: format!("{SERVICE}-{SLUG}"),
        owner: OWNER.into(),
        fingerprint: "SHA256:bench".into(),
        client: None,
        command: "cat".into(),
        size: Some((80, 24)),
        started_unix: 0,
    };
    let line = format!("{}\r\n", "porthole recording benchmark line 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRST");
    let chunk = line.repeat(4096 / line.len());
    let total: u64 = 256 << 20;
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let mut r = record::start(
        &cfg,
        &log,
        Path::new("/nonexistent"),
        RecordingMode::Output,
        &meta,
    )
    .expect("recorder");
    let mut sent = 0u64;
    while sent < total {
        r.output(chunk.as_bytes());
        r.tick();
        sent += chunk.len() as u64;
    }
    let f = r
        .finish(&record::EndInfo {
            reason: "exit".into(),
            exit_status: Some(0),
            signal: None,
            bytes_in: 0,
            bytes_out: sent,
        })
        .expect("finished");
    let (cpu, wall) = (cpu_seconds() - c0, t0.elapsed().as_secs_f64());
    assert_eq!(f.status, "complete");
    let _ = fs::remove_dir_all(&dir);
    let gib = sent as f64 / GIB as f64;
    (cpu / gib, wall / gib)
}

/// `ssh -tt srv cat /big.txt`, read to the end; seconds.
fn pty_cat(w: &World, total: u64) -> f64 {
    let mut child = w.ssh(&w.srv()).tty(true).args(&["cat /big.txt"]).spawn();
    let mut stdout = child.stdout.take().unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let r = stdout.read(&mut buf).expect("read from ssh");
        if r == 0 {
            break;
        }
        got += r as u64;
    }
    let st = child.wait().unwrap();
    let elapsed = t.elapsed().as_secs_f64();
    assert!(st.success(), "ssh -tt cat: {st}");
    // The pty turns each \n into \r\n.
    assert!(got >= total, "got {got} of {total} bytes");
    elapsed
}

fn recording_mode(w: &World, mode: &str) {
    w.host.set_config("recording.mode", mode);
}

/// Removes the recordings as sshd's namespace sees them (a tmpfs there
/// with PORTHOLE_BENCH_REC_TMPFS).
fn clear_recordings(w: &World) {
    let dir = w.host.recordings_dir();
    let script = format!("rm -f {}/*.cast", dir.display());
    w.host.in_ns(&["sh", "-c", &script]);
}

fn bench_recording(w: &World) -> RecordingBench {
    // No cap: every byte of the 1 GiB is recorded (the worst case).
    w.host.set_config("recording.max_bytes", 0);
    recording_mode(w, "off");
    let mut off = Echo::start(w, &w.srv());
    recording_mode(w, "output");
    let mut on = Echo::start(w, &w.srv());
    for _ in 0..20 {
        on.round_trip();
        off.round_trip();
    }
    let mut echo = Pair {
        subject: Samples::default(),
        anchor: Samples::default(),
    };
    for i in 0..n(1000, 50) {
        if i % 2 == 0 {
            echo.anchor.push(off.round_trip());
            echo.subject.push(on.round_trip());
        } else {
            echo.subject.push(on.round_trip());
            echo.anchor.push(off.round_trip());
        }
    }
    drop((on, off));

    // PORTHOLE_BENCH_REC_TMPFS=1: recordings on a tmpfs (in sshd's mount
    // namespace only), to tell the disk's share from the CPU's.
    if std::env::var_os("PORTHOLE_BENCH_REC_TMPFS").is_some() {
        let dir = w.host.recordings_dir();
        let _ = fs::create_dir_all(&dir);
        let m = w.host.in_ns(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=3g,mode=0700",
            "tmpfs",
            dir.to_str().unwrap(),
        ]);
        must("mount tmpfs over the recordings", &m);
    }
    // A text file of `total` bytes, 100-byte lines, inside the instance.
    let total = if quick() { 64 << 20 } else { GIB };
    let big = w.inst.rootfs().join("big.txt");
    {
        let line = format!("{}\n", "porthole recording benchmark line 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTU");
        let block = line.repeat((1 << 20) / line.len());
        let mut f = std::io::BufWriter::new(fs::File::create(&big).unwrap());
        let mut left = total;
        while left > 0 {
            let k = left.min(block.len() as u64) as usize;
            f.write_all(&block.as_bytes()[..k]).unwrap();
            left -= k as u64;
        }
    }
    let mut bulk = Pair {
        subject: Samples::default(),
        anchor: Samples::default(),
    };
    let sample = |on: bool, p: &mut Pair| {
        recording_mode(w, if on { "output" } else { "off" });
        let t = pty_cat(w, total);
        clear_recordings(w);
        if on {
            p.subject.push(t);
        } else {
            p.anchor.push(t);
        }
    };
    sample(
        true,
        &mut Pair {
            subject: Samples::default(),
            anchor: Samples::default(),
        },
    );
    for i in 0..n(3, 1) {
        sample(i % 2 == 1, &mut bulk);
        sample(i % 2 == 0, &mut bulk);
    }
    let _ = fs::remove_file(&big);
    let (cpu_per_gib, wall_per_gib) = recorder_in_process(w);
    recording_mode(w, "output");
    w.host.set_config("recording.max_bytes", 256 * 1024 * 1024);
    RecordingBench {
        echo,
        bulk,
        bulk_bytes: total,
        cpu_per_gib,
        wall_per_gib,
    }
}

// ----- 6. memory --------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss: u64,
    pss: u64,
    uss: u64,
    procs: usize,
}

impl std::ops::AddAssign for Mem {
    fn add_assign(&mut self, o: Mem) {
        self.rss += o.rss;
        self.pss += o.pss;
        self.uss += o.uss;
        self.procs += o.procs;
    }
}

/// Rss, Pss and Private_* (USS) of one process, from smaps_rollup (bytes).
fn mem_of(pid: u32) -> Mem {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let mut m = Mem {
        procs: 1,
        ..Mem::default()
    };
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or(0) * 1024;
        match k {
            "Rss:" => m.rss += v,
            "Pss:" => m.pss += v,
            "Private_Clean:" | "Private_Dirty:" => m.uss += v,
            _ => {}
        }
    }
    m
}

fn ppid_comm(pid: u32) -> Option<(u32, String)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let ppid = stat[close + 1..].split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

/// Every descendant of `root` (host pids) with its command name.
fn descendants(root: u32) -> Vec<(u32, String)> {
    let all: Vec<(u32, u32, String)> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| ppid_comm(pid).map(|(pp, c)| (pid, pp, c)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, pp, c) in &all {
            if *pp == p {
                out.push((*pid, c.clone()));
                frontier.push(*pid);
            }
        }
    }
    out
}

struct Memory {
    sessions: usize,
    /// porthole-shell processes (supervisor, outer) per session.
    porthole: Mem,
    /// sshd's own processes per plain session.
    sshd_plain: Mem,
    /// sshd's own processes per porthole session.
    sshd_srv: Mem,
}

fn per_session(sum: Mem, k: usize) -> Mem {
    let k = k as u64;
    Mem {
        rss: sum.rss / k,
        pss: sum.pss / k,
        uss: sum.uss / k,
        procs: sum.procs / k as usize,
    }
}

fn bench_memory(w: &World) -> Memory {
    let k = n(10, 3);
    let sshd = w.host.sshd_pid();
    let measure = |user: &str| -> (Mem, Mem) {
        let kids: Vec<Child> = (0..k)
            .map(|_| w.ssh(user).args(&["sleep 600"]).spawn())
            .collect();
        // Wait until every session runs its command.
        let ok = util::wait_for(Duration::from_secs(30), || {
            let d = descendants(sshd);
            (d.iter().filter(|(_, c)| c == "sleep").count() >= k).then_some(())
        });
        assert!(ok.is_some(), "{k} sessions of {user} did not start");
        std::thread::sleep(Duration::from_millis(500));
        let (mut ours, mut theirs) = (Mem::default(), Mem::default());
        for (pid, comm) in descendants(sshd) {
            // Development aid: where a session's memory is.
            if let Some(dir) = std::env::var_os("PORTHOLE_BENCH_SMAPS") {
                let _ = fs::copy(
                    format!("/proc/{pid}/smaps"),
                    Path::new(&dir).join(format!("{comm}-{pid}.smaps")),
                );
            }
            if comm == "porthole-shell" {
                ours += mem_of(pid);
            } else if comm == "sshd" {
                theirs += mem_of(pid);
            }
        }
        for mut c in kids {
            let _ = c.kill();
            let _ = c.wait();
        }
        util::wait_for(Duration::from_secs(15), || {
            (!descendants(sshd).iter().any(|(_, c)| c == "sleep")).then_some(())
        });
        (per_session(ours, k), per_session(theirs, k))
    };
    let (_, sshd_plain) = measure(PLAIN_USER);
    let (porthole, sshd_srv) = measure(&w.srv());
    Memory {
        sessions: k,
        porthole,
        sshd_plain,
        sshd_srv,
    }
}

// ----- the report ---------------------------------------------------------------------

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            let mut s = util::lossy(&o.stdout);
            s.push_str(&util::lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|e| format!("unavailable ({e})"))
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn size_of(p: &Path) -> String {
    fs::metadata(p)
        .map(|m| format!("{} KB", m.size() / 1000))
        .unwrap_or_else(|_| "?".into())
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Appends one line to the report.
fn out(md: &mut String, line: &str) {
    md.push_str(line);
    md.push('\n');
}

/// One row of a timed figure: n, median and p95 of subject and anchor, the
/// ratio of medians and whether it meets the goal (at most `max_ratio`).
fn time_row(
    md: &mut String,
    tag: &str,
    figure: &str,
    subject: &Samples,
    anchor_label: &str,
    anchor: &Samples,
    (goal, max_ratio): (&str, f64),
) {
    let r = subject.median() / anchor.median();
    out(
        md,
        &format!(
            "| {tag} | {figure} | {} | {} | {} | {anchor_label} | {} | {} | {r:.3}× | ≤ {goal}× | {} |",
            subject.len(),
            ms(subject.median()),
            ms(subject.pct(95.0)),
            ms(anchor.median()),
            ms(anchor.pct(95.0)),
            verdict(r <= max_ratio)
        ),
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// Figure 7: what the front door adds per hop before any network I/O:
/// minting the ephemeral Ed25519 key and its user certificate signed by an
/// Ed25519 CA (`porthole::fleet::cert::mint`, in process). The anchor is
/// the node's check of the same certificate (`verify_hop`).
struct Mint {
    mint: Samples,
    verify: Samples,
}

fn bench_mint() -> Mint {
    use porthole::fleet::cert;
    let ca = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[7u8; 32]));
    let id = cert::HopIdentity {
        owner: OWNER.into(),
        fingerprint: format!("SHA256:{}", "q".repeat(43)),
        session_id: "0123456789abcdef".into(),
        via: "fd-1.bench.internal".into(),
    };
    let login = format!("{SERVICE}-{SLUG}");
    let src: [std::net::IpAddr; 1] = [std::net::Ipv4Addr::LOCALHOST.into()];
    let req = cert::HopRequest {
        login: &login,
        identity: &id,
        source_address: &src,
    };
    let now = u64::try_from(porthole::time::now_unix()).unwrap();
    let (mut mint, mut verify) = (Samples::default(), Samples::default());
    for i in 0..n(2000, 200) + 50 {
        let t = Instant::now();
        let m = cert::mint(&ca, &req, now).unwrap();
        let minted = t.elapsed().as_secs_f64();
        let line = format!("publickey {}", m.certificate.to_openssh().unwrap());
        let t = Instant::now();
        let claim = cert::verify_hop(&line, ca.public_key(), &login, now).unwrap();
        let verified = t.elapsed().as_secs_f64();
        assert_eq!(claim.identity, id);
        // The first 50 warm caches and the allocator; not samples.
        if i >= 50 {
            mint.push(minted);
            verify.push(verified);
        }
    }
    Mint { mint, verify }
}

/// Figure 9: a login through a front door (issue 14) against the same
/// login straight to the node, interleaved, in a region on this machine
/// (`common::region`: each host its own network namespace and sshd). The
/// difference is the hop: minting, the second handshake, the front door's
/// session shell.
fn bench_hop() -> Pair {
    use common::region;
    let r = region::region();
    let login = format!("{}-aaaaa", region::SVC);
    let through_front = || {
        let (d, out) = timed(&mut r.cmd(&login).args(&["true"]).command());
        must("ssh through the front door", &out);
        d.as_secs_f64()
    };
    let to_node = || {
        let (d, out) = timed(&mut r.nodes[0].ssh_cmd(&login, &r.key).args(&["true"]).command());
        must("ssh to the node", &out);
        d.as_secs_f64()
    };
    for _ in 0..3 {
        through_front();
        to_node();
    }
    let mut p = Pair {
        subject: Samples::default(),
        anchor: Samples::default(),
    };
    for i in 0..n(60, 6) {
        if i % 2 == 0 {
            p.anchor.push(to_node());
            p.subject.push(through_front());
        } else {
            p.subject.push(through_front());
            p.anchor.push(to_node());
        }
    }
    p
}

#[test]
#[ignore = "benchmark: run with bench/run"]
fn bench_all() {
    let profile = Path::new(env!("CARGO_BIN_EXE_porthole-shell"))
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let load_before = loadavg();
    let started = Instant::now();
    let w = world();
    let login = wanted("login").then(|| bench_login(&w));
    let enter = wanted("enter").then(|| bench_enter(&w));
    let keys = wanted("keys").then(|| bench_keys(&w));
    let thru = wanted("throughput").then(|| bench_throughput(&w));
    let pty = wanted("pty").then(|| bench_pty(&w));
    let mem = wanted("memory").then(|| bench_memory(&w));
    let mint = wanted("mint").then(bench_mint);
    let rec = wanted("recording").then(|| bench_recording(&w));
    let hop = wanted("hop").then(bench_hop);
    let load_after = loadavg();
    let took = started.elapsed();

    let mut md = String::new();
    out(&mut md, "# Benchmarks");
    out(&mut md, "");
    out(
        &mut md,
        "Written by `bench/run` (`tests/bench.rs`); the figures below are the tool's, not edited by hand.",
    );
    out(&mut md, "");
    out(&mut md, "## Machine");
    out(&mut md, "");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    out(&mut md, &format!("- CPU: {} × {}", cores, cpu_model()));
    out(
        &mut md,
        &format!(
            "- kernel: {}",
            first_line(Command::new("uname").args(["-sr"]))
        ),
    );
    out(
        &mut md,
        &format!("- OpenSSH: {}", first_line(Command::new("ssh").arg("-V"))),
    );
    out(
        &mut md,
        &format!(
            "- runc: {}",
            first_line(Command::new("runc").arg("--version"))
        ),
    );
    out(
        &mut md,
        &format!(
            "- porthole: commit {}, `{profile}` binaries (porthole-keys {}, porthole-shell {}, libnss_porthole.so {})",
            first_line(Command::new("git").args(["rev-parse", "--short", "HEAD"])),
            size_of(&w.host.bin_dir().join("porthole-keys")),
            size_of(&w.host.bin_dir().join("porthole-shell")),
            size_of(&nss_module()),
        ),
    );
    out(
        &mut md,
        &format!(
            "- date: {}",
            first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        ),
    );
    out(&mut md, &format!("- load average before: `{load_before}`"));
    out(&mut md, &format!("- load average after: `{load_after}`"));
    out(
        &mut md,
        &format!(
            "- whole run: {:.0} s{}",
            took.as_secs_f64(),
            if quick() {
                " (QUICK: small sample counts, not a result)"
            } else {
                ""
            }
        ),
    );
    out(&mut md, "");
    out(&mut md, METHOD);
    out(&mut md, "");
    out(&mut md, "## Results");
    out(&mut md, "");
    out(
        &mut md,
        "| # | figure | n | median | p95 | anchor (same run) | anchor median | anchor p95 | ratio of medians | goal | |",
    );
    out(&mut md, "|---|---|---|---|---|---|---|---|---|---|---|");
    if let Some(p) = &login {
        time_row(
            &mut md,
            "1",
            "`ssh srv-bench-aaaaa@127.0.0.1 true`",
            &p.subject,
            "`ssh plainuser@127.0.0.1 true`",
            &p.anchor,
            ("1.10", 1.10),
        );
    }
    if let Some(e) = &enter {
        time_row(
            &mut md,
            "2a",
            "entering: `porthole-shell` run as sshd runs it, `true` in the instance",
            &e.porthole,
            "`nsenter -t PID -a true`",
            &e.nsenter,
            ("1.5", 1.5),
        );
        time_row(
            &mut md,
            "2b",
            "(same samples)",
            &e.porthole,
            "`runc exec ID true`",
            &e.runc,
            ("0.2", 0.2),
        );
    }
    if let Some(k) = &keys {
        let row = |md: &mut String,
                   tag: &str,
                   what: &str,
                   s: &Samples,
                   cat: &Samples,
                   goal: &str,
                   ok: Option<bool>| {
            out(
                md,
                &format!(
                    "| {tag} | keys hook, {what} (p99 {}) | {} | {} | {} | `cat` of the same lines (p99 {}) | {} | {} | {:.2}× | {goal} | {} |",
                    ms(s.pct(99.0)),
                    s.len(),
                    ms(s.median()),
                    ms(s.pct(95.0)),
                    ms(cat.pct(99.0)),
                    ms(cat.median()),
                    ms(cat.pct(95.0)),
                    s.median() / cat.median(),
                    ok.map(verdict).unwrap_or("report")
                ),
            );
        };
        row(
            &mut md,
            "3a",
            "warm cache",
            &k.warm,
            &k.cat1,
            "p50 ≤ 2 ms",
            Some(k.warm.median() <= 0.002),
        );
        row(
            &mut md,
            "3b",
            "cold cache (loopback API)",
            &k.cold,
            &k.cat1,
            "report",
            None,
        );
        row(
            &mut md,
            "3c",
            "stale cache, API down",
            &k.stale,
            &k.cat2,
            "report",
            None,
        );
    }
    if let Some(p) = &thru {
        let r = p.subject.median() / p.anchor.median();
        let total = if quick() { "64 MiB" } else { "1 GiB" };
        out(
            &mut md,
            &format!(
                "| 4 | {total} in and out through `ssh srv-bench-aaaaa cat` (MB/s; p95 = 5th-slowest bound: min) | {} | {:.1} MB/s | {:.1} MB/s | `ssh plainuser cat` | {:.1} MB/s | {:.1} MB/s | {:.3}× | ≥ 0.95× | {} |",
                p.subject.len(),
                p.subject.median(),
                p.subject.pct(5.0),
                p.anchor.median(),
                p.anchor.pct(5.0),
                r,
                verdict(r >= 0.95)
            ),
        );
    }
    if let Some(p) = &pty {
        time_row(
            &mut md,
            "5",
            "pty echo round trip, `ssh -tt srv-bench-aaaaa cat`",
            &p.subject,
            "`ssh -tt plainuser cat`",
            &p.anchor,
            ("1.10", 1.10),
        );
    }
    if let Some(m) = &mem {
        let goal = 1_500_000u64;
        for (tag, what, ours, theirs) in [
            ("6a", "RSS", m.porthole.rss, m.sshd_plain.rss),
            ("6b", "PSS", m.porthole.pss, m.sshd_plain.pss),
            ("6c", "USS (private)", m.porthole.uss, m.sshd_plain.uss),
        ] {
            out(
                &mut md,
                &format!(
                    "| {tag} | memory per session, {what}: porthole-shell processes ({} per session) | {} sessions | {} | – | sshd's own per-session processes ({}) | {} | – | {:.2}× | ≤ 1.5 MB | {} |",
                    m.porthole.procs,
                    m.sessions,
                    mib(ours),
                    m.sshd_plain.procs,
                    mib(theirs),
                    ours as f64 / theirs as f64,
                    verdict(ours <= goal)
                ),
            );
        }
    }
    if let Some(m) = &mint {
        out(
            &mut md,
            &format!(
                "| 7 | hop certificate minting, in process: ephemeral Ed25519 key + user certificate signed by an Ed25519 CA (p99 {}) | {} | {} | {} | the node's `verify_hop` of the same certificate | {} | {} | {:.2}× | ≤ 1 ms | {} |",
                ms(m.mint.pct(99.0)),
                m.mint.len(),
                ms(m.mint.median()),
                ms(m.mint.pct(95.0)),
                ms(m.verify.median()),
                ms(m.verify.pct(95.0)),
                m.mint.median() / m.verify.median(),
                verdict(m.mint.median() <= 0.001)
            ),
        );
    }
    if let Some(r) = &rec {
        time_row(
            &mut md,
            "8a",
            "pty echo round trip, session recorded (`recording.mode = \"output\"`)",
            &r.echo.subject,
            "the same, recording off",
            &r.echo.anchor,
            ("1.05", 1.05),
        );
        time_row(
            &mut md,
            "8b",
            &format!(
                "{} MiB of pty output (`ssh -tt srv-bench-aaaaa cat /big.txt`), recorded, no size cap",
                r.bulk_bytes >> 20
            ),
            &r.bulk.subject,
            "the same, recording off",
            &r.bulk.anchor,
            ("1.05", 1.05),
        );
        out(
            &mut md,
            &format!(
                "| 8c | the recorder alone, in process: 256 MiB of 4 KiB pty-like reads batched, JSON-encoded, hashed and written to a file (target dir) | 1 | {:.2} s CPU per GiB | – | – | {:.2} s wall per GiB | – | – | – | |",
                r.cpu_per_gib, r.wall_per_gib
            ),
        );
    }
    if let Some(p) = &hop {
        let ratio = p.subject.median() / p.anchor.median();
        out(
            &mut md,
            &format!(
                "| 9 | `ssh srv-…@front-door true`: a login hopped to the node (own network namespaces, veth bridge) | {} | {} | {} | the same login straight to the node's sshd | {} | {} | {:.2}× | ≤ 1.6× | {} |",
                p.subject.len(),
                ms(p.subject.median()),
                ms(p.subject.pct(95.0)),
                ms(p.anchor.median()),
                ms(p.anchor.pct(95.0)),
                ratio,
                verdict(ratio <= 1.6)
            ),
        );
    }
    out(&mut md, "");
    if let Some(m) = &mem {
        out(
            &mut md,
            &format!(
                "Memory detail: sshd's own processes per porthole session: RSS {}, PSS {}, USS {} ({} processes); per plain session: RSS {}, PSS {}, USS {} ({} processes). MB = 10^6 bytes in the goal.",
                mib(m.sshd_srv.rss), mib(m.sshd_srv.pss), mib(m.sshd_srv.uss), m.sshd_srv.procs,
                mib(m.sshd_plain.rss), mib(m.sshd_plain.pss), mib(m.sshd_plain.uss), m.sshd_plain.procs,
            ),
        );
        out(&mut md, "");
    }

    let path = std::env::var_os("PORTHOLE_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md"));
    let kept = fs::read_to_string(&path)
        .ok()
        .and_then(|old| old.split_once(ANALYSIS_MARK).map(|(_, a)| a.to_owned()));
    out(&mut md, ANALYSIS_MARK);
    if let Some(a) = kept {
        md.push_str(a.trim_start_matches('\n'));
    } else {
        out(&mut md, "");
        out(&mut md, "## Analysis");
        out(&mut md, "");
        out(&mut md, "(none yet)");
    }
    fs::write(&path, &md).unwrap();
    let mut show = String::new();
    let _ = write!(show, "wrote {}\n{md}", path.display());
    eprintln!("{show}");
}

const METHOD: &str = "## Method

One sshd (OpenSSH from the distribution) in a private mount namespace on a
loopback port, set up by the end-to-end harness (`tests/common`): the
shipped drop-in, the NSS module, the keys hook and the setuid session
shell of this build (release profile), a real HTTP control plane on
127.0.0.1, one busybox runc instance `srv-bench-aaaaa` running as `app`.
The anchor user `plainuser` is a plain local account of the same sshd with
an `authorized_keys` file holding the same ed25519 key and no
ForceCommand. Every figure is measured in this one run, subject and anchor
interleaved sample by sample (A B, then B A, …) after a few unrecorded
warm-up rounds; medians and nearest-rank percentiles; ratio = subject
median / anchor median. Wall times are taken around `fork`+`exec` to the
reaped exit (blocking `waitpid`, no polling).

1. **Login**: the real `ssh` client, `ssh … true`, new connection each time
   (key exchange, authentication with the keys hook answering from a warm
   cache, session, exit status). The anchor is the same sshd reading
   plainuser's `authorized_keys`.
2. **Entering**: `porthole-shell` is started directly, the way sshd starts
   it for `ssh srv-bench-aaaaa@host true` (as the session account, in sshd's
   mount namespace, entered in `pre_exec` so no wrapper is timed; argv
   `porthole-shell -c <ForceCommand>`, `USER`, `SSH_ORIGINAL_COMMAND=true`,
   `SSH_USER_AUTH`, `SSH_CONNECTION`). The time is its whole path: self
   checks, configuration, the cached authorization, the runtime state,
   pinning the init, reading credentials, user, environment, cgroups,
   admission (slot files), the session record and audit events, the forks
   into cgroups and namespaces, `exec` of `true` as `app`, the supervisor
   relaying until `true` exits, and its own exit. Anchors: `nsenter -t PID -a
   true` (joins the namespaces only, stays root, no cgroups, no checks) and
   `runc exec ID true` (what runc users do). Each sample follows a 60 ms
   pause: joining a cgroup-v1 hierarchy waits for an RCU grace period unless
   another migration happened just before, so back-to-back samples would
   flatter whatever follows `runc exec`.
3. **Keys hook**: `porthole-keys srv-bench %f %t %k` as user `porthole`, as
   sshd runs it, including process start; warm (answer in the cache), cold
   (cache emptied before each call: one request to the loopback API; the run
   checks the API saw exactly one request per cold call), stale (cache
   older than `fresh_secs`, API stopped: connection refused, the stale
   answer is served). Anchor: `cat` of the same lines as the same user the
   same way. What sshd pays for reading an `AuthorizedKeysFile` instead is
   part of figure 1.
4. **Throughput**: 1 GiB written into `ssh … cat` while the echoed 1 GiB is
   read back (counted, length checked), default cipher; MB/s = 10^6 bytes
   per second of the round trip; p95 column = the slowest sample's rate (the
   5th percentile of the rate).
5. **PTY echo**: one long-lived `ssh -tt … cat` per user; one byte typed,
   time until its echo (by the remote terminal's line discipline) arrives.
   For porthole the byte crosses sshd's pty, the supervisor's relay, the
   container's own pty and back.
6. **Memory**: N concurrent `ssh … 'sleep 600'` sessions per user; for each
   process below the sshd listener, `Rss`, `Pss` and `Private_Clean +
   Private_Dirty` (USS) from `/proc/PID/smaps_rollup`, summed and divided by
   N. porthole's per-session processes are those named `porthole-shell`
   (the supervisor; the process it forks to join the instance exits as soon
   as the session's process is started); the anchor is sshd's own per-session processes of a plain
   session (the `[priv]` monitor and the `user@notty` process). RSS counts
   shared library and binary pages in full in every process; PSS divides
   them among the processes sharing them; USS is what one more session
   really adds.
7. **Minting**: see the row.
8. **Recording**: two live `ssh -tt … cat` sessions into the same instance,
   one recorded (`recording.mode = \"output\"`), one not, echo round trips
   interleaved as in 5; then `ssh -tt … cat /big.txt` of a 1 GiB text file
   (100-byte lines) inside the instance, read to the end by the client,
   recorded (no size cap: every byte goes to the file) and not, interleaved;
   recordings are deleted between samples. Figure 5 is taken with the
   default configuration, which records pty sessions.";
