//! Static checks of what the Debian package ships (no root, no dpkg):
//! the packaged porthole.toml means exactly the built-in defaults, the
//! changelog names the crate's version, and the nsswitch.conf editing of
//! packaging/porthole-maint is idempotent and undone byte for byte.
//!
//! The full install/upgrade/purge test is tests/package/run.sh (root only).

// A test crate: its helpers may unwrap (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use porthole::config::Config;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const SHIPPED_CONFIG: &str = include_str!("../../packaging/porthole.toml");

#[test]
fn shipped_config_is_the_default() {
    let cfg = Config::from_toml(SHIPPED_CONFIG, Path::new("porthole.toml")).unwrap();
    assert_eq!(cfg, Config::default());
    assert_eq!(cfg.control_plane.url, "file:///etc/porthole/services");
}

/// Every `#key = value` line documents a default: uncommented, they must
/// still parse to the defaults (so the comments never lie).
#[test]
fn shipped_config_comments_show_the_real_defaults() {
    let mut uncommented = String::new();
    let mut n = 0;
    for line in SHIPPED_CONFIG.lines() {
        let is_setting = line
            .strip_prefix('#')
            .and_then(|rest| rest.split_once(" = "))
            .is_some_and(|(key, _)| {
                !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
        if is_setting && !line.starts_with("#token_file") {
            uncommented.push_str(&line[1..]);
            n += 1;
        } else {
            uncommented.push_str(line);
        }
        uncommented.push('\n');
    }
    assert!(n >= 14, "expected every default to be shown, found {n}");
    let cfg = Config::from_toml(&uncommented, Path::new("porthole.toml")).unwrap();
    assert_eq!(cfg, Config::default(), "{uncommented}");
}

#[test]
fn changelog_names_this_version() {
    let changelog = std::fs::read_to_string(repo().join("packaging/changelog")).unwrap();
    let first = changelog.lines().next().unwrap();
    let want = format!("porthole ({}-1) ", env!("CARGO_PKG_VERSION"));
    assert!(
        first.starts_with(&want),
        "packaging/changelog starts with {first:?}; a release needs an entry {want:?}"
    );
}

fn maint(action: &str, file: &Path, state: &Path) -> String {
    let out = Command::new("sh")
        .arg(repo().join("packaging/porthole-maint"))
        .arg(action)
        .arg(file)
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "porthole-maint {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Adds twice (idempotent), checks the result, removes, checks the bytes.
fn roundtrip(before: &str, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nsswitch.conf");
    let state = dir.path().join("state/nsswitch-added");
    std::fs::write(&file, before).unwrap();
    maint("nsswitch-add", &file, &state);
    maint("nsswitch-add", &file, &state);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);
    maint("nsswitch-remove", &file, &state);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    assert!(!state.exists());
    // removing again is harmless
    maint("nsswitch-remove", &file, &state);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
}

#[test]
fn nsswitch_debian_default() {
    roundtrip(
        "# comment about passwd: files\npasswd:         files\ngroup:          files\nshadow:         files\nhosts:          files dns\n",
        "# comment about passwd: files\npasswd:         files porthole\ngroup:          files porthole\nshadow:         files\nhosts:          files dns\n",
    );
}

#[test]
fn nsswitch_with_systemd_and_actions() {
    roundtrip(
        "passwd:\tfiles systemd\ngroup:\tfiles [SUCCESS=merge] systemd\n",
        "passwd:\tfiles porthole systemd\ngroup:\tfiles [SUCCESS=merge] porthole systemd\n",
    );
}

#[test]
fn nsswitch_compat_sss_and_no_files() {
    roundtrip(
        "passwd: compat sss\ngroup: sss  \n",
        "passwd: compat porthole sss\ngroup: sss porthole  \n",
    );
}

#[test]
fn nsswitch_missing_lines_and_no_final_newline() {
    roundtrip(
        "hosts: files dns",
        "hosts: files dns\npasswd: files porthole\ngroup: files porthole\n",
    );
    roundtrip(
        "hosts: files dns\n",
        "hosts: files dns\npasswd: files porthole\ngroup: files porthole\n",
    );
}

#[test]
fn nsswitch_already_listing_porthole_is_left_alone() {
    // the admin put porthole there: neither add nor remove touches it
    roundtrip(
        "passwd: files porthole\ngroup: files\n",
        "passwd: files porthole\ngroup: files porthole\n",
    );
}

#[test]
fn nsswitch_absent_file_is_created_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nsswitch.conf");
    let state = dir.path().join("nsswitch-added");
    maint("nsswitch-add", &file, &state);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "passwd:         files porthole\ngroup:          files porthole\n"
    );
    maint("nsswitch-remove", &file, &state);
    assert!(!file.exists());
}

#[test]
fn maintainer_scripts_parse() {
    for f in [
        "packaging/porthole-maint",
        "packaging/debian/preinst",
        "packaging/debian/postinst",
        "packaging/debian/prerm",
        "packaging/debian/postrm",
        "tests/package/run.sh",
        "tests/package/inside.sh",
        "tests/package/scenario.sh",
    ] {
        let shell = if f.starts_with("tests/") {
            "bash"
        } else {
            "sh"
        };
        let st = Command::new(shell)
            .arg("-n")
            .arg(repo().join(f))
            .status()
            .unwrap();
        assert!(st.success(), "{shell} -n {f}");
    }
}

/// The cache's tmpfiles.d rule is in the package and is one that
/// systemd-tmpfiles accepts: it creates the cache directory as postinst
/// does (0700 porthole) and excludes the ledger from ageing.
#[test]
fn tmpfiles_rule_is_shipped_and_creates_the_cache_dir() {
    use std::os::unix::fs::MetadataExt;
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    assert!(
        cargo.contains(r#"["packaging/tmpfiles.d/porthole.conf", "usr/lib/tmpfiles.d/", "644"]"#),
        "the tmpfiles.d rule is not among the .deb assets"
    );
    let rule = std::fs::read_to_string(repo().join("packaging/tmpfiles.d/porthole.conf")).unwrap();
    let lines: Vec<&str> = rule
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines,
        [
            "d /var/cache/porthole 0700 porthole porthole 2d",
            "x /var/cache/porthole/.ledger"
        ]
    );
    let Some(tmpfiles) = ["/usr/bin/systemd-tmpfiles", "/bin/systemd-tmpfiles"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("skipped: systemd-tmpfiles is not installed");
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: creating a directory owned by porthole needs root");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::create_dir_all(r.join("usr/lib/tmpfiles.d")).unwrap();
    std::fs::write(
        r.join("etc/passwd"),
        "porthole:x:987:986::/nonexistent:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(r.join("etc/group"), "porthole:x:986:\n").unwrap();
    std::fs::write(r.join("usr/lib/tmpfiles.d/porthole.conf"), &rule).unwrap();
    let out = Command::new(tmpfiles)
        .arg(format!("--root={}", r.display()))
        .args(["--create", "--clean", "porthole.conf"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let meta = std::fs::metadata(r.join("var/cache/porthole")).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!((meta.uid(), meta.gid()), (987, 986));
}
