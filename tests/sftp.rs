#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 17, end to end: porthole-sftp, porthole's own SFTP server, run by
//! the session shell inside busybox instances that have no sftp-server,
//! driven by the real OpenSSH `sftp` and `scp` (SFTP mode) through the real
//! sshd.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const OWNER: &str = "alice@example.com";
const WAIT: Duration = Duration::from_secs(15);
const INST: &str = "srv-web1-aaaaa";
const REMOTE: &str = "srv-web1-aaaaa@127.0.0.1";

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

/// A busybox instance running as `app` (uid 1000) with no sftp-server.
fn app_instance(w: &World) -> Instance {
    let i = Instance::start(
        &w.host,
        "srv-web1",
        "aaaaa",
        InstanceOpts::default().app_user(),
    );
    assert!(!i.rootfs().join("usr/lib/openssh/sftp-server").exists());
    i
}

impl World {
    fn client_opts(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([self.key.path.display().to_string()])
        .collect()
    }

    /// `sftp -b -` with `batch` on stdin; stdout and stderr together.
    fn sftp(&self, batch: &str) -> (bool, String) {
        let out = util::run_with_timeout(
            Command::new("sftp")
                .args(self.client_opts())
                .args(["-P", &self.host.port().to_string(), "-b", "-"])
                .arg(REMOTE),
            Some(batch.as_bytes().to_vec()),
            Duration::from_secs(120),
        )
        .output;
        (out.status.success(), both(&out))
    }

    /// `scp -s` (SFTP mode, OpenSSH 9's default, asked for explicitly).
    fn scp(&self, args: &[&str]) -> Output {
        util::run_with_timeout(
            Command::new("scp")
                .arg("-s")
                .args(self.client_opts())
                .args(["-P", &self.host.port().to_string()])
                .args(args),
            None,
            Duration::from_secs(120),
        )
        .output
    }

    fn local(&self, name: &str) -> PathBuf {
        self.host.dir().join(name)
    }
}

fn both(out: &Output) -> String {
    format!("{}{}", util::lossy(&out.stdout), util::lossy(&out.stderr))
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|n| (n.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

#[test]
fn scp_up_and_down_into_an_image_without_sftp_server() {
    let w = world();
    let i = app_instance(&w);
    let data = pattern(3_000_000, 1);
    let local = w.local("up.bin");
    std::fs::write(&local, &data).unwrap();
    let up = w.scp(&[
        local.to_str().unwrap(),
        &format!("{REMOTE}:/home/app/up.bin"),
    ]);
    assert!(up.status.success(), "scp up: {}", both(&up));
    let inside = i.rootfs().join("home/app/up.bin");
    assert_eq!(std::fs::read(&inside).unwrap(), data);
    assert_eq!(std::fs::metadata(&inside).unwrap().uid(), 1000);

    let back = w.local("down.bin");
    let down = w.scp(&[&format!("{REMOTE}:up.bin"), back.to_str().unwrap()]);
    assert!(down.status.success(), "scp down: {}", both(&down));
    assert_eq!(std::fs::read(&back).unwrap(), data);
}
