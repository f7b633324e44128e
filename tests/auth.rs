#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 2, end to end: the real sshd (private mount namespace, loopback
//! port) with our NSS module, keys hook and drop-in, the real `ssh` client,
//! and a real HTTP control plane on 127.0.0.1.
//!
//! These tests do not depend on the session shell: the harness runs them in
//! [`SessionMode::AuthProbe`], where the ForceCommand is
//! `echo porthole-auth-ok $USER`, so a successful login prints that line.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

const SVC: &str = "srv-abc123";
const OWNER: &str = "alice@example.com";
/// Budget for one keys-hook call in these tests (control_plane.timeout_ms).
const BUDGET_MS: u64 = 1000;
const EVENT_WAIT: Duration = Duration::from_secs(5);

fn host() -> TestHost {
    TestHost::start(TestHostOpts::auth_probe().timeout_ms(BUDGET_MS))
}

fn host_with(opts: TestHostOpts) -> TestHost {
    TestHost::start(opts)
}

/// The control plane lists exactly `keys` for `service` (paid web service).
fn list(host: &TestHost, service: &str, keys: &[KeySpec]) {
    host.control_plane()
        .set_body(service, &web_service(service, keys));
}

fn assert_refused_by_hook(host: &TestHost, r: &SshRun, service: &str) {
    assert_refused(r, service);
    host.expect_event(
        &format!("keys.decision for {service} (was the hook asked at all?)"),
        |e| e.name() == "keys.decision" && e.str("service") == Some(service),
        EVENT_WAIT,
    );
    assert!(
        !host
            .sshd_log()
            .contains(&format!("Invalid user {service} from")),
        "sshd did not know {service}: the NSS module did not resolve it"
    );
}

fn decision_with(host: &TestHost, service: &str, fields: &[(&str, &str)]) -> LogEvent {
    host.expect_event(
        &format!("keys.decision for {service} with {fields:?}"),
        |e| e.is("keys.decision", fields) && e.str("service") == Some(service),
        EVENT_WAIT,
    )
}

// ----- harness anchors (independent of porthole's hooks) -----------------------

#[test]
fn harness_plain_user_logs_in_through_the_test_sshd() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    host.authorize_plainuser(&key);
    let r = host.ssh(PLAIN_USER, &key, &["id -un"]);
    assert!(r.success(), "{}", r.describe());
    assert_eq!(r.stdout_str().trim(), PLAIN_USER);
}

#[test]
fn sshd_accepts_the_test_configuration() {
    let host = host_with(TestHostOpts::default());
    let out = host.sshd_test(&["-t"]);
    assert!(
        out.status.success(),
        "sshd -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn drop_in_applies_to_service_logins_only() {
    let host = host_with(TestHostOpts::default());
    let bin = host.bin_dir();
    let effective = |spec: &str| {
        let out = host.sshd_test(&["-T", "-C", spec]);
        assert!(
            out.status.success(),
            "sshd -T -C {spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let srv = effective("user=srv-abc123,host=h,addr=127.0.0.1");
    let has = |text: &str, line: &str| text.lines().any(|l| l.trim() == line);
    for line in [
        format!(
            "authorizedkeyscommand {}/porthole-keys %u %f %t %k",
            bin.display()
        ),
        "authorizedkeyscommanduser porthole".into(),
        "authorizedkeysfile none".into(),
        format!("forcecommand {}/porthole-shell", bin.display()),
        "disableforwarding yes".into(),
        "permittunnel no".into(),
        "permituserrc no".into(),
        "exposeauthinfo yes".into(),
        "permittty yes".into(),
        "passwordauthentication no".into(),
        "kbdinteractiveauthentication no".into(),
        "authenticationmethods publickey".into(),
        "clientaliveinterval 60".into(),
        "clientalivecountmax 3".into(),
        "channeltimeout session=8h".into(),
    ] {
        assert!(has(&srv, &line), "srv-abc123 lacks {line:?}:\n{srv}");
    }
    let root = effective("user=root,host=h,addr=127.0.0.1");
    for key in [
        "forcecommand",
        "authorizedkeyscommand",
        "authorizedkeyscommanduser",
    ] {
        let v = root
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or("");
        assert!(
            v.is_empty() || v.trim() == format!("{key} none"),
            "root must not get {v:?}"
        );
    }
    assert!(has(&root, "disableforwarding no"), "{root}");
    assert!(!has(&root, "exposeauthinfo yes"), "{root}");
    assert!(!has(&root, "authorizedkeysfile none"), "{root}");
    assert!(!has(&root, "channeltimeout session=8h"), "{root}");
}

#[test]
fn shipped_drop_in_names_the_installed_paths() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sshd_config.d/10-porthole.conf"
    ))
    .unwrap();
    let active: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(active.first().copied(), Some("Match User srv-*,srv"));
    assert!(active.contains(&"AuthorizedKeysCommand /usr/lib/porthole/porthole-keys %u %f %t %k"));
    assert!(active.contains(&"ForceCommand /usr/lib/porthole/porthole-shell"));
    assert!(active.contains(&"AuthorizedKeysCommandUser porthole"));
    assert_eq!(
        active.iter().filter(|l| l.starts_with("Match")).count(),
        1,
        "one Match block only"
    );
}

// ----- which keys get in ---------------------------------------------------------

#[test]
fn listed_key_is_accepted() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    list(
        &host,
        SVC,
        &[KeySpec::new(&key, OWNER).name("Personal Laptop")],
    );
    let r = host.ssh(SVC, &key, &[]);
    assert_accepted(&r, SVC);
    let e = decision_with(&host, SVC, &[("outcome", "accepted")]);
    assert_eq!(e.str("owner"), Some(OWNER));
    assert_eq!(e.str("fingerprint"), Some(key.fingerprint.as_str()));
    assert!(e.get("ms").is_some(), "no ms in {}", e.raw);
    decision_with(&host, SVC, &[("source", "api")]);
    let req = &host.control_plane().request_log()[0];
    assert_eq!(req.path, format!("/v1/services/{SVC}/ssh"));
    assert_eq!(
        req.authorization.as_deref(),
        Some(format!("Bearer {}", host.token()).as_str())
    );
    assert!(host.wait_sshd_log(&format!("Accepted publickey for {SVC}"), EVENT_WAIT));
}

#[test]
fn unlisted_key_is_refused() {
    let host = host();
    let listed = host.key(KeyKind::Ed25519);
    let stranger = host.new_key(KeyKind::Ed25519, "stranger");
    list(&host, SVC, &[KeySpec::new(&listed, OWNER)]);
    let r = host.ssh(SVC, &stranger, &[]);
    assert_refused_by_hook(&host, &r, SVC);
    let e = decision_with(&host, SVC, &[("outcome", "no-match")]);
    assert_eq!(e.str("fingerprint"), Some(stranger.fingerprint.as_str()));
}

#[test]
fn key_of_another_service_is_refused() {
    let host = host();
    let a = host.new_key(KeyKind::Ed25519, "service-a");
    let b = host.new_key(KeyKind::Ed25519, "service-b");
    list(&host, "srv-aaa111", &[KeySpec::new(&a, "a@example.com")]);
    list(&host, "srv-bbb222", &[KeySpec::new(&b, "b@example.com")]);
    assert_refused_by_hook(&host, &host.ssh("srv-bbb222", &a, &[]), "srv-bbb222");
    assert_refused_by_hook(&host, &host.ssh("srv-aaa111", &b, &[]), "srv-aaa111");
    assert_accepted(&host.ssh("srv-aaa111", &a, &[]), "srv-aaa111");
}

#[test]
fn expired_key_is_refused() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    list(
        &host,
        "srv-old1",
        &[KeySpec::new(&key, OWNER).expires_at("2020-01-01T00:00:00Z")],
    );
    list(
        &host,
        "srv-new1",
        &[KeySpec::new(&key, OWNER).expires_at("2099-12-31T00:00:00Z")],
    );
    assert_refused_by_hook(&host, &host.ssh("srv-old1", &key, &[]), "srv-old1");
    // A future expiry is printed as expiry-time= and still lets the key in.
    assert_accepted(&host.ssh("srv-new1", &key, &[]), "srv-new1");
}

#[test]
fn from_mismatch_is_refused() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    list(
        &host,
        SVC,
        &[KeySpec::new(&key, OWNER).from(&["203.0.113.0/24"])],
    );
    assert_refused_by_hook(&host, &host.ssh(SVC, &key, &[]), SVC);
}

#[test]
fn from_match_is_accepted() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    list(
        &host,
        SVC,
        &[KeySpec::new(&key, OWNER).from(&["203.0.113.0/24", "127.0.0.0/8"])],
    );
    assert_accepted(&host.ssh(SVC, &key, &[]), SVC);
}

fn key_type_case(kind: KeyKind, accepted: bool) {
    let host = host();
    let key = host.key(kind);
    list(&host, SVC, &[KeySpec::new(&key, OWNER)]);
    let r = host.ssh(SVC, &key, &[]);
    if accepted {
        assert_accepted(&r, SVC);
    } else {
        assert_refused_by_hook(&host, &r, SVC);
    }
}

#[test]
fn ed25519_key_is_accepted() {
    key_type_case(KeyKind::Ed25519, true);
}

#[test]
fn ecdsa_key_is_accepted() {
    key_type_case(KeyKind::Ecdsa, true);
}

#[test]
fn rsa_3072_key_is_accepted() {
    key_type_case(KeyKind::Rsa3072, true);
}

#[test]
fn rsa_1024_key_is_refused() {
    // sshd itself still takes 1024-bit RSA (RequiredRSASize 1024): the
    // refusal must come from the keys hook.
    key_type_case(KeyKind::Rsa1024, false);
}

// ----- when the control plane misbehaves -----------------------------------------

#[test]
fn control_plane_down_with_warm_cache_is_accepted() {
    let host = host_with(
        TestHostOpts::auth_probe()
            .timeout_ms(BUDGET_MS)
            .set("cache.fresh_secs", 1),
    );
    let key = host.key(KeyKind::Ed25519);
    list(&host, SVC, &[KeySpec::new(&key, OWNER)]);
    assert_accepted(&host.ssh(SVC, &key, &[]), SVC);
    host.control_plane().stop();
    // Past fresh_secs, so the hook has to ask, fails, and serves the cache.
    thread::sleep(Duration::from_millis(2100));
    let r = host.ssh(SVC, &key, &[]);
    assert_accepted(&r, SVC);
    decision_with(
        &host,
        SVC,
        &[("source", "stale-cache"), ("outcome", "accepted")],
    );
}

#[test]
fn control_plane_down_without_cache_is_refused_within_budget() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    list(&host, SVC, &[KeySpec::new(&key, OWNER)]);
    host.control_plane().stop();
    let r = host.ssh(SVC, &key, &[]);
    assert_refused_by_hook(&host, &r, SVC);
    assert!(
        r.elapsed < Duration::from_millis(BUDGET_MS + 2000),
        "refusal took {:?}",
        r.elapsed
    );
    decision_with(&host, SVC, &[("outcome", "refused")]);
}

#[test]
fn control_plane_slower_than_budget_is_refused_and_sshd_keeps_going() {
    let host = host_with(
        TestHostOpts::auth_probe()
            .timeout_ms(BUDGET_MS)
            .set("control_plane.failure_backoff_secs", 1),
    );
    let key = host.key(KeyKind::Ed25519);
    let body = web_service(SVC, &[KeySpec::new(&key, OWNER)]);
    let cp = host.control_plane();
    cp.set_reply(SVC, Reply::json(&body).delay(Duration::from_secs(30)));
    let r = host.ssh(SVC, &key, &[]);
    assert_refused_by_hook(&host, &r, SVC);
    assert!(
        r.elapsed < Duration::from_millis(3 * BUDGET_MS + 1000),
        "a stalled control plane held the login for {:?}",
        r.elapsed
    );
    // The stalled answer is still pending on the server; sshd is not stuck
    // and a timeout was not remembered as "no keys" (only as a failure, for
    // failure_backoff_secs).
    cp.set_body(SVC, &body);
    thread::sleep(Duration::from_millis(1100));
    let start = Instant::now();
    assert_accepted(&host.ssh(SVC, &key, &[]), SVC);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn control_plane_dripping_body_is_cut_at_the_budget() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    let body = web_service(SVC, &[KeySpec::new(&key, OWNER)]);
    // Headers at once, then 16 bytes every 200 ms: ~10 s for the body.
    host.control_plane()
        .set_reply(SVC, Reply::json(&body).drip(16, Duration::from_millis(200)));
    let r = host.ssh(SVC, &key, &[]);
    assert_refused_by_hook(&host, &r, SVC);
    assert!(
        r.elapsed < Duration::from_millis(3 * BUDGET_MS + 1000),
        "a dripping body held the login for {:?}",
        r.elapsed
    );
}

#[test]
fn control_plane_closing_mid_body_is_refused() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    let body = web_service(SVC, &[KeySpec::new(&key, OWNER)]);
    let half = body.to_string().len() / 2;
    host.control_plane()
        .set_reply(SVC, Reply::json(&body).close_after(half));
    assert_refused_by_hook(&host, &host.ssh(SVC, &key, &[]), SVC);
}

#[test]
fn unauthorized_401_is_refused_and_logged_loudly() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    list(&host, SVC, &[KeySpec::new(&key, OWNER)]);
    // The bastion's token (in the token file) is no longer the right one.
    host.control_plane().set_token("rotated-token");
    assert_refused_by_hook(&host, &host.ssh(SVC, &key, &[]), SVC);
    assert!(host.control_plane().requests(SVC) >= 1);
    let loud = host.expect_event(
        "at warning or worse mentioning 401",
        |e| e.severity <= 4 && e.raw.contains("401"),
        EVENT_WAIT,
    );
    assert_eq!(loud.facility, 10, "authpriv: {}", loud.raw);
    decision_with(&host, SVC, &[("outcome", "refused")]);
}

#[test]
fn garbage_json_is_refused() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    host.control_plane().set_reply(
        SVC,
        Reply::raw(200, "<html>502 upstream</html>").content_type("text/html"),
    );
    assert_refused_by_hook(&host, &host.ssh(SVC, &key, &[]), SVC);
}

#[test]
fn unknown_service_404_is_refused_and_remembered() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    // No reply programmed: the control plane answers 404.
    assert_refused_by_hook(&host, &host.ssh(SVC, &key, &[]), SVC);
    assert_refused_by_hook(&host, &host.ssh(SVC, &key, &[]), SVC);
    assert_eq!(
        host.control_plane().requests(SVC),
        1,
        "the 404 should be remembered (negative cache)"
    );
    decision_with(&host, SVC, &[("source", "negative")]);
}

#[test]
fn name_outside_the_grammar_is_an_invalid_user() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    for name in ["srv-ABC123", "srv-abc_123", "srv-abc123-d4e5", "srv-"] {
        list(&host, name, &[KeySpec::new(&key, OWNER)]);
        assert_refused(&host.ssh(name, &key, &[]), name);
        assert!(
            host.wait_sshd_log(&format!("Invalid user {name} from"), EVENT_WAIT),
            "sshd did not log \"Invalid user {name}\":\n{}",
            host.sshd_log()
        );
    }
    assert_eq!(host.control_plane().total_requests(), 0);
}

#[test]
fn burst_of_20_parallel_logins_makes_one_request() {
    let host = host_with(TestHostOpts::auth_probe().timeout_ms(5000));
    let key = host.key(KeyKind::Ed25519);
    let body = web_service(SVC, &[KeySpec::new(&key, OWNER)]);
    // Slow enough that the logins overlap while the first fetch is running
    // (without single-flight this makes 3-8 requests here).
    host.control_plane()
        .set_reply(SVC, Reply::json(&body).delay(Duration::from_millis(1000)));
    let runs: Vec<SshRun> = thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let cmd = host.ssh_cmd(SVC, &key).timeout(Duration::from_secs(60));
                s.spawn(move || cmd.run())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &runs {
        assert_accepted(r, SVC);
    }
    assert_eq!(host.control_plane().requests(SVC), 1);
}

// ----- issue 7: findings of the fuzzing, end to end --------------------------

/// A key listed twice is decided by its first listing: sshd tries every
/// line of a key, so a second, unrestricted listing used to lift the first
/// one's `from` (and revive a key whose first listing had expired).
#[test]
fn duplicate_listing_cannot_lift_from_or_revive_an_expired_key() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    list(
        &host,
        SVC,
        &[
            KeySpec::new(&key, OWNER).from(&["203.0.113.0/24"]),
            KeySpec::new(&key, "mallory@example.com"),
        ],
    );
    assert_refused_by_hook(&host, &host.ssh(SVC, &key, &[]), SVC);
    host.expect_event(
        "keys.skipped for the second listing",
        |e| {
            e.name() == "keys.skipped"
                && e.str("service") == Some(SVC)
                && e.str("reason")
                    .is_some_and(|r| r.contains("same key as entry 0"))
        },
        EVENT_WAIT,
    );
    list(
        &host,
        "srv-old1",
        &[
            KeySpec::new(&key, OWNER).expires_at("2020-01-01T00:00:00Z"),
            KeySpec::new(&key, OWNER),
        ],
    );
    assert_refused_by_hook(&host, &host.ssh("srv-old1", &key, &[]), "srv-old1");
}

/// A member named twice in a control-plane object keeps its first value: a
/// `"from": null` appended after the entry's `from` list does not drop it.
#[test]
fn duplicate_json_member_cannot_drop_from() {
    let host = host();
    let key = host.key(KeyKind::Ed25519);
    let body = format!(
        r#"{{"service":{{"id":"{SVC}","type":"web_service","plan":"starter"}},
            "keys":[{{"public_key":"{}","owner":"{OWNER}",
                      "from":["203.0.113.0/24"],"from":null}}]}}"#,
        key.public_line.trim()
    );
    host.control_plane().set_reply(SVC, Reply::raw(200, body));
    assert_refused_by_hook(&host, &host.ssh(SVC, &key, &[]), SVC);
}
