#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 3, end to end: `ssh srv-…@host` lands in a real runc container
//! through the real sshd, the NSS module, the keys hook and the setuid
//! session shell.

mod common;

use common::*;
use std::time::{Duration, Instant};

const OWNER: &str = "alice@example.com";

struct World {
    host: TestHost,
    key: ClientKey,
}

fn world() -> World {
    let host = TestHost::start(TestHostOpts::default());
    let key = host.key(KeyKind::Ed25519);
    for svc in ["srv-web1", "srv-web2"] {
        host.control_plane()
            .set_body(svc, &web_service(svc, &[KeySpec::new(&key, OWNER)]));
    }
    World { host, key }
}

impl World {
    fn ssh(&self, user: &str, args: &[&str]) -> SshRun {
        self.host.ssh(user, &self.key, args)
    }
}

#[test]
fn smoke_command_runs_in_the_instance() {
    let w = world();
    let _i = Instance::start(&w.host, "srv-web1", "aaaaa", InstanceOpts::default().app_user());
    let r = w.ssh("srv-web1-aaaaa", &["id -u; hostname; echo $DATABASE_URL; echo $HOME"]);
    eprintln!("{}", r.describe());
    eprintln!("{:#?}", w.host.events());
    assert!(r.success());
}
