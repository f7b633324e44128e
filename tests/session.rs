#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 3, end to end: `ssh srv-…@host` lands in a real runc container
//! through the real sshd, the NSS module, the keys hook and the setuid
//! session shell (mode 4750 root:porthole-session), with a real HTTP
//! control plane on 127.0.0.1.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const OWNER: &str = "alice@example.com";
const WAIT: Duration = Duration::from_secs(10);

struct World {
    host: TestHost,
    key: ClientKey,
}

/// A bastion where `srv-web1` and `srv-web2` are paid web services that
/// list the ed25519 key of alice.
fn world() -> World {
    let host = TestHost::start(TestHostOpts::default());
    let key = host.key(KeyKind::Ed25519);
    for svc in ["srv-web1", "srv-web2"] {
        host.control_plane()
            .set_body(svc, &web_service(svc, &[KeySpec::new(&key, OWNER)]));
    }
    World { host, key }
}

impl World {
    fn ssh(&self, user: &str, args: &[&str]) -> SshRun {
        self.host.ssh(user, &self.key, args)
    }

    fn cmd(&self, user: &str) -> SshCmd {
        self.host.ssh_cmd(user, &self.key)
    }

    fn service_of_type(&self, svc: &str, kind: &str, plan: &str) {
        self.host.control_plane().set_body(
            svc,
            &v1_body(svc, kind, plan, &[KeySpec::new(&self.key, OWNER)]),
        );
    }

    fn session_start(&self, instance: &str) -> LogEvent {
        self.host.expect_event(
            &format!("session.start in {instance}"),
            |e| e.name() == "session.start" && e.str("instance") == Some(instance),
            WAIT,
        )
    }
}

fn ok(r: &SshRun) -> String {
    assert!(r.success(), "session should succeed:\n{}", r.describe());
    r.stdout_str()
}

fn app(opts: InstanceOpts) -> InstanceOpts {
    opts.app_user()
}

// ----- where the login lands ------------------------------------------------

#[test]
fn specific_slug_lands_in_that_instance() {
    let w = world();
    let _a = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let _b = Instance::start(&w.host, "srv-web1", "bbbbb", app(InstanceOpts::default()));
    for slug in ["aaaaa", "bbbbb"] {
        let out = ok(&w.ssh(&format!("srv-web1-{slug}"), &["hostname"]));
        assert_eq!(out.trim(), format!("srv-web1-{slug}"));
    }
    let e = w.session_start("srv-web1-bbbbb");
    assert_eq!(e.str("owner"), Some(OWNER));
    assert_eq!(e.str("fingerprint"), Some(w.key.fingerprint.as_str()));
}

#[test]
fn random_choice_reaches_every_instance() {
    let w = world();
    let _i: Vec<Instance> = ["aaaaa", "bbbbb", "ccccc"]
        .iter()
        .map(|s| Instance::start(&w.host, "srv-web1", s, InstanceOpts::default()))
        .collect();
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(ok(&w.ssh("srv-web1", &["hostname"])).trim().to_owned());
        if seen.len() == 3 {
            break;
        }
    }
    // 30 uniform draws miss one of 3 with probability < 1e-5.
    assert_eq!(seen.len(), 3, "reached only {seen:?}");
}

#[test]
fn annotated_container_with_an_arbitrary_id_is_found() {
    let w = world();
    let _i = Instance::start(
        &w.host,
        "srv-web1",
        "zz9zz",
        InstanceOpts::default().id("0f3a9c"),
    );
    assert_eq!(
        ok(&w.ssh("srv-web1-zz9zz", &["hostname"])).trim(),
        "srv-web1-zz9zz"
    );
}

#[test]
fn container_id_convention_without_annotations_is_found() {
    let w = world();
    let _i = Instance::start(
        &w.host,
        "srv-web2",
        "qqqqq",
        InstanceOpts::default().no_annotations(),
    );
    assert_eq!(
        ok(&w.ssh("srv-web2", &["hostname"])).trim(),
        "srv-web2-qqqqq"
    );
}

// ----- the user's world -----------------------------------------------------

#[test]
fn non_root_user_gets_its_uid_home_and_environment() {
    let w = world();
    let _i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let out = ok(&w.ssh(
        "srv-web1-aaaaa",
        &["id -u; id -g; pwd; echo $HOME $USER $LOGNAME $SHELL; echo $DATABASE_URL; umask"],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "1000",
            "1000",
            "/home/app",
            "/home/app app app /bin/sh",
            "postgres://demo",
            "0022"
        ]
    );
}

#[test]
fn root_user_is_root_in_the_container_only() {
    let w = world();
    let i = Instance::start(
        &w.host,
        "srv-web1",
        "aaaaa",
        InstanceOpts::default().root_user(),
    );
    let out = ok(&w.ssh(
        "srv-web1-aaaaa",
        &["id -u; echo $HOME; grep CapBnd /proc/self/status"],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0");
    assert_eq!(lines[1], "/root");
    // The bounding set is the container init's, not the host's full set.
    let init = std::fs::read_to_string(format!("/proc/{}/status", i.init_pid())).unwrap();
    let init_bnd = init.lines().find(|l| l.starts_with("CapBnd")).unwrap();
    assert_eq!(
        lines[2].split_whitespace().nth(1),
        init_bnd.split_whitespace().nth(1)
    );
}

#[test]
fn environment_is_the_containers_not_the_hosts() {
    let w = world();
    let _i = Instance::start(
        &w.host,
        "srv-web1",
        "aaaaa",
        app(InstanceOpts::default()).env("APP_SECRET_NAME=billing"),
    );
    let out = ok(&w
        .cmd("srv-web1-aaaaa")
        .option("SetEnv=LD_PRELOAD=/evil.so")
        .args(&["env"])
        .run());
    assert!(out.contains("APP_SECRET_NAME=billing"), "{out}");
    assert!(out.contains("DATABASE_URL=postgres://demo"), "{out}");
    for leaked in ["SSH_", "LD_PRELOAD", "porthole", "MAIL="] {
        assert!(
            !out.contains(leaked),
            "{leaked} leaked into the session:\n{out}"
        );
    }
}

#[test]
fn hostname_and_processes_are_the_containers() {
    let w = world();
    let _i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let out = ok(&w.ssh("srv-web1-aaaaa", &["hostname; ps -o pid,comm"]));
    assert!(out.starts_with("srv-web1-aaaaa\n"), "{out}");
    assert!(!out.contains("sshd"), "host processes visible:\n{out}");
    // init, the shell, ps (and nothing else).
    let procs = out.lines().skip(2).count();
    assert!(procs <= 3, "{out}");
    assert!(out.contains("sleep"), "{out}");
}

#[test]
fn session_is_charged_to_the_instances_memory_cgroup() {
    let w = world();
    let i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let out = ok(&w.ssh("srv-web1-aaaaa", &["cat /proc/self/cgroup"]));
    // `N:controllers:path` lines; the one whose controllers include memory.
    let memory = out.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        ctrls
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_owned())
    });
    let init_memory = i.cgroup("memory");
    match init_memory {
        Some(m) => assert_eq!(memory.as_deref(), Some(m.as_str()), "{out}"),
        None => {
            // Pure cgroup v2 host.
            let v2 = out
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(str::to_owned);
            assert_eq!(v2, i.cgroup(""), "{out}");
        }
    }
}

#[test]
fn only_the_sessions_stdio_is_open_inside() {
    let w = world();
    let _i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let out = ok(&w.ssh(
        "srv-web1-aaaaa",
        &["ls /proc/self/fd; for f in fd/0 fd/1 cwd root; do readlink /proc/self/$f; done"],
    ));
    let lines: Vec<&str> = out.lines().collect();
    // 0, 1, 2 and the directory ls itself is reading.
    assert_eq!(&lines[..4], ["0", "1", "2", "3"], "{out}");
    assert!(
        lines[4].starts_with("pipe:") && lines[5].starts_with("pipe:"),
        "{out}"
    );
    assert_eq!(lines[6], "/home/app");
    assert_eq!(lines[7], "/");
}

#[test]
fn pty_session_gets_the_containers_own_terminal_and_resizes() {
    let w = world();
    let _i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let mut c = w.cmd("srv-web1-aaaaa").tty(true).spawn_pty(24, 80);
    c.send("stty size; tty; ls -l /proc/self/fd/0 | grep -c pts; echo MARK-$((6*7))\n");
    assert!(c.wait_for("MARK-42", WAIT), "screen:\n{}", c.screen());
    let screen = c.screen();
    assert!(screen.contains("24 80"), "{screen}");
    assert!(
        screen.contains("/dev/pts/0"),
        "the container's devpts starts at 0:\n{screen}"
    );
    c.resize(50, 132);
    std::thread::sleep(Duration::from_millis(300));
    c.send("stty size; echo MARK-$((7*7))\n");
    assert!(c.wait_for("MARK-49", WAIT), "screen:\n{}", c.screen());
    assert!(c.screen().contains("50 132"), "{}", c.screen());
    c.send("exit 3\n");
    let st = c.wait(WAIT).expect("client exits after the shell");
    assert_eq!(st.code(), Some(3));
}

#[test]
fn command_without_tty_has_none_and_with_t_has_one() {
    let w = world();
    let _i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let r = w.ssh("srv-web1-aaaaa", &["tty"]);
    assert_eq!(r.stdout_str().trim(), "not a tty");
    let r = w
        .cmd("srv-web1-aaaaa")
        .tty(true)
        .args(&["tty; echo $TERM"])
        .run();
    assert!(r.stdout_str().contains("/dev/pts/"), "{}", r.describe());
}

// ----- commands, status, data -----------------------------------------------

#[test]
fn exit_status_passes_through() {
    let w = world();
    let _i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let r = w.ssh("srv-web1-aaaaa", &["echo out; echo err >&2; exit 7"]);
    assert_eq!(r.code(), Some(7), "{}", r.describe());
    assert_eq!(r.stdout_str(), "out\n");
    assert_eq!(r.stderr_str(), "err\n");
    let end = w.host.expect_event(
        "session.end with exit 7",
        |e| e.name() == "session.end" && e.u64("exit_status") == Some(7),
        WAIT,
    );
    assert_eq!(end.str("reason"), Some("exit"));
}

#[test]
fn signal_death_passes_through() {
    let w = world();
    let _i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let r = w.ssh("srv-web1-aaaaa", &["kill -TERM $$"]);
    // sshd reports exit-signal; the client then exits 255 (not 0, not 143).
    assert_eq!(r.code(), Some(255), "{}", r.describe());
    w.host.expect_event(
        "session.end with signal 15",
        |e| e.name() == "session.end" && e.u64("signal") == Some(15),
        WAIT,
    );
}

#[test]
fn stdin_eof_passes_through() {
    let w = world();
    let _i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let r = w
        .cmd("srv-web1-aaaaa")
        .stdin("one\ntwo\n")
        .args(&["wc -l"])
        .run();
    assert_eq!(ok(&r).trim(), "2");
}

#[test]
fn hundred_megabytes_round_trip_keep_their_sha256() {
    let w = world();
    let _i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let mut data = vec![0u8; 100 * 1024 * 1024];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let r = w
        .cmd("srv-web1-aaaaa")
        .stdin(data.clone())
        .timeout(Duration::from_secs(120))
        .args(&["cat"])
        .run();
    assert!(r.success(), "{}", r.status);
    assert_eq!(r.stdout.len(), data.len());
    assert!(r.stdout == data, "bytes changed on the way through");
    let r = w
        .cmd("srv-web1-aaaaa")
        .stdin(data.clone())
        .timeout(Duration::from_secs(120))
        .args(&["sha256sum"])
        .run();
    let theirs = ok(&r);
    let mine = sha256_hex(&data);
    assert_eq!(theirs.split_whitespace().next(), Some(mine.as_str()));
}

fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

// ----- the instance or the client goes away ---------------------------------

#[test]
fn instance_stopping_closes_the_session_with_a_message() {
    let w = world();
    let i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let child = w
        .cmd("srv-web1-aaaaa")
        .args(&["echo started; sleep 300"])
        .spawn();
    w.session_start("srv-web1-aaaaa");
    let killed_at = Instant::now();
    let _ = common::container::runc(&w.host.runc_root(), &["kill", i.id(), "KILL"]);
    let out = child.wait_with_output().unwrap();
    let took = killed_at.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("instance srv-web1-aaaaa stopped (deploy or restart); session closed"),
        "{stderr}"
    );
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    w.host.expect_event(
        "session.end instance_stopped",
        |e| e.name() == "session.end" && e.str("reason") == Some("instance_stopped"),
        WAIT,
    );
}

#[test]
fn client_killed_mid_command_leaves_nothing_in_the_container() {
    let w = world();
    let i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    let before = i.pids().len();
    let mut child = w
        .cmd("srv-web1-aaaaa")
        .args(&["sleep 300 & sleep 301"])
        .spawn();
    w.session_start("srv-web1-aaaaa");
    let grew = util::wait_for(WAIT, || (i.pids().len() >= before + 2).then_some(()));
    assert!(
        grew.is_some(),
        "session processes never appeared: {:?}",
        i.pids()
    );
    child.kill().unwrap();
    let _ = child.wait();
    let gone = util::wait_for(WAIT, || (i.pids().len() == before).then_some(()));
    assert!(
        gone.is_some(),
        "left in the container: {:?}",
        i.exec(&["ps"])
    );
    w.host.expect_event(
        "session.end client_disconnect",
        |e| e.name() == "session.end" && e.str("reason") == Some("client_disconnect"),
        WAIT,
    );
}

// ----- refusals, each with its sentence --------------------------------------

fn refused(w: &World, user: &str, needle: &str) {
    let r = w.ssh(user, &["true"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr_str().contains(needle),
        "wanted {needle:?}:\n{}",
        r.describe()
    );
    w.host.expect_event(
        &format!("session.rejected for {user}"),
        |e| e.name() == "session.rejected" && e.str("user") == Some(user),
        WAIT,
    );
}

#[test]
fn services_without_ssh_are_refused_with_a_sentence() {
    let w = world();
    let cases = [
        (
            "srv-free1",
            "web_service",
            "free",
            "free web service; SSH needs a paid instance type",
        ),
        (
            "srv-cron1",
            "cron_job",
            "starter",
            "the platform refused a temporary instance",
        ),
        ("srv-site1", "static_site", "starter", "static site"),
        ("srv-pg1", "postgres", "pro", "datastore"),
        ("srv-kv1", "key_value", "pro", "datastore"),
        ("srv-gpu1", "gpu_box", "pro", "does not offer SSH"),
    ];
    for (svc, kind, plan, _) in cases {
        w.service_of_type(svc, kind, plan);
    }
    for (svc, _, _, needle) in cases {
        refused(&w, svc, needle);
    }
}

#[test]
fn missing_instances_are_explained() {
    let w = world();
    refused(
        &w,
        "srv-web1",
        "srv-web1 has no running instance on this host",
    );
    let _a = Instance::start(&w.host, "srv-web1", "aaaaa", InstanceOpts::default());
    let _b = Instance::start(&w.host, "srv-web2", "bbbbb", InstanceOpts::default());
    refused(&w, "srv-web1-zzzzz", "running instances: srv-web1-aaaaa");
    refused(&w, "srv-web1-bbbbb", "bbbbb is not an instance of srv-web1");
}

#[test]
fn unusable_login_shell_falls_back_to_sh_with_a_notice() {
    let w = world();
    let _i = Instance::start(
        &w.host,
        "srv-web1",
        "aaaaa",
        app(InstanceOpts::default()).login_shell("/usr/sbin/nologin"),
    );
    let r = w.ssh("srv-web1-aaaaa", &["echo hi"]);
    assert_eq!(ok(&r), "hi\n");
    assert!(
        r.stderr_str()
            .contains("login shell /usr/sbin/nologin is not usable; using /bin/sh"),
        "{}",
        r.describe()
    );
}

#[test]
fn sftp_without_a_server_is_explained_in_the_protocol() {
    let w = world();
    let _i = Instance::start(&w.host, "srv-web1", "aaaaa", app(InstanceOpts::default()));
    // The image has no sftp-server and porthole-sftp is not installed.
    let missing = w.host.dir().join("bin/no-such-porthole-sftp");
    w.host
        .set_config("session.sftp_binary", missing.display().to_string());
    // The real sftp client asks for the "sftp" subsystem.
    let out = util::run_with_timeout(
        std::process::Command::new("sftp")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-b", "-"])
            .arg("-i")
            .arg(&w.key.path)
            .arg("-P")
            .arg(w.host.port().to_string())
            .arg("srv-web1-aaaaa@127.0.0.1"),
        Some(b"ls\n".to_vec()),
        Duration::from_secs(30),
    )
    .output;
    assert!(!out.status.success(), "{}", util::lossy(&out.stdout));
    // sshd does not forward a subsystem's stderr: the shell answers the
    // client's SFTP requests with the sentence (sftp prints it).
    let said = util::lossy(&out.stderr);
    assert!(
        said.contains("sftp is not available on this host"),
        "{said}"
    );
    let e = w.host.expect_event(
        "session.rejected no_sftp",
        |e| e.name() == "session.rejected" && e.str("reason") == Some("no_sftp"),
        WAIT,
    );
    let msg = e.str("message").unwrap();
    assert!(
        msg.contains("sftp is not available on this host") && msg.contains("no-such-porthole-sftp"),
        "{msg}"
    );
}

#[test]
fn shell_refuses_to_run_outside_sshd() {
    let w = world();
    // As root (not the session account): refused before anything else.
    let out = util::run(
        std::process::Command::new(w.host.bin_dir().join("porthole-shell")).env("USER", "srv-web1"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        util::lossy(&out.stderr).contains("not by root"),
        "{}",
        util::lossy(&out.stderr)
    );
    // As an unrelated uid, inside the bastion's namespace (real config):
    // the mode (4750 root:porthole-session) keeps it out, and where a kernel
    // lets it run anyway the shell itself refuses any uid but the session
    // account's before reading the cache or touching a container.
    let bin = w.host.bin_dir().join("porthole-shell");
    let out = w.host.in_ns(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "env",
        "USER=srv-web1",
        bin.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = util::lossy(&out.stderr);
    assert!(
        err.contains("Permission denied")
            || err.contains("may only be run by sshd for the porthole-session account"),
        "{err}"
    );
}

// ----- scp, rsync and sftp when the image has them ----------------------------

fn transfer_world() -> (World, Instance) {
    let w = world();
    let opts = app(InstanceOpts::default()).with_host_programs(&[
        "/usr/bin/scp",
        "/usr/bin/rsync",
        "/usr/lib/openssh/sftp-server",
    ]);
    let i = Instance::start(&w.host, "srv-web1", "aaaaa", opts);
    (w, i)
}

fn client_opts(w: &World) -> Vec<String> {
    w.key.transfer_opts()
}

#[test]
fn scp_rsync_and_sftp_work_when_the_image_has_them() {
    let (w, i) = transfer_world();
    let local = w.host.dir().join("payload.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|n| (n * 7 % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let port = w.host.port().to_string();
    let remote = "srv-web1-aaaaa@127.0.0.1";

    let scp = util::run(
        std::process::Command::new("scp")
            .arg("-O")
            .args(client_opts(&w))
            .args(["-P", &port])
            .arg(&local)
            .arg(format!("{remote}:/home/app/via-scp.bin")),
    );
    assert!(scp.status.success(), "scp -O: {}", util::lossy(&scp.stderr));
    assert_eq!(
        std::fs::read(i.rootfs().join("home/app/via-scp.bin")).unwrap(),
        data
    );

    let rsh = format!("ssh {} -p {port}", client_opts(&w).join(" "));
    let rsync = util::run(
        std::process::Command::new("rsync")
            .args(["-a", "-e", &rsh])
            .arg(&local)
            .arg(format!("{remote}:/home/app/via-rsync.bin")),
    );
    assert!(
        rsync.status.success(),
        "rsync: {}",
        util::lossy(&rsync.stderr)
    );
    assert_eq!(
        std::fs::read(i.rootfs().join("home/app/via-rsync.bin")).unwrap(),
        data
    );

    let back = w.host.dir().join("back.bin");
    let sftp = util::run_with_timeout(
        std::process::Command::new("sftp")
            .args(client_opts(&w))
            .args(["-P", &port, "-b", "-"])
            .arg(remote),
        Some(format!("get /home/app/via-rsync.bin {}\n", back.display()).into_bytes()),
        Duration::from_secs(60),
    )
    .output;
    assert!(sftp.status.success(), "sftp: {}", util::lossy(&sftp.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    // Files written in the session belong to the container user.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(i.rootfs().join("home/app/via-scp.bin"))
            .unwrap()
            .uid(),
        1000
    );
}

#[test]
fn user_namespaced_instance_is_entered_with_its_mapped_ids() {
    let w = world();
    let base = 200_000;
    let i = Instance::start(
        &w.host,
        "srv-web1",
        "aaaaa",
        app(InstanceOpts::default()).userns(base),
    );
    let out = ok(&w.ssh(
        "srv-web1-aaaaa",
        &["id -u; head -1 /proc/self/uid_map; touch /home/app/mine; echo $HOME"],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000", "{out}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["0", "200000", "65536"],
        "{out}"
    );
    assert_eq!(lines[2], "/home/app");
    use std::os::unix::fs::MetadataExt;
    // On the host the file belongs to the mapped uid, not to anyone real.
    assert_eq!(
        std::fs::metadata(i.rootfs().join("home/app/mine"))
            .unwrap()
            .uid(),
        base + 1000
    );
}
