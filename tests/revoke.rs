#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 12 (revocation), end to end: a live session whose key the control
//! plane stops listing is closed with a sentence within the cache's
//! `fresh_secs` (+1 s); an outage closes nothing; other keys' sessions stay.
//! Real sshd, real runc instance, real HTTP control plane; `fresh_secs` is
//! short in the test's porthole.toml.

mod common;

use common::*;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

const SVC: &str = "srv-web1";
const INST: &str = "srv-web1-aaaaa";
const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const FRESH: u64 = 3;
const WAIT: Duration = Duration::from_secs(15);

struct World {
    // The instance drops before its host (see tests/limits.rs).
    _inst: Instance,
    host: TestHost,
    alice: ClientKey,
    bob: ClientKey,
}

fn world_with(opts: TestHostOpts) -> World {
    let host = TestHost::start(opts);
    let alice = host.key(KeyKind::Ed25519);
    let bob = host.new_key(KeyKind::Ed25519, "bob");
    let w = World {
        _inst: Instance::start(&host, SVC, "aaaaa", InstanceOpts::default().app_user()),
        host,
        alice,
        bob,
    };
    w.list(&[&w.alice, &w.bob]);
    w
}

fn world() -> World {
    world_with(TestHostOpts::default().set("cache.fresh_secs", FRESH))
}

impl World {
    /// The control plane lists exactly these keys for the service.
    fn list(&self, keys: &[&ClientKey]) {
        let specs: Vec<KeySpec> = keys
            .iter()
            .map(|k| {
                KeySpec::new(
                    k,
                    if k.path == self.alice.path {
                        ALICE
                    } else {
                        BOB
                    },
                )
            })
            .collect();
        self.host
            .control_plane()
            .set_body(SVC, &web_service(SVC, &specs));
    }

    /// A session running `sleep 60`, once its supervisor has started it.
    fn live(&self, key: &ClientKey, owner: &str) -> Child {
        let before = self.starts(owner);
        let child = self
            .host
            .ssh_cmd(INST, key)
            .args(&["echo started; sleep 60"])
            .spawn();
        let started = util::wait_for(WAIT, || (self.starts(owner) > before).then_some(()));
        assert!(
            started.is_some(),
            "no session.start for {owner}; log:\n{}",
            self.host.log_lines().join("\n")
        );
        child
    }

    fn starts(&self, owner: &str) -> usize {
        self.host
            .events()
            .iter()
            .filter(|e| e.is("session.start", &[("owner", owner)]))
            .count()
    }

    /// Refreshes (porthole-keys --refresh) that asked the control plane.
    fn refreshes(&self) -> usize {
        self.host
            .events()
            .iter()
            .filter(|e| e.is("keys.refresh", &[("source", "api")]))
            .count()
    }

    fn ends(&self, owner: &str) -> Vec<LogEvent> {
        self.host
            .events()
            .into_iter()
            .filter(|e| e.is("session.end", &[("owner", owner)]))
            .collect()
    }
}

fn running(c: &mut Child) -> bool {
    c.try_wait().unwrap().is_none()
}

fn finish(mut c: Child, timeout: Duration) -> Output {
    let (_, timed_out) = util::wait_deadline(&mut c, timeout);
    assert!(!timed_out, "the session was not closed within {timeout:?}");
    c.wait_with_output().unwrap()
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn revoked_key_closes_its_session_within_fresh_secs_and_other_keys_stay() {
    let w = world();
    let mut bobs: Vec<Child> = (0..2).map(|_| w.live(&w.bob, BOB)).collect();
    let alice = w.live(&w.alice, ALICE);
    // The worst case: the control plane changes just after an answer was
    // fetched, so the whole of fresh_secs passes before it is stale. Wait
    // for a supervisor's refresh to ask the control plane, then revoke.
    let fetched = w.refreshes();
    let refreshed = util::wait_for(WAIT, || (w.refreshes() > fetched).then_some(()));
    assert!(
        refreshed.is_some(),
        "no keys.refresh from the control plane"
    );
    w.list(&[&w.bob]);
    let revoked = Instant::now();
    let out = finish(alice, Duration::from_secs(FRESH + 10));
    let took = revoked.elapsed();
    eprintln!("revoked key's session closed {took:?} after the control plane stopped listing it (fresh_secs {FRESH})");
    let stderr = util::lossy(&out.stderr);
    assert!(
        stderr.contains("porthole: your key was revoked for srv-web1; closing the session"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        took <= Duration::from_secs(FRESH + 1),
        "closed {took:?} after the revocation; fresh_secs is {FRESH}"
    );
    let end = w.host.expect_event(
        "session.end key_revoked",
        |e| {
            e.is(
                "session.end",
                &[("reason", "key_revoked"), ("owner", ALICE)],
            )
        },
        WAIT,
    );
    assert!(end.str("message").unwrap().contains("revoked"));
    let why = w.host.expect_event(
        "session.key_revoked",
        |e| e.name() == "session.key_revoked",
        WAIT,
    );
    assert_eq!(why.str("cause"), Some("not_listed"));
    assert_eq!(why.str("fingerprint"), Some(w.alice.fingerprint.as_str()));
    assert_eq!(why.str("session_id"), end.str("session_id"));

    // Bob's two sessions stay, and between them they ask the control plane
    // about once per fresh_secs (the hook's single flight), not once each.
    w.host.control_plane().reset_counts();
    let window = Duration::from_secs(3 * FRESH);
    std::thread::sleep(window);
    let asked = w.host.control_plane().requests(SVC);
    for b in bobs.iter_mut() {
        assert!(running(b), "bob's session was closed");
    }
    assert!(w.ends(BOB).is_empty(), "{:?}", w.ends(BOB));
    eprintln!("control-plane requests in {window:?} with 2 live sessions: {asked}");
    assert!(
        (1..=4).contains(&asked),
        "{asked} requests in {window:?} (fresh_secs {FRESH})"
    );
    for b in bobs {
        stop(b);
    }
}

#[test]
fn an_unreachable_or_failing_control_plane_closes_nothing() {
    let w = world();
    let mut alice = w.live(&w.alice, ALICE);
    // Errors: the cached answer goes stale and stays that way.
    w.host.control_plane().set_reply(SVC, Reply::status(500));
    std::thread::sleep(Duration::from_secs(3 * FRESH));
    assert!(running(&mut alice), "closed while the control plane failed");
    w.host.expect_event(
        "session.key_check deferred",
        |e| e.is("session.key_check", &[("outcome", "deferred")]),
        WAIT,
    );
    // Gone altogether (connection refused).
    w.host.control_plane().stop();
    std::thread::sleep(Duration::from_secs(2 * FRESH));
    assert!(
        running(&mut alice),
        "closed while the control plane was down"
    );
    assert!(w.ends(ALICE).is_empty(), "{:?}", w.ends(ALICE));
    // Back, still listing the key: the session goes on.
    w.list(&[&w.alice, &w.bob]);
    w.host.control_plane().restart();
    std::thread::sleep(Duration::from_secs(2 * FRESH));
    assert!(
        running(&mut alice),
        "closed after the control plane came back"
    );
    // And a revocation after the outage still takes effect.
    w.list(&[&w.bob]);
    let out = finish(alice, WAIT);
    assert!(
        util::lossy(&out.stderr).contains("your key was revoked for srv-web1"),
        "{}",
        util::lossy(&out.stderr)
    );
}

#[test]
fn a_service_that_disappears_closes_its_sessions() {
    let w = world();
    let alice = w.live(&w.alice, ALICE);
    let fetched = w.refreshes();
    let refreshed = util::wait_for(WAIT, || (w.refreshes() > fetched).then_some(()));
    assert!(
        refreshed.is_some(),
        "no keys.refresh from the control plane"
    );
    w.host.control_plane().clear(SVC); // 404 from now on
    let gone = Instant::now();
    let out = finish(alice, Duration::from_secs(FRESH + 10));
    let took = gone.elapsed();
    eprintln!("session of a deleted service closed after {took:?}");
    assert!(
        util::lossy(&out.stderr)
            .contains("porthole: srv-web1 no longer exists; closing the session"),
        "{}",
        util::lossy(&out.stderr)
    );
    assert!(took <= Duration::from_secs(FRESH + 1), "{took:?}");
    w.host.expect_event(
        "session.key_revoked service_gone",
        |e| e.is("session.key_revoked", &[("cause", "service_gone")]),
        WAIT,
    );
}

#[test]
fn an_expiring_key_closes_its_session_at_its_expiry() {
    // A long fresh_secs: the expiry, not a refresh, ends the session.
    let w = world_with(TestHostOpts::default().set("cache.fresh_secs", 600));
    let at = porthole::time::now_unix() + 6;
    let e = porthole::time::format_expiry(at); // YYYYMMDDHHMMSSZ
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &e[0..4],
        &e[4..6],
        &e[6..8],
        &e[8..10],
        &e[10..12],
        &e[12..14]
    );
    w.host.control_plane().set_body(
        SVC,
        &web_service(SVC, &[KeySpec::new(&w.alice, ALICE).expires_at(&rfc3339)]),
    );
    let alice = w.live(&w.alice, ALICE);
    let out = finish(alice, WAIT);
    let now = porthole::time::now_unix();
    assert!(
        util::lossy(&out.stderr)
            .contains("porthole: your key for srv-web1 expired; closing the session"),
        "{}",
        util::lossy(&out.stderr)
    );
    assert!(
        (at..=at + 2).contains(&now),
        "closed at {now}, the key expired at {at}"
    );
    w.host.expect_event(
        "session.key_revoked expired",
        |e| e.is("session.key_revoked", &[("cause", "expired")]),
        WAIT,
    );
}

#[test]
fn an_interactive_session_gets_the_sentence_on_its_terminal() {
    let w = world();
    let mut c = w.host.ssh_cmd(INST, &w.alice).tty(true).spawn_pty(24, 80);
    c.send("echo typing-$((20+22))\n");
    assert!(c.wait_for("typing-42", WAIT), "{}", c.screen());
    w.list(&[&w.bob]);
    let revoked = Instant::now();
    assert!(
        c.wait_for(
            "porthole: your key was revoked for srv-web1; closing the session",
            Duration::from_secs(FRESH + 5)
        ),
        "{}",
        c.screen()
    );
    let st = c.wait(WAIT).expect("the client exits");
    assert!(!st.success());
    assert!(
        revoked.elapsed() <= Duration::from_secs(FRESH + 1),
        "{:?}",
        revoked.elapsed()
    );
    w.host.expect_event(
        "session.end key_revoked",
        |e| {
            e.is(
                "session.end",
                &[("reason", "key_revoked"), ("owner", ALICE)],
            )
        },
        WAIT,
    );
}

/// `/proc/<pid>/status` field as its whitespace-separated values.
fn status_field(pid: u32, key: &str) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")).map(str::to_owned))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_refresh_runs_like_sshds_hook_as_the_keys_user_with_nothing_inherited() {
    let w = world();
    let mut alice = w.live(&w.alice, ALICE);
    let supervisor = w
        .host
        .expect_event(
            "session.start",
            |e| e.is("session.start", &[("owner", ALICE)]),
            WAIT,
        )
        .pid;
    // A slow control plane keeps the next refresh running long enough to
    // look at it.
    let body = web_service(SVC, &[KeySpec::new(&w.alice, ALICE)]);
    w.host
        .control_plane()
        .set_reply(SVC, Reply::json(&body).delay(Duration::from_millis(2500)));
    let hook = util::wait_for(Duration::from_secs(FRESH + 5), || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let ours = args.first()?.ends_with(b"/bin/porthole-keys")
                && args.get(1) == Some(&&b"--refresh"[..])
                && args.get(2) == Some(&SVC.as_bytes())
                && status_field(pid, "PPid") == [supervisor.to_string()];
            ours.then_some(pid)
        })
    })
    .expect("no porthole-keys --refresh child of the supervisor");
    let p = w.host.ids().porthole.to_string();
    assert_eq!(status_field(hook, "Uid"), vec![p.clone(); 4], "uids");
    assert_eq!(status_field(hook, "Gid"), vec![p.clone(); 4], "gids");
    assert_eq!(status_field(hook, "Groups"), [p], "supplementary groups");
    assert_eq!(
        std::fs::read(format!("/proc/{hook}/environ")).unwrap(),
        b"PATH=/usr/bin:/bin:/usr/sbin:/sbin\0",
        "environment"
    );
    assert_eq!(
        // SAFETY: getsid has no memory effects.
        unsafe { libc::getsid(hook as i32) },
        hook as i32,
        "own session"
    );
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{hook}/fd/{fd}")).unwrap();
        assert_eq!(target, std::path::Path::new("/dev/null"), "fd {fd}");
    }
    // Nothing of the session: no terminal, pipe, pidfd or signalfd (the
    // hook's own files and sockets are fine).
    for e in std::fs::read_dir(format!("/proc/{hook}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(e.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        assert!(
            !["/dev/pts", "/dev/ptmx", "pipe:", "pidfd", "signalfd"]
                .iter()
                .any(|bad| target.contains(bad)),
            "fd {:?} -> {target}",
            e.file_name()
        );
    }
    // The slow answer still lists the key: the session goes on.
    std::thread::sleep(Duration::from_secs(4));
    assert!(running(&mut alice), "closed by a slow control plane");
    stop(alice);
}

#[test]
fn keys_hook_refresh_mode_prints_nothing_and_keeps_the_single_flight() {
    // No instance needed: the hook alone, as the keys user, like sshd runs it.
    let host = TestHost::start(TestHostOpts::default().set("cache.fresh_secs", FRESH));
    let key = host.key(KeyKind::Ed25519);
    let cp = host.control_plane();
    cp.set_body(SVC, &web_service(SVC, &[KeySpec::new(&key, ALICE)]));
    let r = host.run_keys_hook(&["--refresh", SVC]);
    assert_eq!(r.output.status.code(), Some(0), "{:?}", r.output);
    assert!(r.output.stdout.is_empty(), "refresh prints nothing");
    assert_eq!(cp.requests(SVC), 1);
    assert!(host.cache_dir().join(format!("{SVC}.json")).is_file());
    // Fresh: nothing asked.
    let r = host.run_keys_hook(&["--refresh", SVC]);
    assert_eq!(r.output.status.code(), Some(0));
    assert_eq!(cp.requests(SVC), 1);
    // Stale, and five supervisors refresh at once: one request.
    std::thread::sleep(Duration::from_secs(FRESH));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|_| s.spawn(|| host.run_keys_hook(&["--refresh", SVC])))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().output.status.code(), Some(0));
        }
    });
    assert_eq!(cp.requests(SVC), 2, "single flight");
    // One keys.refresh event per run (syslog delivery is asynchronous).
    let count = || {
        host.events()
            .into_iter()
            .filter(|e| e.name() == "keys.refresh")
            .count()
    };
    util::wait_for(WAIT, || (count() >= 7).then_some(()));
    assert_eq!(count(), 7);
    // Stale and the control plane fails: exit 1, still nothing printed.
    std::thread::sleep(Duration::from_secs(FRESH));
    cp.set_reply(SVC, Reply::status(503));
    let r = host.run_keys_hook(&["--refresh", SVC]);
    assert_eq!(r.output.status.code(), Some(1), "{:?}", r.output);
    assert!(r.output.stdout.is_empty());
    // The refresh mode takes a service, not sshd's key arguments.
    let r = host.run_keys_hook(&["--refresh", SVC, &key.fingerprint]);
    assert_ne!(r.output.status.code(), Some(0));
    assert!(r.output.stdout.is_empty());
}
