//! A private network for multi-host tests: a "switch" network namespace
//! holding a bridge, and one network namespace per host joined to it by a
//! veth pair. Every namespace is held by a `sleep` process the test owns;
//! the veths and the bridge live only inside those namespaces, so nothing
//! of the host's network is touched, and killing the holders (on drop,
//! also when the test panics) makes the kernel remove everything.
//!
//! Addresses are test-made (`10.231.0.0/24` inside the private namespaces;
//! the same numbers in two tests never meet, each test has its own switch).

use super::util;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The first three octets of every fabric's addresses.
pub const SUBNET: &str = "10.231.0";

/// A process holding a fresh network namespace (`unshare -n sleep`).
struct Holder(Child);

impl Holder {
    fn new() -> Holder {
        let child = Command::new("unshare")
            .args(["--net", "--", "sleep", "infinity"])
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("unshare --net");
        let pid = child.id();
        // The namespace exists once /proc/PID/ns/net differs from ours.
        let ours = std::fs::read_link("/proc/self/ns/net").ok();
        let ready = util::wait_for(Duration::from_secs(5), || {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
            (Some(&theirs) != ours.as_ref()).then_some(())
        });
        assert!(ready.is_some(), "unshare --net did not make a namespace");
        Holder(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ip …` inside the network namespace of `pid`.
fn ip(pid: u32, args: &[&str]) {
    util::run_ok(
        Command::new("nsenter")
            .arg("-t")
            .arg(pid.to_string())
            .args(["-n", "--", "ip"])
            .args(args),
    );
}

/// The switch: a bridge in a namespace of its own.
pub struct Fabric {
    switch: Holder,
    hosts: std::sync::Mutex<Vec<std::sync::Arc<Holder>>>,
    next: AtomicUsize,
}

/// One host's place on the fabric: its namespace (held while any clone
/// lives) and its address.
#[derive(Clone)]
pub struct Spot {
    holder: std::sync::Arc<Holder>,
    pub addr: String,
}

impl std::fmt::Debug for Spot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spot({} in netns of {})", self.addr, self.pid())
    }
}

impl Spot {
    /// The pid whose `/proc/PID/ns/net` is this host's network.
    pub fn pid(&self) -> u32 {
        self.holder.pid()
    }

    /// `nsenter --net=… --` prefix arguments for a command run "on" this
    /// host's network (the mount namespace stays the caller's).
    pub fn nsenter_args(&self) -> Vec<String> {
        vec![
            "-t".into(),
            self.pid().to_string(),
            "-n".into(),
            "--".into(),
        ]
    }

    /// Runs `f` on a thread that joined this host's network namespace
    /// (only that thread moves; the test's other threads stay where they
    /// are).
    pub fn on_net<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let pid = self.pid();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("open netns");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns net");
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Fabric {
    pub fn new() -> Fabric {
        let switch = Holder::new();
        ip(switch.pid(), &["link", "set", "lo", "up"]);
        ip(switch.pid(), &["link", "add", "br0", "type", "bridge"]);
        ip(switch.pid(), &["link", "set", "br0", "up"]);
        Fabric {
            switch,
            hosts: std::sync::Mutex::new(Vec::new()),
            next: AtomicUsize::new(1),
        }
    }

    /// A new host namespace joined to the bridge, with the next address.
    pub fn host(&self) -> Spot {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let holder = std::sync::Arc::new(Holder::new());
        let addr = format!("{SUBNET}.{n}");
        let sw = self.switch.pid();
        let port = format!("v{n}");
        // Both ends are made in the switch's namespace, then one end is
        // moved into the host's: the host's namespace never sees the other.
        ip(
            sw,
            &[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &holder.pid().to_string(),
            ],
        );
        ip(sw, &["link", "set", &port, "master", "br0"]);
        ip(sw, &["link", "set", &port, "up"]);
        let h = holder.pid();
        ip(h, &["link", "set", "lo", "up"]);
        ip(h, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(h, &["link", "set", "eth0", "up"]);
        self.hosts.lock().unwrap().push(holder.clone());
        Spot { holder, addr }
    }

    /// Cuts a host off the switch (its sshd keeps running, unreachable);
    /// `reconnect` undoes it.
    pub fn disconnect(&self, spot: &Spot) {
        let n = spot.addr.rsplit('.').next().unwrap();
        ip(
            self.switch.pid(),
            &["link", "set", &format!("v{n}"), "down"],
        );
    }

    pub fn reconnect(&self, spot: &Spot) {
        let n = spot.addr.rsplit('.').next().unwrap();
        ip(self.switch.pid(), &["link", "set", &format!("v{n}"), "up"]);
    }
}

impl Default for Fabric {
    fn default() -> Self {
        Fabric::new()
    }
}
