#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) and the saved
//! findings (fuzz/regressions/<target>/) through the same property checks
//! the libFuzzer targets run (tests/fuzz_props), on stable `cargo test`, so
//! CI keeps every input the fuzzer found interesting as a regression test.
//! The key-rendering target additionally hands every rendered line of its
//! corpus to OpenSSH's own parser, `ssh-keygen -l -f`.

mod fuzz_props;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every input of a target: corpus files (which must exist, so the test can
/// never silently replay nothing) and saved regressions (optional).
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for (kind, required) in [("corpus", true), ("regressions", false)] {
        let dir = fuzz_dir().join(kind).join(target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        let before = out.len();
        for e in entries {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_file() && !name.starts_with('.') {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
        assert!(
            !required || out.len() > before,
            "{} is empty: nothing to replay",
            dir.display()
        );
    }
    out.sort();
    out
}

fn replay(target: &str) -> usize {
    let (_, check) = fuzz_props::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap();
    let all = inputs(target);
    for (path, bytes) in &all {
        let result = std::panic::catch_unwind(|| check(bytes));
        assert!(result.is_ok(), "{target}: {} fails", path.display());
    }
    all.len()
}

#[test]
fn every_target_has_a_replay() {
    let dirs: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            p.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    assert_eq!(dirs.len(), fuzz_props::TARGETS.len());
    for d in dirs {
        assert!(
            fuzz_props::TARGETS.iter().any(|(t, _)| *t == d),
            "fuzz target {d} is not replayed"
        );
    }
}

#[test]
fn corpus_names() {
    replay("names");
}

#[test]
fn corpus_picker() {
    replay("picker");
}

#[test]
fn corpus_api() {
    replay("api");
}

#[test]
fn corpus_container() {
    replay("container");
}

#[test]
fn corpus_user_auth() {
    replay("user_auth");
}

#[test]
fn corpus_runtime() {
    replay("runtime");
}

#[test]
fn corpus_config() {
    replay("config");
}

#[test]
fn corpus_replay() {
    replay("replay");
}

#[test]
fn corpus_sftp_events() {
    replay("sftp_events");
}

/// The key-rendering corpus: every property, and every rendered line read
/// back by `ssh-keygen -l -f` with the fingerprint porthole computed.
#[test]
fn corpus_keys_lines_parse_with_ssh_keygen() {
    replay("keys");
    let mut lines = Vec::new();
    for (_, bytes) in inputs("keys").iter().chain(inputs("api").iter()) {
        lines.extend(fuzz_props::check_keys(bytes));
    }
    assert!(
        lines.len() >= 5,
        "the corpus renders only {} lines",
        lines.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("authorized_keys");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("ssh-keygen (openssh-client) is installed");
    assert!(
        out.status.success(),
        "ssh-keygen -l rejects the rendered lines: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ssh-keygen skips lines it cannot parse: one output line per input
    // line, in order, with the fingerprint porthole computed for it.
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    if printed.len() != lines.len() {
        let rejected: Vec<&String> = lines
            .iter()
            .filter(|l| {
                let one = dir.path().join("one");
                std::fs::write(&one, format!("{l}\n")).unwrap();
                let status = Command::new("ssh-keygen")
                    .arg("-l")
                    .arg("-f")
                    .arg(&one)
                    .output()
                    .unwrap()
                    .status;
                !status.success()
            })
            .collect();
        panic!("ssh-keygen -l rejects rendered lines: {rejected:#?}");
    }
    for (line, shown) in lines.iter().zip(&printed) {
        let blob = line.split(' ').nth(2).unwrap();
        let alg = line.split(' ').nth(1).unwrap();
        let key = ssh_key::PublicKey::from_openssh(&format!("{alg} {blob}")).unwrap();
        let fp = key.fingerprint(ssh_key::HashAlg::Sha256).to_string();
        assert!(shown.contains(&fp), "{shown} is not {fp} ({line})");
    }
    println!("ssh-keygen -l read all {} rendered lines", lines.len());
}
