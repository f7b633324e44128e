#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 7, part 4: the control plane fails while logins go on — killed in
//! the middle of an answer, stopped and restarted, answering 500 for a full
//! minute, hanging. Logins whose service has a cached answer keep working
//! (served stale, logged as such), logins without one fail closed within
//! the budget, and once the control plane is back everything recovers with
//! nobody touching the bastion.
//!
//! Runs in [`SessionMode::AuthProbe`]: these are keys-hook faults, the
//! session shell is not involved. Every login's duration is measured by
//! the test (`SshRun::elapsed`, the whole `ssh` run) and bounded.

mod common;

use common::*;
use serde_json::Value;
use std::thread;
use std::time::{Duration, Instant};

/// Has a cached answer when the control plane fails.
const CACHED: &str = "srv-cached1";
/// Never asked about before the failure.
const NEW: &str = "srv-new1";
const OWNER: &str = "alice@example.com";
/// control_plane.timeout_ms in these tests.
const BUDGET_MS: u64 = 1000;
const EVENT_WAIT: Duration = Duration::from_secs(5);

/// A bastion where answers are fresh for 1 s only (so every login after
/// that asks the control plane) and both services list alice's key.
fn bastion(opts: TestHostOpts) -> (TestHost, ClientKey) {
    let host = TestHost::start(
        opts.timeout_ms(BUDGET_MS)
            .set("cache.fresh_secs", 1)
            .set("cache.stale_secs", 3600),
    );
    let key = host.key(KeyKind::Ed25519);
    for svc in [CACHED, NEW] {
        host.control_plane()
            .set_body(svc, &web_service(svc, &[KeySpec::new(&key, OWNER)]));
    }
    (host, key)
}

fn body(key: &ClientKey, svc: &str) -> Value {
    web_service(svc, &[KeySpec::new(key, OWNER)])
}

/// Logs in to CACHED once (answer cached) and waits until it is no longer
/// fresh, so the next login has to ask the control plane.
fn warm(host: &TestHost, key: &ClientKey) {
    assert_accepted(&host.ssh(CACHED, key, &[]), CACHED);
    thread::sleep(Duration::from_millis(2100));
}

/// A login that fails closed does so within one budget plus the cost of
/// an ssh handshake (generous: the machine is shared).
fn assert_fast(r: &SshRun, what: &str, bound: Duration) {
    assert!(
        r.elapsed < bound,
        "{what} took {:?} (bound {bound:?})",
        r.elapsed
    );
}

fn refusal_bound() -> Duration {
    Duration::from_millis(BUDGET_MS + 2000)
}

/// How many `keys.decision` events about `svc` have these fields.
fn decisions_with(host: &TestHost, svc: &str, fields: &[(&str, &str)]) -> usize {
    host.decisions(svc)
        .iter()
        .filter(|e| e.is("keys.decision", fields))
        .count()
}

fn wait_decision(host: &TestHost, svc: &str, fields: &[(&str, &str)]) -> LogEvent {
    host.expect_event(
        &format!("keys.decision for {svc} with {fields:?}"),
        |e| e.is("keys.decision", fields) && e.str("service") == Some(svc),
        EVENT_WAIT,
    )
}

fn cached_fetched_at(host: &TestHost, svc: &str) -> i64 {
    let text = std::fs::read_to_string(host.cache_dir().join(format!("{svc}.json"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["fetched_at"].as_i64().unwrap()
}

// ----- killed mid-response ----------------------------------------------------------

#[test]
fn control_plane_cut_mid_response_serves_stale_and_refuses_new_logins_fast() {
    let (host, key) = bastion(TestHostOpts::auth_probe());
    warm(&host, &key);
    let cp = host.control_plane();
    // Headers with the full Content-Length, half the body, then the
    // connection closes: a control plane that died while answering.
    for svc in [CACHED, NEW] {
        let b = body(&key, svc);
        let half = b.to_string().len() / 2;
        cp.set_reply(svc, Reply::json(&b).close_after(half));
    }
    let r = host.ssh(CACHED, &key, &[]);
    assert_accepted(&r, CACHED);
    wait_decision(
        &host,
        CACHED,
        &[("source", "stale-cache"), ("outcome", "accepted")],
    );
    host.expect_event(
        "keys.control_plane_error serving stale-cache",
        |e| {
            e.is("keys.control_plane_error", &[("serving", "stale-cache")])
                && e.str("service") == Some(CACHED)
        },
        EVENT_WAIT,
    );
    let r = host.ssh(NEW, &key, &[]);
    assert_refused(&r, NEW);
    eprintln!("cut mid-response: refusal took {:?}", r.elapsed);
    assert_fast(
        &r,
        "refusal of a login without a cached answer",
        refusal_bound(),
    );
    wait_decision(&host, NEW, &[("source", "none"), ("outcome", "refused")]);
    assert!(cp.requests(CACHED) >= 2 && cp.requests(NEW) >= 1);
}

#[test]
fn control_plane_process_killed_while_answering_serves_stale_and_refuses_fast() {
    let (host, key) = bastion(TestHostOpts::auth_probe());
    warm(&host, &key);
    let cp = host.control_plane();
    // Both answers drip (16 bytes every 100 ms: seconds per body); the
    // server is stopped while the hooks are reading them.
    for svc in [CACHED, NEW] {
        cp.set_reply(
            svc,
            Reply::json(&body(&key, svc)).drip(16, Duration::from_millis(100)),
        );
    }
    let (cached, new) = thread::scope(|s| {
        let c = s.spawn(|| host.ssh(CACHED, &key, &[]));
        let n = s.spawn(|| host.ssh(NEW, &key, &[]));
        // Wait until both hooks are connected and reading.
        assert!(
            util::wait_for(Duration::from_secs(5), || (cp.requests(CACHED) >= 2
                && cp.requests(NEW) >= 1)
                .then_some(()))
            .is_some()
        );
        thread::sleep(Duration::from_millis(150));
        cp.stop();
        (c.join().unwrap(), n.join().unwrap())
    });
    assert_accepted(&cached, CACHED);
    wait_decision(
        &host,
        CACHED,
        &[("source", "stale-cache"), ("outcome", "accepted")],
    );
    assert_refused(&new, NEW);
    eprintln!(
        "killed while answering: stale login {:?}, refusal {:?}",
        cached.elapsed, new.elapsed
    );
    assert_fast(
        &new,
        "refusal while the control plane died",
        refusal_bound(),
    );
    assert_fast(
        &cached,
        "stale login while the control plane died",
        Duration::from_millis(2 * BUDGET_MS + 2000),
    );
}

// ----- stopped, then restarted ------------------------------------------------------

#[test]
fn control_plane_stopped_then_restarted_recovers_without_intervention() {
    let (host, key) =
        bastion(TestHostOpts::auth_probe().set("control_plane.failure_backoff_secs", 2));
    warm(&host, &key);
    let cp = host.control_plane();
    cp.stop();
    let r = host.ssh(CACHED, &key, &[]);
    assert_accepted(&r, CACHED);
    let r = host.ssh(NEW, &key, &[]);
    assert_refused(&r, NEW);
    eprintln!("control plane stopped: refusal took {:?}", r.elapsed);
    assert_fast(&r, "refusal with the control plane down", refusal_bound());
    cp.restart();
    cp.reset_counts();
    let before = cached_fetched_at(&host, CACHED);
    // Past the failure backoff: nothing remembered about the outage may
    // keep refusing (no negative answer, no stuck lock).
    thread::sleep(Duration::from_millis(2100));
    let r = host.ssh(NEW, &key, &[]);
    assert_accepted(&r, NEW);
    assert_fast(&r, "first login after the restart", Duration::from_secs(3));
    let r = host.ssh(CACHED, &key, &[]);
    assert_accepted(&r, CACHED);
    assert!(cp.requests(NEW) >= 1 && cp.requests(CACHED) >= 1);
    assert!(cached_fetched_at(&host, CACHED) > before);
    assert!(decisions_with(&host, NEW, &[("source", "api"), ("outcome", "accepted")]) >= 1);
    assert!(decisions_with(&host, CACHED, &[("source", "api"), ("outcome", "accepted")]) >= 2);
    // A service nobody asked about during the outage works too.
    let third = "srv-third1";
    cp.set_body(third, &body(&key, third));
    assert_accepted(&host.ssh(third, &key, &[]), third);
}

// ----- a minute of 500s ------------------------------------------------------------

#[test]
fn control_plane_answering_500_for_a_minute_then_recovering() {
    let (host, key) =
        bastion(TestHostOpts::auth_probe().set("control_plane.failure_backoff_secs", 2));
    warm(&host, &key);
    let cp = host.control_plane();
    for svc in [CACHED, NEW] {
        cp.set_reply(svc, Reply::status(500));
    }
    let before = cached_fetched_at(&host, CACHED);
    let outage = Instant::now();
    let (mut cached_times, mut refused_times) = (Vec::new(), Vec::new());
    while outage.elapsed() < Duration::from_secs(60) {
        let r = host.ssh(CACHED, &key, &[]);
        assert_accepted(&r, CACHED);
        assert_fast(
            &r,
            "login with a cached answer during the outage",
            refusal_bound(),
        );
        cached_times.push(r.elapsed);
        let r = host.ssh(NEW, &key, &[]);
        assert_refused(&r, NEW);
        assert_fast(&r, "refusal during the outage", refusal_bound());
        refused_times.push(r.elapsed);
        thread::sleep(Duration::from_millis(1500));
    }
    let outage_requests = cp.requests(CACHED) + cp.requests(NEW);
    eprintln!(
        "500 outage: {} cached logins (max {:?}), {} refusals (max {:?}), {} control-plane requests in 60 s",
        cached_times.len(),
        cached_times.iter().max().unwrap(),
        refused_times.len(),
        refused_times.iter().max().unwrap(),
        outage_requests
    );
    assert!(cached_times.len() >= 10, "too few attempts in the minute");
    // The cache was served, not refreshed, during the outage.
    assert_eq!(cached_fetched_at(&host, CACHED), before);
    assert!(decisions_with(&host, CACHED, &[("source", "stale-cache")]) >= cached_times.len());
    // The control plane answers again.
    cp.reset_counts();
    for svc in [CACHED, NEW] {
        cp.set_body(svc, &body(&key, svc));
    }
    let recovered = Instant::now();
    let first_ok = util::wait_for(Duration::from_secs(10), || {
        host.ssh(NEW, &key, &[]).success().then_some(())
    });
    assert!(first_ok.is_some(), "the new service never recovered");
    eprintln!(
        "recovery of the uncached service took {:?}",
        recovered.elapsed()
    );
    assert!(recovered.elapsed() < Duration::from_secs(2 + 5));
    assert_accepted(&host.ssh(CACHED, &key, &[]), CACHED);
    assert!(
        cp.requests(NEW) >= 1 && cp.requests(CACHED) >= 1,
        "no requests after recovery"
    );
    assert!(
        cached_fetched_at(&host, CACHED) > before,
        "the cache was not refreshed"
    );
    wait_decision(&host, NEW, &[("source", "api"), ("outcome", "accepted")]);
}

// ----- hanging --------------------------------------------------------------------

/// A control plane that accepts and never answers costs the first login
/// one budget; the hook remembers the failure for failure_backoff_secs, so
/// the second hook call of that login, a burst of further logins and the
/// logins right after it do not wait again.
#[test]
fn hung_control_plane_costs_one_budget_not_one_per_hook_call() {
    let (host, key) =
        bastion(TestHostOpts::auth_probe().set("control_plane.failure_backoff_secs", 30));
    warm(&host, &key);
    let cp = host.control_plane();
    for svc in [CACHED, NEW] {
        cp.set_reply(
            svc,
            Reply::json(&body(&key, svc)).delay(Duration::from_secs(60)),
        );
    }
    cp.reset_counts();
    let earlier = host.decisions(CACHED).len();
    let first = host.ssh(CACHED, &key, &[]);
    assert_accepted(&first, CACHED);
    assert_fast(
        &first,
        "first stale login against a hung control plane",
        Duration::from_millis(BUDGET_MS + 1500),
    );
    // A burst of 10 parallel logins during the backoff: all served from
    // the stale answer without waiting for the control plane.
    let burst: Vec<SshRun> = thread::scope(|s| {
        let hs: Vec<_> = (0..10)
            .map(|_| s.spawn(|| host.ssh(CACHED, &key, &[])))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &burst {
        assert_accepted(r, CACHED);
    }
    let slowest = burst.iter().map(|r| r.elapsed).max().unwrap();
    eprintln!(
        "hung control plane: first stale login {:?}, slowest of a burst of 10 {:?}",
        first.elapsed, slowest
    );
    assert_eq!(cp.requests(CACHED), 1, "asked the hung control plane again");
    // The hook's own time per call (the `ms` of each decision): the first
    // call waited for the budget, every later one (the first login's
    // second call, the whole burst) answered at once from the stale cache.
    let calls: Vec<u64> = host.decisions(CACHED)[earlier..]
        .iter()
        .map(|e| e.u64("ms").unwrap())
        .collect();
    eprintln!("hook call times (ms) against the hung control plane: {calls:?}");
    assert!(calls.len() >= 2 + 2 * 10, "{calls:?}");
    assert!(calls[0] >= BUDGET_MS - 100, "{calls:?}");
    assert!(calls[1..].iter().all(|&ms| ms < 250), "{calls:?}");
    // Without the backoff each of these logins makes two hook calls that
    // each wait out the budget.
    assert!(
        slowest < Duration::from_millis(2 * BUDGET_MS),
        "the burst waited for the hung control plane: {slowest:?}"
    );
    host.expect_event(
        "a decision that names the remembered failure",
        |e| {
            e.name() == "keys.control_plane_error"
                && e.str("error")
                    .is_some_and(|m| m.contains("not asking again"))
        },
        EVENT_WAIT,
    );
    // Backoff off (0): every hook call waits for the control plane again,
    // which is what the backoff saves: two budgets per stale login.
    host.set_config("control_plane.failure_backoff_secs", 0);
    let r = host.ssh(CACHED, &key, &[]);
    assert_accepted(&r, CACHED);
    eprintln!(
        "hung control plane without backoff: stale login {:?}",
        r.elapsed
    );
    assert!(
        r.elapsed > Duration::from_millis(2 * BUDGET_MS - 200),
        "{:?}",
        r.elapsed
    );
}
