#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The admin CLI against a real bastion: `porthole doctor` passes on the
//! harness's working setup and names each piece an admin breaks.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

fn doctor(host: &TestHost) -> (bool, String) {
    let out = host.in_ns(&[env!("CARGO_BIN_EXE_porthole"), "doctor"]);
    let text = format!("{}{}", util::lossy(&out.stdout), util::lossy(&out.stderr));
    (out.status.success(), text)
}

fn line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(&format!("] {name:<16}")) || l.contains(&format!("] {name} ")))
        .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
}

#[test]
fn doctor_passes_on_a_working_bastion() {
    let host = TestHost::start(TestHostOpts::default());
    let _i = Instance::start(&host, "srv-web1", "aaaaa", InstanceOpts::default());
    let (ok, text) = doctor(&host);
    assert!(ok, "{text}");
    assert!(
        line(&text, "runtime roots").contains("1 running instance"),
        "{text}"
    );
    assert!(line(&text, "NSS module").starts_with("[ ok ]"), "{text}");
    assert!(line(&text, "picker").starts_with("[ ok ]"), "{text}");
}

#[test]
fn doctor_names_a_setuid_picker() {
    let host = TestHost::start(TestHostOpts::default());
    let picker = host.bin_dir().join("porthole-picker");
    std::fs::set_permissions(&picker, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let (ok, text) = doctor(&host);
    assert!(!ok, "{text}");
    assert!(line(&text, "picker").starts_with("[FAIL]"), "{text}");
    assert!(
        line(&text, "picker").contains("must not be setuid"),
        "{text}"
    );
}

#[test]
fn doctor_names_the_broken_piece() {
    let host = TestHost::start(TestHostOpts::default());
    let shell = host.bin_dir().join("porthole-shell");
    std::fs::set_permissions(&shell, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ns = host.dir().join("etc/nsswitch.conf");
    let text = std::fs::read_to_string(&ns).unwrap();
    std::fs::write(&ns, text.replace(" porthole", "")).unwrap();
    host.control_plane().set_token("rotated-elsewhere");
    let (ok, text) = doctor(&host);
    assert!(!ok, "{text}");
    assert!(line(&text, "session shell").starts_with("[FAIL]"), "{text}");
    assert!(
        line(&text, "session shell").contains("dpkg-statoverride"),
        "{text}"
    );
    assert!(
        line(&text, "nsswitch passwd").contains("add `porthole` after `files`"),
        "{text}"
    );
    assert!(line(&text, "NSS module").starts_with("[FAIL]"), "{text}");
    assert!(line(&text, "control plane").contains("token"), "{text}");
    assert!(line(&text, "configuration").starts_with("[ ok ]"), "{text}");
}

#[test]
fn doctor_instance_reports_what_a_session_would_get() {
    let host = TestHost::start(TestHostOpts::default());
    let _a = Instance::start(
        &host,
        "srv-web1",
        "aaaaa",
        InstanceOpts::default().app_user(),
    );
    let _b = Instance::start(
        &host,
        "srv-web1",
        "bbbbb",
        InstanceOpts::default()
            .app_user()
            .login_shell("/usr/sbin/nologin"),
    );
    let run = |name: &str| {
        let out = host.in_ns(&[env!("CARGO_BIN_EXE_porthole"), "doctor", "--instance", name]);
        (
            out.status.success(),
            format!("{}{}", util::lossy(&out.stdout), util::lossy(&out.stderr)),
        )
    };
    let (ok, text) = run("srv-web1-aaaaa");
    assert!(ok, "{text}");
    assert!(line(&text, "user").contains("uid 1000 is app"), "{text}");
    assert!(
        line(&text, "login shell").contains("/bin/sh is executable"),
        "{text}"
    );
    assert!(line(&text, "home").contains("/home/app exists"), "{text}");
    assert!(line(&text, "memory").contains("of 256 MiB"), "{text}");
    let (_, text) = run("srv-web1-bbbbb");
    assert!(
        line(&text, "login shell").contains("fall back to /bin/sh"),
        "{text}"
    );
    let (ok, text) = run("srv-web1-zzzzz");
    assert!(!ok);
    assert!(
        line(&text, "instance").contains("srv-web1-zzzzz is not running"),
        "{text}"
    );
}

/// Issue 12: a token never crosses a network in clear. A plain `http://`
/// control plane that is not loopback, with a token file, is refused by
/// every program (the hook logs the sentence, doctor and check-config
/// print it) until the admin sets `allow_insecure_http = true`.
#[test]
fn plain_http_control_plane_with_a_token_is_refused_unless_allowed() {
    const SENTENCE: &str = "the bearer token would cross the network in clear";
    let host = TestHost::start(TestHostOpts::auth_probe().timeout_ms(500));
    let key = host.key(KeyKind::Ed25519);
    host.control_plane().set_body(
        "srv-web1",
        &web_service("srv-web1", &[KeySpec::new(&key, "alice@example.com")]),
    );
    assert_accepted(&host.ssh("srv-web1", &key, &[]), "srv-web1");
    // 192.0.2.1 (TEST-NET-1) is never routed: a request would time out.
    host.set_config("control_plane.url", "http://192.0.2.1:8080");
    assert_refused(&host.ssh("srv-web2", &key, &[]), "srv-web2");
    let e = host.expect_event(
        "keys.decision refusing the insecure configuration",
        |e| e.is("keys.decision", &[("outcome", "refused")]) && e.str("user") == Some("srv-web2"),
        std::time::Duration::from_secs(5),
    );
    assert!(e.str("reason").unwrap().contains(SENTENCE), "{}", e.raw);
    assert_eq!(e.severity, 3, "an error for the admin: {}", e.raw);
    let (ok, text) = doctor(&host);
    assert!(!ok, "{text}");
    assert!(line(&text, "configuration").starts_with("[FAIL]"), "{text}");
    assert!(line(&text, "configuration").contains(SENTENCE), "{text}");
    let out = host.in_ns(&[env!("CARGO_BIN_EXE_porthole"), "check-config"]);
    assert!(!out.status.success());
    assert!(util::lossy(&out.stderr).contains(SENTENCE), "{out:?}");

    // Allowed explicitly: the configuration is valid and the hook asks
    // (and, the address being unroutable, finds the plane unavailable).
    host.set_config("control_plane.allow_insecure_http", true);
    let out = host.in_ns(&[env!("CARGO_BIN_EXE_porthole"), "check-config"]);
    assert!(out.status.success(), "{out:?}");
    let (_, text) = doctor(&host);
    assert!(line(&text, "configuration").starts_with("[ ok ]"), "{text}");
    assert_refused(&host.ssh("srv-web3", &key, &[]), "srv-web3");
    let e = host.expect_event(
        "keys.decision after asking the allowed plain-http plane",
        |e| e.name() == "keys.decision" && e.str("service") == Some("srv-web3"),
        std::time::Duration::from_secs(5),
    );
    assert!(
        e.str("reason")
            .unwrap()
            .contains("control plane unavailable"),
        "{}",
        e.raw
    );
}

#[test]
fn doctor_reports_conflicting_claims_and_untrusted_runtime_state() {
    let host = TestHost::start(TestHostOpts::default());
    let _a = Instance::start(&host, "srv-web1", "aaaaa", InstanceOpts::default());
    let _b = Instance::start(&host, "srv-web1", "bbbbb", InstanceOpts::default());
    let _impostor = Instance::start(
        &host,
        "srv-web1",
        "aaaaa",
        InstanceOpts::default().id("zz-impostor"),
    );
    let (ok, text) = doctor(&host);
    assert!(!ok, "{text}");
    let roots = line(&text, "runtime roots");
    assert!(roots.starts_with("[FAIL]"), "{text}");
    assert!(
        roots.contains(
            "instance srv-web1-aaaaa is claimed by two containers (srv-web1-aaaaa, zz-impostor)"
        ),
        "{text}"
    );
    let out = host.in_ns(&[
        env!("CARGO_BIN_EXE_porthole"),
        "doctor",
        "--instance",
        "srv-web1-aaaaa",
    ]);
    let text = format!("{}{}", util::lossy(&out.stdout), util::lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(
        line(&text, "instance").contains("refusing to choose"),
        "{text}"
    );
    // A state file that is not root's: reported, and its container ignored.
    let state = host.runc_root().join("srv-web1-bbbbb/state.json");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o7777;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (_, text) = doctor(&host);
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(mode)).unwrap();
    let roots = line(&text, "runtime roots");
    assert!(
        roots.contains(&format!(
            "{} is writable by group or others (mode 0666)",
            state.display()
        )),
        "{text}"
    );
    assert!(roots.contains("2 running instance(s)"), "{text}");
}
