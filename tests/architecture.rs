#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The invariants of ARCHITECTURE.md that are about the code's shape, each
//! checked against the built artifacts or the source tree (the behavioural
//! invariants have their end-to-end tests; ARCHITECTURE.md names them).
//!
//! Each check has a positive control in the same test, so it cannot pass
//! because it looked at nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Crate names whose code must never be linked into the setuid shell.
const NETWORK_CRATES: [&str; 8] = [
    "reqwest",
    "hyper",
    "tokio",
    "rustls",
    "h2",
    "axum",
    "jsonwebtoken",
    "pty_process",
];

/// Mangled Rust symbols name their crate as `<len><name>` (legacy) or
/// `<len>_<name>`-ish in v0; the legacy form is what this toolchain emits.
fn links_crate(binary: &[u8], krate: &str) -> bool {
    let needle = format!("{}{krate}", krate.len());
    binary.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn the_setuid_shell_links_no_http_or_async_code() {
    let shell = fs::read(env!("CARGO_BIN_EXE_porthole-shell")).unwrap();
    let keys = fs::read(env!("CARGO_BIN_EXE_porthole-keys")).unwrap();
    // Control: the keys hook does link the HTTP client, and the check sees it.
    assert!(
        links_crate(&keys, "reqwest"),
        "control: no reqwest symbol found in porthole-keys"
    );
    for krate in NETWORK_CRATES {
        assert!(
            !links_crate(&shell, krate),
            "porthole-shell links {krate}: the setuid binary must stay free of HTTP and async code"
        );
    }
}

/// porthole-sftp (issue 17) uses only russh-sftp's packet types: none of
/// its async server (tokio) nor any HTTP code is linked into it, and the
/// protocol crate is not linked into the setuid shell (which answers a
/// refused sftp client with two hand-encoded packet types).
#[test]
fn the_sftp_server_links_no_async_code_and_the_shell_no_sftp_crate() {
    let sftp = fs::read(env!("CARGO_BIN_EXE_porthole-sftp")).unwrap();
    let shell = fs::read(env!("CARGO_BIN_EXE_porthole-shell")).unwrap();
    // Control: the server does link the protocol crate, and the check sees it.
    assert!(
        links_crate(&sftp, "russh_sftp"),
        "control: no russh_sftp symbol found in porthole-sftp"
    );
    assert!(!links_crate(&shell, "russh_sftp"));
    for krate in NETWORK_CRATES {
        assert!(
            !links_crate(&sftp, krate),
            "porthole-sftp links {krate}: it runs inside instances and needs no async or HTTP code"
        );
    }
}

#[test]
fn the_nss_module_imports_no_network_thread_or_process_call() {
    let lib = Path::new(env!("CARGO_BIN_EXE_porthole-shell"))
        .parent()
        .unwrap()
        .join("libnss_porthole.so");
    if !lib.exists() {
        // `cargo test -p porthole` alone does not build the workspace member.
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "nss_porthole"])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let out = Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(&lib)
        .output()
        .unwrap();
    assert!(out.status.success(), "nm failed on {}", lib.display());
    let imports: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|s| s.split('@').next().unwrap_or(s).to_owned())
        .collect();
    // Control: it imports what a file reader needs.
    assert!(imports.iter().any(|s| s == "read"), "{imports:?}");
    for forbidden in [
        "socket",
        "connect",
        "getaddrinfo",
        "pthread_create",
        "fork",
        "execve",
        "system",
        "popen",
    ] {
        assert!(
            !imports.iter().any(|s| s == forbidden),
            "libnss_porthole.so imports {forbidden}: it is loaded into every process on the host"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn privileged_calls_live_only_in_the_session_folder() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("bin"), &mut files);
    // What joins a container or changes credentials: the setuid path.
    let privileged = [
        "libc::setns",
        "libc::setresuid",
        "libc::setresgid",
        "libc::setgroups",
        "libc::chroot",
        "SYS_capset",
        "SYS_seccomp",
        "PR_CAPBSET_DROP",
    ];
    let session = root.join("src/session");
    let mut seen_in_session = 0;
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        for call in privileged {
            if !text.contains(call) {
                continue;
            }
            if f.starts_with(&session) {
                seen_in_session += 1;
            } else {
                panic!(
                    "{} uses {call}: privileged calls belong in src/session/",
                    f.display()
                );
            }
        }
    }
    // Control: the session folder does use them.
    assert!(seen_in_session >= privileged.len(), "{seen_in_session}");
}

/// The menu of `ssh srv@host` is drawn by the unprivileged picker binary;
/// the setuid shell uses only the picker's protocol (issue 20).
#[test]
fn the_setuid_shell_links_no_menu_code() {
    let shell = fs::read(env!("CARGO_BIN_EXE_porthole-shell")).unwrap();
    let picker = fs::read(env!("CARGO_BIN_EXE_porthole-picker")).unwrap();
    let menu = b"6picker4menu";
    let has = |bin: &[u8]| bin.windows(menu.len()).any(|w| w == menu);
    // Control: the picker does link the menu, and the check sees it.
    assert!(
        has(&picker),
        "control: no picker::menu symbol in porthole-picker"
    );
    assert!(
        !has(&shell),
        "porthole-shell links picker::menu: the menu belongs in porthole-picker"
    );
    for krate in NETWORK_CRATES {
        assert!(
            !links_crate(&picker, krate),
            "porthole-picker links {krate}"
        );
    }
}
