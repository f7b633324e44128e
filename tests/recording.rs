#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 18, end to end: sessions are recorded by the supervisor on the
//! host side (asciicast v2), the hash of each recording goes into its
//! `session.end` event, `porthole replay` and `porthole sessions
//! --history` read them, and the policy (modes, cap, retention, disk full)
//! holds with the real sshd, ssh client and runc instances.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const OWNER: &str = "alice@example.com";
const WAIT: Duration = Duration::from_secs(15);
const NOTICE: &str = "porthole: this session is recorded (what you see)\r\n";

struct World {
    host: TestHost,
    key: ClientKey,
}

fn world_with(opts: TestHostOpts) -> World {
    let host = TestHost::start(opts);
    let key = host.key(KeyKind::Ed25519);
    host.control_plane().set_body(
        "srv-web1",
        &web_service("srv-web1", &[KeySpec::new(&key, OWNER)]),
    );
    World { host, key }
}

fn world() -> World {
    world_with(TestHostOpts::default())
}

impl World {
    fn cmd(&self) -> SshCmd {
        self.host.ssh_cmd("srv-web1-aaaaa", &self.key)
    }

    fn instance(&self) -> Instance {
        Instance::start(
            &self.host,
            "srv-web1",
            "aaaaa",
            InstanceOpts::default().app_user(),
        )
    }

    /// The `session.end` event of the n-th session (by its start event).
    fn end_of(&self, session_id: &str) -> LogEvent {
        self.host.expect_event(
            &format!("session.end of {session_id}"),
            |e| e.name() == "session.end" && e.str("session_id") == Some(session_id),
            WAIT,
        )
    }

    fn last_session_id(&self) -> String {
        let e = self
            .host
            .expect_event("session.start", |e| e.name() == "session.start", WAIT);
        let all: Vec<LogEvent> = self
            .host
            .events()
            .into_iter()
            .filter(|e| e.name() == "session.start")
            .collect();
        all.last()
            .unwrap_or(&e)
            .str("session_id")
            .unwrap()
            .to_owned()
    }

    fn porthole(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec![env!("CARGO_BIN_EXE_porthole")];
        all.extend_from_slice(args);
        self.host.in_ns(&all)
    }
}

/// The header and events of a recording.
fn parse_cast(path: &Path) -> (Value, Vec<(f64, String, String)>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let events = lines
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            let a = v.as_array().unwrap();
            assert_eq!(a.len(), 3, "{l}");
            (
                a[0].as_f64().unwrap(),
                a[1].as_str().unwrap().to_owned(),
                a[2].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (header, events)
}

fn output_of(events: &[(f64, String, String)]) -> String {
    events
        .iter()
        .filter(|e| e.1 == "o")
        .map(|e| e.2.as_str())
        .collect()
}

fn sha256_hex(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn cast_path(w: &World, id: &str) -> PathBuf {
    w.host.recordings_dir().join(format!("{id}.cast"))
}

#[test]
fn interactive_session_is_recorded_as_played_and_hashed_into_its_end_event() {
    let w = world();
    let _i = w.instance();
    let mut c = w.cmd().tty(true).spawn_pty(24, 80);
    assert!(c.wait_for(NOTICE, WAIT), "notice first:\n{}", c.screen());
    c.send("echo MARK-$((6*7))\n");
    assert!(c.wait_for("MARK-42", WAIT), "{}", c.screen());
    c.resize(40, 120);
    std::thread::sleep(Duration::from_millis(300));
    c.send("stty size; printf '\\033[1;31mRED\\033[0m-%s\\n' Ünïcødé\n");
    assert!(c.wait_for("Ünïcødé", WAIT), "{}", c.screen());
    c.send("exit 4\n");
    let st = c.wait(WAIT).expect("client exits");
    assert_eq!(st.code(), Some(4));
    let screen = c.screen();

    let id = w.last_session_id();
    let end = w.end_of(&id);
    let path = cast_path(&w, &id);
    assert_eq!(end.str("recording"), Some(path.to_str().unwrap()));
    assert_eq!(end.str("recording_status"), Some("complete"));

    // asciicast v2: the header, then the events.
    let (header, events) = parse_cast(&path);
    assert_eq!(header["version"], 2);
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24))
    );
    assert_eq!(header["porthole"]["session_id"], id.as_str());
    assert_eq!(header["porthole"]["owner"], OWNER);
    assert_eq!(header["porthole"]["instance"], "srv-web1-aaaaa");
    assert!(events.windows(2).all(|p| p[0].0 <= p[1].0), "times rise");
    assert!(
        events.iter().any(|e| e.1 == "r" && e.2 == "120x40"),
        "the resize: {events:?}"
    );
    assert!(!events.iter().any(|e| e.1 == "i"), "no input by default");
    let last = events.last().unwrap();
    assert_eq!(last.1, "m");
    let end_json: Value =
        serde_json::from_str(last.2.strip_prefix("porthole.end ").unwrap()).unwrap();
    assert_eq!(end_json["reason"], "exit");
    assert_eq!(end_json["exit_status"], 4);

    // The output, concatenated, is what the client received, porthole's
    // notice first (ssh itself adds its "Connection ... closed" line).
    let out = output_of(&events);
    assert!(out.starts_with(NOTICE), "{out:?}");
    assert!(out.contains("MARK-42") && out.contains("40 120"), "{out:?}");
    assert!(
        out.contains("\u{1b}[1;31mRED\u{1b}[0m-Ünïcødé"),
        "the escape sequence, as sent: {out:?}"
    );
    let tail = screen
        .strip_prefix(out.as_str())
        .unwrap_or_else(|| panic!("client saw\n{screen:?}\nrecording has\n{out:?}"));
    assert!(
        tail.is_empty() || tail.trim().starts_with("Connection to"),
        "only ssh's own line after the session: {tail:?}"
    );

    // Tamper evidence: the hash matches the file, and stops matching after
    // one byte changes.
    let sha = end.str("recording_sha256").unwrap().to_owned();
    assert_eq!(sha, sha256_hex(&path));
    assert_eq!(
        end.u64("recording_bytes"),
        Some(std::fs::metadata(&path).unwrap().len())
    );
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(5).position(|w| w == b"MARK-").unwrap();
    bytes[at] = b'N';
    std::fs::write(&path, &bytes).unwrap();
    assert_ne!(sha, sha256_hex(&path), "one changed byte changes the hash");
    bytes[at] = b'M';
    std::fs::write(&path, &bytes).unwrap();

    // `porthole replay` plays it: the colour sequence passes the filter,
    // the cursor position queries busybox's line editor sends (ESC[6n,
    // which a terminal answers as typed input) do not.
    let r = w.porthole(&["replay", &id, "--speed", "1000", "--idle-limit", "0.01"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        out.replace("\u{1b}[6n", "")
    );

    // asciinema plays the file unchanged, every output byte as recorded
    // (.ci/run installs it).
    match std::process::Command::new("asciinema")
        .args(["play", "-s", "1000", "-i", "0.01"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(p) => {
            assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
            assert_eq!(String::from_utf8_lossy(&p.stdout), out);
        }
        Err(e) => eprintln!("skipped the asciinema check: {e}"),
    }

    // … and `porthole sessions --history` lists it.
    let h = w.porthole(&["sessions", "--history"]);
    let text = String::from_utf8_lossy(&h.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.contains(OWNER) && row.contains("srv-web1-aaaaa") && row.contains("exit"),
        "{row}"
    );
    let j = w.porthole(&["sessions", "--history", "--json"]);
    let list: Value = serde_json::from_slice(&j.stdout).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["session_id"] == id.as_str())
        .unwrap();
    assert_eq!(entry["end_reason"], "exit");
    assert_eq!(entry["bytes"].as_u64(), Some(bytes.len() as u64));
    assert!(entry["duration_secs"].as_f64().unwrap() > 0.2);
}

#[test]
fn recordings_directory_is_root_only_and_invisible_from_the_container() {
    let w = world_with(TestHostOpts::default().set("recording.commands", true));
    let _i = w.instance();
    let dir = w.host.recordings_dir();
    let r = w
        .cmd()
        .args(&[&format!(
            "ls -d {d} 2>&1; find / -name '*.cast' 2>/dev/null | head; echo done",
            d = dir.display()
        )])
        .run();
    assert!(r.success(), "{}", r.describe());
    let out = r.stdout_str();
    assert!(out.contains("No such file or directory"), "{out}");
    assert!(
        !out.contains(".cast"),
        "no recording is visible inside: {out}"
    );
    let id = w.last_session_id();
    w.end_of(&id);
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&dir).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o700));
    let f = std::fs::metadata(cast_path(&w, &id)).unwrap();
    assert_eq!(
        (f.uid(), f.mode() & 0o7777),
        (0, 0o400),
        "finished: read-only"
    );
}

#[test]
fn commands_without_a_terminal_record_their_output_and_full_mode_records_input() {
    let w = world_with(
        TestHostOpts::default()
            .set("recording.commands", true)
            .set("cache.fresh_secs", 0),
    );
    let _i = w.instance();
    let r = w.cmd().args(&["echo out; echo err >&2; exit 3"]).run();
    assert_eq!(r.code(), Some(3));
    assert_eq!(r.stdout_str(), "out\n");
    assert!(
        r.stderr_str()
            .starts_with("porthole: this session is recorded"),
        "{}",
        r.describe()
    );
    let id = w.last_session_id();
    w.end_of(&id);
    let (header, events) = parse_cast(&cast_path(&w, &id));
    assert_eq!(header["command"], "echo out; echo err >&2; exit 3");
    assert_eq!(header["porthole"]["tty"], false);
    let out = output_of(&events);
    assert!(out.contains("out\n") && out.contains("err\n"), "{out:?}");

    // Per-service override from the control plane: "full" records input.
    let mut body = web_service("srv-web1", &[KeySpec::new(&w.key, OWNER)]);
    body["recording"] = "full".into();
    w.host.control_plane().set_body("srv-web1", &body);
    let r = w.cmd().args(&["cat"]).stdin("typed-secret\n").run();
    assert!(r.success(), "{}", r.describe());
    assert!(r.stderr_str().contains("what you type"), "{}", r.describe());
    let id2 = w.last_session_id();
    assert_ne!(id, id2);
    w.end_of(&id2);
    let (header, events) = parse_cast(&cast_path(&w, &id2));
    assert_eq!(header["porthole"]["mode"], "full");
    let input: String = events
        .iter()
        .filter(|e| e.1 == "i")
        .map(|e| e.2.as_str())
        .collect();
    assert_eq!(input, "typed-secret\n");

    // "metadata": who, what, when and how it ended; none of its bytes.
    body["recording"] = "metadata".into();
    w.host.control_plane().set_body("srv-web1", &body);
    let r = w.cmd().args(&["echo secret-output"]).run();
    assert!(r.success(), "{}", r.describe());
    assert!(
        r.stderr_str().contains("metadata is recorded"),
        "{}",
        r.describe()
    );
    let idm = w.last_session_id();
    w.end_of(&idm);
    let (header, events) = parse_cast(&cast_path(&w, &idm));
    assert_eq!(header["porthole"]["mode"], "metadata");
    assert_eq!(header["command"], "echo secret-output");
    assert_eq!(events.len(), 1, "only the end line: {events:?}");
    assert!(events[0].2.starts_with("porthole.end "));

    // "off": no file, no notice, no recording fields.
    body["recording"] = "off".into();
    w.host.control_plane().set_body("srv-web1", &body);
    let r = w.cmd().args(&["true"]).run();
    assert!(r.success() && r.stderr_str().is_empty(), "{}", r.describe());
    let id3 = w.last_session_id();
    let end = w.end_of(&id3);
    assert!(end.str("recording").is_none());
    assert!(!cast_path(&w, &id3).exists());
}

#[test]
fn size_cap_stops_the_recording_with_a_marker_and_the_session_goes_on() {
    let w = world_with(
        TestHostOpts::default()
            .set("recording.max_bytes", 8192)
            .set("recording.commands", true),
    );
    let _i = w.instance();
    let r = w
        .cmd()
        .args(&["i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done; echo LAST"])
        .run();
    assert!(r.success(), "{}", r.describe());
    assert!(
        r.stdout_str().ends_with("line-1999\nLAST\n"),
        "the session got all of it"
    );
    let id = w.last_session_id();
    let end = w.end_of(&id);
    assert_eq!(end.str("recording_status"), Some("truncated"));
    w.host.expect_event(
        "recording.truncated",
        |e| e.name() == "recording.truncated" && e.str("session_id") == Some(id.as_str()),
        WAIT,
    );
    let path = cast_path(&w, &id);
    let (_, events) = parse_cast(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(
        len < 8192 + 1024,
        "cap plus the marker and end lines: {len}"
    );
    let n = events.len();
    assert!(
        events[n - 2].1 == "m" && events[n - 2].2.contains("size limit"),
        "{:?}",
        &events[n - 2..]
    );
    assert!(events[n - 1].2.starts_with("porthole.end "));
    assert!(!output_of(&events).contains("LAST"));
    assert_eq!(end.str("recording_sha256").unwrap(), sha256_hex(&path));
}

#[test]
fn retention_removes_old_recordings_then_the_oldest_over_the_total() {
    let w = world_with(
        TestHostOpts::default()
            .set("recording.max_age_days", 30)
            .set("recording.max_total_mib", 1)
            .set("recording.commands", true),
    );
    let _i = w.instance();
    // A first session makes the directory.
    assert!(w.cmd().args(&["true"]).run().success());
    let first = w.last_session_id();
    w.end_of(&first);
    let dir = w.host.recordings_dir();
    let plant = |name: &str, size: usize, age_days: u64| {
        let p = dir.join(name);
        std::fs::write(&p, vec![b'x'; size]).unwrap();
        let t = std::time::SystemTime::now() - Duration::from_secs(age_days * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
        p
    };
    let ancient = plant("00000000000000a1.cast", 10, 40);
    let older = plant("00000000000000b1.cast", 600 * 1024, 3);
    let newer = plant("00000000000000b2.cast", 600 * 1024, 2);
    let other = plant("notes.txt", 10, 400);
    assert!(w.cmd().args(&["true"]).run().success());
    let second = w.last_session_id();
    w.end_of(&second);
    assert!(!ancient.exists(), "older than max_age_days");
    assert!(!older.exists(), "oldest over max_total_mib");
    assert!(newer.exists(), "within the total once the oldest went");
    assert!(other.exists(), "only recordings are removed");
    assert!(cast_path(&w, &first).exists() && cast_path(&w, &second).exists());
    let e = w.host.expect_event(
        "recording.removed",
        |e| e.name() == "recording.removed",
        WAIT,
    );
    assert_eq!(e.u64("files"), Some(2));
}

#[test]
fn a_full_disk_stops_the_recording_not_the_session() {
    let w = world_with(TestHostOpts::default().set("recording.commands", true));
    let _i = w.instance();
    // A 64 KiB tmpfs over the recordings directory, in sshd's private mount
    // namespace only (the host never sees it; it goes with sshd).
    let dir = w.host.recordings_dir();
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let m = w.host.in_ns(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=64k,mode=0700",
        "tmpfs",
        dir.to_str().unwrap(),
    ]);
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    let r = w
        .cmd()
        .args(&["i=0; while [ $i -lt 30000 ]; do echo line-$i; i=$((i+1)); done; echo LAST"])
        .run();
    assert!(r.success(), "{}", r.describe());
    assert!(
        r.stdout_str().ends_with("line-29999\nLAST\n"),
        "the session got all of it"
    );
    let id = w.last_session_id();
    let end = w.end_of(&id);
    assert_eq!(end.str("recording_status"), Some("failed"));
    let failed = w.host.expect_event(
        "recording.failed",
        |e| e.name() == "recording.failed" && e.str("session_id") == Some(id.as_str()),
        WAIT,
    );
    assert!(
        failed.str("message").unwrap().contains("No space left"),
        "{failed:?}"
    );
    // Nothing of it reached the host's view of the directory.
    assert!(!cast_path(&w, &id).exists());
}
