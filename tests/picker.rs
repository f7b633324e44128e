#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 20, end to end: `ssh srv@host` shows a menu of the services the
//! key may enter, through the real sshd (the NSS module resolves `srv`,
//! the keys hook asks `GET /v1/keys/{fingerprint}/services`), the setuid
//! session shell and the unprivileged porthole-picker, driven from a real
//! pty like a developer's terminal; then the chosen instance's ordinary
//! session.

mod common;

use common::ssh::PtyClient;
use common::*;
use serde_json::Value;
use std::time::Duration;

const OWNER: &str = "alice@example.com";
const WAIT: Duration = Duration::from_secs(15);
const DOWN: &str = "\x1b[B";

struct World {
    host: TestHost,
    key: ClientKey,
    _instances: Vec<Instance>,
}

/// `srv-site` (a static site) and `srv-web1` (a paid web service with the
/// instances aaaaa and bbbbb) list alice's key; `srv-other` lists only
/// another key.
fn world() -> World {
    let host = TestHost::start(TestHostOpts::default());
    let key = host.key(KeyKind::Ed25519);
    let other = host.new_key(KeyKind::Ed25519, "bob");
    let cp = host.control_plane();
    cp.set_body(
        "srv-web1",
        &web_service("srv-web1", &[KeySpec::new(&key, OWNER)]),
    );
    cp.set_body(
        "srv-site",
        &v1_body(
            "srv-site",
            "static_site",
            "starter",
            &[KeySpec::new(&key, OWNER)],
        ),
    );
    cp.set_body(
        "srv-other",
        &web_service("srv-other", &[KeySpec::new(&other, "bob@example.com")]),
    );
    let opts = || InstanceOpts::default().app_user();
    let instances = vec![
        Instance::start(&host, "srv-web1", "aaaaa", opts()),
        Instance::start(&host, "srv-web1", "bbbbb", opts()),
    ];
    World {
        host,
        key,
        _instances: instances,
    }
}

impl World {
    fn menu(&self, term: &str) -> PtyClient {
        self.host
            .ssh_cmd("srv", &self.key)
            .tty(true)
            .term(term)
            .spawn_pty(24, 80)
    }

    fn event(&self, name: &str) -> LogEvent {
        self.host.expect_event(name, |e| e.name() == name, WAIT)
    }
}

fn step(c: &PtyClient, keys: &str, expect: &str) {
    c.send(keys);
    assert!(
        c.wait_for(expect, WAIT),
        "after {keys:?}, no {expect:?} on screen:\n{}",
        c.screen()
    );
}

#[test]
fn the_menu_lists_the_keys_services_and_enters_the_chosen_instance() {
    let w = world();
    let mut c = w.menu("xterm");
    assert!(
        c.wait_for("[web_service]", WAIT),
        "no menu:\n{}",
        c.screen()
    );
    let screen = c.screen();
    assert!(screen.contains("srv-site"), "{screen}");
    assert!(
        screen.contains("static site"),
        "the reason is shown: {screen}"
    );
    assert!(screen.contains(OWNER), "{screen}");
    assert!(
        !screen.contains("srv-other"),
        "another key's service: {screen}"
    );
    // Redrawn on resize: the title is drawn again.
    let titles = |s: &str| s.matches("services your key").count();
    let before = titles(&c.screen());
    c.resize(30, 100);
    assert!(
        util::wait_for(WAIT, || (titles(&c.screen()) > before).then_some(())).is_some(),
        "no redraw after the resize:\n{}",
        c.screen()
    );
    step(&c, DOWN, "> srv-web1");
    step(&c, "\r", "instances of srv-web1");
    step(&c, DOWN, "> srv-web1-aaaaa");
    step(&c, DOWN, "> srv-web1-bbbbb");
    c.send("\r");
    std::thread::sleep(Duration::from_millis(500));
    step(&c, "echo HOST=$(hostname)\n", "HOST=srv-web1-bbbbb");
    c.send("exit 3\n");
    let st = c.wait(WAIT).expect("the client exits with the session");
    assert_eq!(st.code(), Some(3));
    let shown = w.event("picker.shown");
    assert_eq!(shown.str("owner"), Some(OWNER));
    assert_eq!(shown.str("mode"), Some("menu"));
    assert_eq!(shown.u64("services"), Some(2), "srv-site and srv-web1");
    assert_eq!(shown.u64("selectable"), Some(1));
    let chosen = w.event("picker.chosen");
    assert_eq!(chosen.str("instance"), Some("srv-web1-bbbbb"));
    assert_eq!(chosen.str("fingerprint"), Some(w.key.fingerprint.as_str()));
    let start = w.event("session.start");
    assert_eq!(start.str("instance"), Some("srv-web1-bbbbb"));
    assert_eq!(start.str("owner"), Some(OWNER));
    // The picker's question went to the control plane with the key's
    // fingerprint; the session's own answer was asked for too.
    assert!(w.host.control_plane().key_requests(&w.key.fingerprint) >= 1);
    assert!(w.host.control_plane().requests("srv-web1") >= 1);
}

#[test]
fn q_leaves_the_menu_without_a_session() {
    let w = world();
    let mut c = w.menu("xterm");
    assert!(c.wait_for("[web_service]", WAIT), "{}", c.screen());
    c.send("q");
    let st = c.wait(WAIT).expect("the client exits");
    assert_eq!(st.code(), Some(0));
    w.event("picker.shown");
    assert!(
        !w.host
            .events()
            .iter()
            .any(|e| e.name() == "session.start" || e.name() == "picker.chosen"),
        "{:?}",
        w.host.log_lines()
    );
}

#[test]
fn term_dumb_gets_a_numbered_list() {
    let w = world();
    let mut c = w.menu("dumb");
    assert!(c.wait_for("Number (q to quit)", WAIT), "{}", c.screen());
    let screen = c.screen();
    assert!(screen.contains("2) srv-web1"), "{screen}");
    assert!(
        screen.contains("srv-site (srv-site-app): no SSH"),
        "{screen}"
    );
    assert!(!screen.contains("\x1b["), "no escape sequences: {screen:?}");
    step(&c, "2\n", "3) srv-web1-bbbbb");
    c.send("2\n");
    std::thread::sleep(Duration::from_millis(500));
    step(&c, "echo HOST=$(hostname)\n", "HOST=srv-web1-aaaaa");
    c.send("exit\n");
    c.wait(WAIT).expect("the client exits");
    assert_eq!(w.event("picker.shown").str("mode"), Some("dumb"));
    assert_eq!(
        w.event("session.start").str("instance"),
        Some("srv-web1-aaaaa")
    );
}

#[test]
fn without_a_pty_a_table_and_with_json_a_document() {
    let w = world();
    let port = w.host.port();
    let r = w.host.ssh("srv", &w.key, &["--json"]);
    assert!(r.success(), "{}", r.describe());
    let doc: Value = serde_json::from_str(&r.stdout_str()).expect("--json parses");
    assert_eq!(doc["owner"], OWNER);
    let ids: Vec<&str> = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["srv-site", "srv-web1"]);
    let web = &doc["services"][1];
    assert_eq!(web["ssh_capable"], true);
    let logins: Vec<&str> = web["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["login"].as_str().unwrap())
        .collect();
    assert_eq!(logins, ["srv-web1-aaaaa", "srv-web1-bbbbb"]);
    let line = web["instances"][1]["ssh"].as_str().unwrap();
    assert!(
        line.starts_with(&format!("ssh -p {port} srv-web1-bbbbb@")),
        "{line}"
    );
    assert_eq!(doc["services"][0]["ssh_capable"], false);
    assert!(doc["services"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("static site"));
    // The table, with no command and no terminal.
    let r = w.host.ssh("srv", &w.key, &[]);
    assert!(r.success(), "{}", r.describe());
    let table = r.stdout_str();
    assert!(
        table.contains(&format!("ssh -p {port} srv-web1-aaaaa@")),
        "{table}"
    );
    assert!(
        table.contains("no SSH: srv-site is a static site"),
        "{table}"
    );
    assert!(!table.contains("srv-other"), "{table}");
    // The listed line works: it is an ordinary login.
    let login = line
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split('@')
        .next()
        .unwrap();
    let out = w.host.ssh(login, &w.key, &["hostname"]);
    assert_eq!(
        out.stdout_str().trim(),
        "srv-web1-bbbbb",
        "{}",
        out.describe()
    );
    let modes: Vec<String> = w
        .host
        .events()
        .iter()
        .filter(|e| e.name() == "picker.shown")
        .filter_map(|e| e.str("mode").map(str::to_owned))
        .collect();
    assert_eq!(modes, ["json", "table"]);
}

#[test]
fn a_key_with_no_services_is_refused_at_authentication() {
    let w = world();
    let stranger = w.host.new_key(KeyKind::Ed25519, "stranger");
    let r = w.host.ssh("srv", &stranger, &["--json"]);
    assert!(r.denied(), "{}", r.describe());
    let e = w.host.expect_event(
        "keys.decision for srv",
        |e| {
            e.name() == "keys.decision"
                && e.str("user") == Some("srv")
                && e.str("outcome") == Some("no-match")
        },
        WAIT,
    );
    assert_eq!(e.u64("services"), Some(0));
    assert!(
        !w.host.events().iter().any(|e| e.name() == "picker.shown"),
        "the shell never ran"
    );
    // A control plane that knows no such key (404) refuses the same way,
    // and the key that has services still gets in.
    w.host
        .control_plane()
        .set_key_services(&stranger.fingerprint, Reply::status(404));
    assert!(w.host.ssh("srv", &stranger, &["--json"]).denied());
    let ok = w.host.ssh("srv", &w.key, &["--json"]);
    assert!(ok.success(), "{}", ok.describe());
}

#[test]
fn a_service_the_key_lost_between_menu_and_choice_is_refused_with_a_sentence() {
    let w = world();
    let mut c = w.menu("xterm");
    assert!(c.wait_for("[web_service]", WAIT), "{}", c.screen());
    // The platform takes the key off srv-web1 while the menu is open.
    w.host
        .control_plane()
        .set_body("srv-web1", &web_service("srv-web1", &[]));
    step(&c, DOWN, "> srv-web1");
    step(&c, "\r", "instances of srv-web1");
    c.send("\r");
    assert!(
        c.wait_for("no longer", WAIT),
        "no sentence:\n{}",
        c.screen()
    );
    let st = c.wait(WAIT).expect("the client exits");
    assert_eq!(st.code(), Some(1));
    let e = w
        .host
        .expect_event("session.rejected", |e| e.name() == "session.rejected", WAIT);
    assert_eq!(e.str("reason"), Some("key_not_listed"));
    assert_eq!(e.str("owner"), Some(OWNER));
    w.event("picker.chosen");
    assert!(!w.host.events().iter().any(|e| e.name() == "session.start"));
}

#[test]
fn the_keys_list_is_cached_per_key_and_served_stale_while_the_control_plane_is_down() {
    let host = TestHost::start(TestHostOpts::default().set("cache.fresh_secs", 2));
    let key = host.key(KeyKind::Ed25519);
    host.control_plane().set_body(
        "srv-web1",
        &web_service("srv-web1", &[KeySpec::new(&key, OWNER)]),
    );
    for _ in 0..2 {
        let r = host.ssh("srv", &key, &["--json"]);
        assert!(r.success(), "{}", r.describe());
    }
    // Two logins (four hook calls): one question, the rest from the cache.
    assert_eq!(host.control_plane().key_requests(&key.fingerprint), 1);
    let entries: Vec<String> = std::fs::read_dir(host.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("key-") && n.ends_with(".json"))
        .collect();
    assert_eq!(entries.len(), 1, "one entry for the key: {entries:?}");
    std::thread::sleep(Duration::from_millis(2100));
    host.control_plane().stop();
    let r = host.ssh("srv", &key, &["--json"]);
    assert!(r.success(), "stale list served: {}", r.describe());
    host.expect_event(
        "keys.decision from the stale cache",
        |e| {
            e.name() == "keys.decision"
                && e.str("user") == Some("srv")
                && e.str("source") == Some("stale-cache")
                && e.str("outcome") == Some("accepted")
        },
        WAIT,
    );
}

#[test]
fn the_file_source_answers_by_scanning_its_directory() {
    let host = TestHost::start(TestHostOpts::default().source(KeysSource::Files));
    let key = host.key(KeyKind::Ed25519);
    let other = host.new_key(KeyKind::Ed25519, "bob");
    host.write_service_file(
        "srv-web1",
        &web_service("srv-web1", &[KeySpec::new(&key, OWNER)]),
    );
    host.write_service_file(
        "srv-web2",
        &web_service("srv-web2", &[KeySpec::new(&other, "bob@example.com")]),
    );
    let r = host.ssh("srv", &key, &["--json"]);
    assert!(r.success(), "{}", r.describe());
    let doc: Value = serde_json::from_str(&r.stdout_str()).unwrap();
    let ids: Vec<&str> = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["srv-web1"]);
    let stranger = host.new_key(KeyKind::Ed25519, "stranger");
    assert!(host.ssh("srv", &stranger, &["--json"]).denied());
}

#[test]
fn a_menu_left_alone_closes_after_the_idle_timeout() {
    let host = TestHost::start(TestHostOpts::default().set("limits.idle_timeout_secs", 2));
    let key = host.key(KeyKind::Ed25519);
    host.control_plane().set_body(
        "srv-web1",
        &web_service("srv-web1", &[KeySpec::new(&key, OWNER)]),
    );
    let mut c = host
        .ssh_cmd("srv", &key)
        .tty(true)
        .term("xterm")
        .spawn_pty(24, 80);
    assert!(c.wait_for("[web_service]", WAIT), "{}", c.screen());
    let st = c.wait(WAIT).expect("the menu closes on its own");
    assert_eq!(st.code(), Some(0));
    assert!(c.screen().contains("left alone for 2 s"), "{}", c.screen());
    assert!(!host.events().iter().any(|e| e.name() == "session.start"));
}

/// Not a check: what the picker costs. Run with
/// `cargo test --test picker measure -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_the_listing_against_a_direct_login() {
    let w = world();
    let median = |user: &str, args: &[&str]| {
        let mut ms: Vec<u128> = (0..11)
            .map(|_| {
                let r = w.host.ssh(user, &w.key, args);
                assert!(r.success(), "{}", r.describe());
                r.elapsed.as_millis()
            })
            .collect();
        ms.sort();
        ms[ms.len() / 2]
    };
    // Warm both cache entries first, then interleave.
    let _ = median("srv", &["--json"]);
    let direct = median("srv-web1-aaaaa", &["true"]);
    let listing = median("srv", &["--json"]);
    let direct2 = median("srv-web1-aaaaa", &["true"]);
    println!(
        "median of 11: ssh srv@host --json {listing} ms; ssh srv-web1-aaaaa@host true {direct} ms / {direct2} ms"
    );
}

#[test]
fn from_restricted_listings_are_offered_only_when_this_connection_matches() {
    let host = TestHost::start(TestHostOpts::default());
    let key = host.key(KeyKind::Ed25519);
    let cp = host.control_plane();
    let restricted = |svc: &str, from: &[&str]| {
        cp.set_body(
            svc,
            &web_service(svc, &[KeySpec::new(&key, OWNER).from(from)]),
        )
    };
    restricted("srv-here", &["127.0.0.0/8"]);
    restricted("srv-there", &["10.0.0.0/8"]);
    restricted("srv-named", &["*.example.com"]);
    let _i = Instance::start(
        &host,
        "srv-here",
        "aaaaa",
        InstanceOpts::default().app_user(),
    );
    let r = host.ssh("srv", &key, &["--json"]);
    assert!(r.success(), "{}", r.describe());
    let doc: Value = serde_json::from_str(&r.stdout_str()).unwrap();
    let by_id = |id: &str| {
        doc["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {doc}"))
            .clone()
    };
    assert_eq!(by_id("srv-here")["ssh_capable"], true);
    let there = by_id("srv-there");
    assert_eq!(there["ssh_capable"], false);
    assert!(
        there["reason"]
            .as_str()
            .unwrap()
            .contains("other addresses"),
        "{there}"
    );
    let named = by_id("srv-named");
    assert_eq!(named["ssh_capable"], false);
    assert!(
        named["reason"]
            .as_str()
            .unwrap()
            .contains("log in with its name"),
        "{named}"
    );
    // Chosen from the menu, the restricted-but-matching one is entered.
    let mut c = host
        .ssh_cmd("srv", &key)
        .tty(true)
        .term("xterm")
        .spawn_pty(24, 80);
    assert!(c.wait_for("srv-here", WAIT), "{}", c.screen());
    c.send("\r");
    assert!(c.wait_for("instances of srv-here", WAIT), "{}", c.screen());
    c.send("\r");
    std::thread::sleep(Duration::from_millis(500));
    c.send("echo HOST=$(hostname)\n");
    assert!(c.wait_for("HOST=srv-here-aaaaa", WAIT), "{}", c.screen());
    c.send("exit\n");
    c.wait(WAIT).expect("the client exits");
}
