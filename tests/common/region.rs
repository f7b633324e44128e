//! A region on one machine (issue 14): a front door and two nodes, each
//! in its own network namespace on a private bridge ([`super::netns`]) and
//! its own mount namespace with its own sshd, /etc, host keys, runc root
//! and keys cache, with a user CA (private half on the front door only)
//! and a host CA (nodes' host keys certified for their names). The control
//! plane is the embedded `file://` provider on every host, answering with
//! the same placement: `srv-web1-aaaaa` on node-1, `srv-web1-bbbbb` on
//! node-2. Used by tests/fleet_hop.rs and the front-door benchmark.

use super::netns::{Fabric, Spot};
use super::*;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const SVC: &str = "srv-web1";
pub const OWNER: &str = "alice@example.com";
pub const FRONT: &str = "fd.fleet.test";

/// `ssh-keygen` a CA key at `path` (0600 root).
pub fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ca", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

pub fn node_name(i: usize) -> String {
    format!("node-{}.fleet.test", i + 1)
}

/// The region. Field order is drop order: containers, then hosts (their
/// sshd and everything in their namespaces), then the network.
pub struct Region {
    pub instances: Vec<Instance>,
    pub front: TestHost,
    pub nodes: Vec<TestHost>,
    pub key: ClientKey,
    pub user_ca: PathBuf,
    pub host_ca: PathBuf,
    pub spots: Vec<Spot>,
    pub fabric: Fabric,
}

/// Signs `host`'s host keys with the host CA for `name` (`porthole
/// host-keys sign`, as an admin would) and enables the certificates.
pub fn certify_host(host: &mut TestHost, host_ca: &Path, name: &str) {
    let etc_ssh = host.dir().join("etc/ssh");
    let out = Command::new(env!("CARGO_BIN_EXE_porthole"))
        .args(["host-keys", "sign", "--ca"])
        .arg(host_ca)
        .args(["--name", name, "--domain", "fleet.test", "--dir"])
        .arg(&etc_ssh)
        .output()
        .unwrap();
    let stdout = util::lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", util::lossy(&out.stderr));
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("HostCertificate "))
        .collect();
    assert!(!lines.is_empty(), "{stdout}");
    fs::write(
        etc_ssh.join("sshd_config.d/05-host-certificates.conf"),
        lines.join("\n") + "\n",
    )
    .unwrap();
}

/// Enables the shipped drop-in's `TrustedUserCAKeys` line (node role).
pub fn trust_user_ca(host: &TestHost, user_ca_pub: &str) {
    fs::write(host.dir().join("etc/porthole/user_ca.pub"), user_ca_pub).unwrap();
    let drop_in = host.dir().join("etc/ssh/sshd_config.d/10-porthole.conf");
    let text = fs::read_to_string(&drop_in).unwrap();
    let shipped = "\t#TrustedUserCAKeys /etc/porthole/user_ca.pub\n";
    assert!(text.contains(shipped), "the shipped drop-in changed");
    fs::write(
        &drop_in,
        text.replace(shipped, "\tTrustedUserCAKeys /etc/porthole/user_ca.pub\n"),
    )
    .unwrap();
}

pub fn region() -> Region {
    let fabric = Fabric::new();
    let front_spot = fabric.host();
    let node_spots = [fabric.host(), fabric.host()];

    let mut nodes = Vec::new();
    for (i, spot) in node_spots.iter().enumerate() {
        let opts = TestHostOpts::default()
            .name(&format!("hop-node{}", i + 1))
            .source(KeysSource::Files)
            .on(spot)
            .set("fleet.role", "node")
            .set("fleet.trusted_user_ca", "/etc/porthole/user_ca.pub")
            .set("fleet.host_names", json!([node_name(i)]));
        nodes.push(TestHost::start(opts));
    }
    let mut front = TestHost::start(
        TestHostOpts::default()
            .name("hop-front")
            .source(KeysSource::Files)
            .on(&front_spot)
            .set("fleet.role", "front_door")
            .set("fleet.user_ca_key", "/etc/porthole/user_ca")
            .set("fleet.host_ca_public_key", "/etc/porthole/host_ca.pub")
            .set("fleet.host_names", json!([FRONT]))
            .set("fleet.source_address", json!([front_spot.addr.clone()])),
    );
    // The CAs: the user CA's private half only on the front door (root,
    // 0600), the host CA's private half nowhere but the test's keys dir.
    let user_ca = front.dir().join("etc/porthole/user_ca");
    keygen(&user_ca);
    let user_ca_pub = fs::read_to_string(user_ca.with_extension("pub")).unwrap();
    fs::remove_file(user_ca.with_extension("pub")).unwrap();
    let host_ca = front.dir().join("keys/host_ca");
    keygen(&host_ca);
    fs::copy(
        host_ca.with_extension("pub"),
        front.dir().join("etc/porthole/host_ca.pub"),
    )
    .unwrap();
    // The front door finds nodes by name (its /etc/hosts is the test's copy).
    let mut hosts = fs::read_to_string(front.dir().join("etc/hosts")).unwrap();
    for (i, spot) in node_spots.iter().enumerate() {
        hosts.push_str(&format!("{} {}\n", spot.addr, node_name(i)));
    }
    fs::write(front.dir().join("etc/hosts"), hosts).unwrap();
    for (i, node) in nodes.iter_mut().enumerate() {
        trust_user_ca(node, &user_ca_pub);
        certify_host(node, &host_ca, &node_name(i));
        node.restart_sshd();
    }
    certify_host(&mut front, &host_ca, FRONT);
    front.restart_sshd();

    let key = front.key(KeyKind::Ed25519);
    let mut instances = Vec::new();
    for (i, slug) in ["aaaaa", "bbbbb"].iter().enumerate() {
        let opts = InstanceOpts::default().app_user();
        instances.push(Instance::start(&nodes[i], SVC, slug, opts));
    }
    let mut spots = vec![front_spot];
    spots.extend(node_spots);
    let r = Region {
        instances,
        front,
        nodes,
        key,
        user_ca,
        host_ca,
        spots,
        fabric,
    };
    r.publish(&r.placement());
    r
}

impl Region {
    /// The control plane's placement of the running instances.
    pub fn placement(&self) -> Value {
        json!([
            {"slug": "aaaaa", "host": node_name(0), "port": self.nodes[0].port()},
            {"slug": "bbbbb", "host": node_name(1), "port": self.nodes[1].port()},
        ])
    }

    /// The same answer on every host (the platform's one control plane).
    pub fn publish(&self, instances: &Value) {
        self.publish_to(&self.all_hosts(), instances);
    }

    pub fn publish_to(&self, hosts: &[&TestHost], instances: &Value) {
        let mut body = web_service(SVC, &[KeySpec::new(&self.key, OWNER)]);
        body["instances"] = instances.clone();
        for h in hosts {
            h.write_service_file(SVC, &body);
        }
    }

    pub fn all_hosts(&self) -> Vec<&TestHost> {
        let mut v = vec![&self.front];
        v.extend(self.nodes.iter());
        v
    }

    /// `ssh <login>@front-door <args>` from the front door's network.
    pub fn ssh(&self, login: &str, args: &[&str]) -> SshRun {
        self.front.ssh(login, &self.key, args)
    }

    pub fn cmd(&self, login: &str) -> SshCmd {
        self.front.ssh_cmd(login, &self.key)
    }

    pub fn porthole(host: &TestHost, args: &[&str]) -> std::process::Output {
        let mut v = vec![env!("CARGO_BIN_EXE_porthole")];
        v.extend_from_slice(args);
        host.in_ns(&v)
    }

    pub fn sessions(host: &TestHost) -> Vec<Value> {
        let out = Region::porthole(host, &["sessions", "--json"]);
        assert!(out.status.success(), "{}", util::lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}
