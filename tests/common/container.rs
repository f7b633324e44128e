//! Real runc containers with a busybox-static root filesystem: the
//! "instances" the session shell enters.

use super::util;
use super::TestHost;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

/// Annotation keys of the default configuration (`runtime.*_annotation`).
pub const SERVICE_ANNOTATION: &str = "io.porthole.service";
pub const INSTANCE_ANNOTATION: &str = "io.porthole.instance";

/// How to build and run one instance.
#[derive(Clone, Debug)]
pub struct InstanceOpts {
    /// The init process's uid/gid (0 = root, 1000 = `app`).
    pub uid: u32,
    pub gid: u32,
    /// Container ID; `None` = `<service>-<slug>`.
    pub id: Option<String>,
    /// Put `io.porthole.service`/`io.porthole.instance` annotations on it.
    pub annotations: bool,
    /// `KEY=value` entries added to the OCI process env.
    pub env: Vec<String>,
    /// `linux.resources.memory.limit` in bytes.
    pub memory_limit: i64,
    /// The container's init command.
    pub args: Vec<String>,
    /// Login shell of `app` and `root` in the container's /etc/passwd.
    pub login_shell: String,
    /// Extra files in the rootfs: (absolute path inside, content, mode).
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Run in a user namespace mapping container ids 0..65536 to host ids
    /// starting here (the rootfs is chowned to match).
    pub userns: Option<u32>,
    /// Further OCI annotations (`key`, `value`), as a tenant might set them.
    pub extra_annotations: Vec<(String, String)>,
    /// Members set in the spec's `process` and `linux` objects last
    /// (`seccomp`, `rlimits`, `noNewPrivileges`, `oomScoreAdj`, …).
    pub process_set: Vec<(String, Value)>,
    pub linux_set: Vec<(String, Value)>,
    /// Docker's layout: the rootfs outside the bundle, named by an
    /// absolute `root.path`.
    pub rootfs_outside_bundle: bool,
}

impl Default for InstanceOpts {
    fn default() -> Self {
        InstanceOpts {
            uid: 0,
            gid: 0,
            id: None,
            annotations: true,
            env: vec!["DATABASE_URL=postgres://demo".into()],
            memory_limit: 256 * 1024 * 1024,
            args: vec!["/bin/sleep".into(), "1000000".into()],
            login_shell: "/bin/sh".into(),
            files: Vec::new(),
            userns: None,
            extra_annotations: Vec::new(),
            process_set: Vec::new(),
            linux_set: Vec::new(),
            rootfs_outside_bundle: false,
        }
    }
}

impl InstanceOpts {
    /// Runs as `app` (uid/gid 1000, HOME /home/app).
    pub fn app_user(mut self) -> Self {
        self.uid = 1000;
        self.gid = 1000;
        self
    }

    pub fn root_user(mut self) -> Self {
        self.uid = 0;
        self.gid = 0;
        self
    }

    /// An arbitrary container ID; the annotations name service and slug.
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.into());
        self
    }

    /// A user-namespaced instance: container root is host uid `base`.
    pub fn userns(mut self, base: u32) -> Self {
        self.userns = Some(base);
        self
    }

    pub fn no_annotations(mut self) -> Self {
        self.annotations = false;
        self
    }

    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.into());
        self
    }

    pub fn login_shell(mut self, sh: &str) -> Self {
        self.login_shell = sh.into();
        self
    }

    /// One more OCI annotation (what a tenant can often set).
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.extra_annotations.push((key.into(), value.into()));
        self
    }

    /// Docker's layout (see the field).
    pub fn rootfs_outside_bundle(mut self) -> Self {
        self.rootfs_outside_bundle = true;
        self
    }

    /// Sets `process.<key>` of the OCI spec.
    pub fn process(mut self, key: &str, value: Value) -> Self {
        self.process_set.push((key.into(), value));
        self
    }

    /// Sets `linux.<key>` of the OCI spec (e.g. `seccomp`).
    pub fn linux(mut self, key: &str, value: Value) -> Self {
        self.linux_set.push((key.into(), value));
        self
    }

    /// Copies host programs and the shared libraries they need into the
    /// instance's rootfs (an image "with openssh tools and rsync").
    pub fn with_host_programs(mut self, programs: &[&str]) -> Self {
        let mut files = std::collections::BTreeSet::new();
        for p in programs {
            files.insert(p.to_string());
            let out = util::run_ok(Command::new("ldd").arg(p));
            for l in util::lossy(&out.stdout).lines() {
                // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux… (0x…)"
                if let Some(path) = l.split_whitespace().find(|w| w.starts_with('/')) {
                    files.insert(path.to_owned());
                }
            }
        }
        for f in files {
            let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
            self = self.file(&f, bytes, 0o755);
        }
        self
    }

    pub fn file(mut self, path: &str, content: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push((path.into(), content.into(), mode));
        self
    }
}

/// A running runc container. Dropping it kills and deletes it.
#[derive(Debug)]
pub struct Instance {
    runc_root: PathBuf,
    id: String,
    service: String,
    slug: String,
    bundle: PathBuf,
    rootfs: PathBuf,
    deleted: bool,
}

/// busybox-static's binary (must be static: it runs inside the rootfs).
const BUSYBOX: &str = "/bin/busybox";

fn applets() -> &'static [String] {
    static LIST: OnceLock<Vec<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        let out = util::run_ok(Command::new(BUSYBOX).arg("--list"));
        util::lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
            .map(str::to_owned)
            .collect()
    })
}

impl Instance {
    /// Builds `<dir>/bundles/<id>` and starts it with `runc run -d`.
    pub fn start(host: &TestHost, service: &str, slug: &str, opts: InstanceOpts) -> Instance {
        let id = opts
            .id
            .clone()
            .unwrap_or_else(|| format!("{service}-{slug}"));
        let bundle = host.dir().join("bundles").join(&id);
        assert!(
            !bundle.exists(),
            "instance {id} already exists in this test"
        );
        util::mkdir(&bundle, 0o755, 0, 0);
        let rootfs = if opts.rootfs_outside_bundle {
            util::mkdir(&host.dir().join("rootfs"), 0o755, 0, 0);
            host.dir().join("rootfs").join(&id)
        } else {
            bundle.join("rootfs")
        };
        build_rootfs(&rootfs, &opts);
        if let Some(base) = opts.userns {
            // Shift ownership into the namespace's range (app keeps its uid 1000 inside).
            util::run_ok(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{base}:{base}"))
                    .arg(&rootfs),
            );
            let app = base + 1000;
            util::run_ok(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{app}:{app}"))
                    .arg(rootfs.join("home/app")),
            );
        }
        let mut spec = spec(host, &id, service, slug, &opts);
        if opts.rootfs_outside_bundle {
            spec["root"]["path"] = json!(rootfs);
        }
        util::write_file(
            &bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec).expect("spec json"),
            0o644,
            0,
            0,
        );
        let log = fs::File::create(bundle.join("init.log")).expect("init.log");
        let mut inst = Instance {
            runc_root: host.runc_root(),
            id: id.clone(),
            service: service.into(),
            slug: slug.into(),
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            deleted: false,
        };
        let out = Command::new("runc")
            .arg("--root")
            .arg(&inst.runc_root)
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .output()
            .expect("runc run");
        if !out.status.success() {
            inst.deleted = true;
            let _ = runc(&inst.runc_root, &["delete", "--force", &id]);
            panic!(
                "runc run {id} failed ({}): {}",
                out.status,
                util::read_to_string(&bundle.join("init.log"))
            );
        }
        let running = util::wait_for(Duration::from_secs(10), || {
            (inst.status().as_deref() == Some("running")).then_some(())
        });
        assert!(
            running.is_some(),
            "instance {id} did not reach running: {:?}",
            inst.state()
        );
        inst
    }

    /// Container ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn slug(&self) -> &str {
        &self.slug
    }

    /// `<service>-<slug>`: the login name for this exact instance.
    pub fn login(&self) -> String {
        format!("{}-{}", self.service, self.slug)
    }

    pub fn bundle(&self) -> &Path {
        &self.bundle
    }

    pub fn rootfs(&self) -> PathBuf {
        self.rootfs.clone()
    }

    /// `runc state` as JSON (`None` once deleted).
    pub fn state(&self) -> Option<Value> {
        let out = runc(&self.runc_root, &["state", &self.id]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `created`, `running`, `stopped`, … (`None` once deleted).
    pub fn status(&self) -> Option<String> {
        self.state()
            .and_then(|s| s.get("status").and_then(Value::as_str).map(str::to_owned))
    }

    /// The init process's pid in the host pid namespace.
    pub fn init_pid(&self) -> i32 {
        self.state()
            .and_then(|s| s.get("pid").and_then(Value::as_i64))
            .and_then(|p| i32::try_from(p).ok())
            .filter(|&p| p > 0)
            .unwrap_or_else(|| panic!("instance {} has no init pid", self.id))
    }

    /// `runc exec` as the container's configured user.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_as(None, args)
    }

    /// `runc exec --user uid:gid`.
    pub fn exec_as(&self, user: Option<&str>, args: &[&str]) -> Output {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.runc_root).arg("exec");
        if let Some(u) = user {
            c.args(["--user", u]);
        }
        c.arg(&self.id).args(args);
        util::run_with_timeout(&mut c, None, Duration::from_secs(30)).output
    }

    /// Pids (host namespace) of every process in the container.
    pub fn pids(&self) -> Vec<i32> {
        let out = runc(&self.runc_root, &["ps", "--format", "json", &self.id]);
        serde_json::from_slice::<Vec<i32>>(&out.stdout).unwrap_or_default()
    }

    /// The init's cgroup path for `controller` (`memory`, or "" for v2),
    /// from `/proc/PID/cgroup`.
    pub fn cgroup(&self, controller: &str) -> Option<String> {
        cgroup_of(self.init_pid(), controller)
    }

    /// SIGKILL to init; waits until runc reports `stopped` (not deleted).
    pub fn kill(&self) {
        let _ = runc(&self.runc_root, &["kill", &self.id, "KILL"]);
        let stopped = util::wait_for(Duration::from_secs(10), || {
            (self.status().as_deref() != Some("running")).then_some(())
        });
        assert!(stopped.is_some(), "instance {} did not stop", self.id);
    }

    /// Kills and removes the container now.
    pub fn delete(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        if self.deleted {
            return;
        }
        self.deleted = true;
        let _ = runc(&self.runc_root, &["kill", &self.id, "KILL"]);
        let _ = runc(&self.runc_root, &["delete", "--force", &self.id]);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Builds an OCI bundle at `bundle` (rootfs + config.json, root-owned) for
/// `service` without starting it: a service's "latest build", which the
/// local provider of temporary instances starts.
pub fn build_bundle(host: &TestHost, bundle: &Path, service: &str, opts: &InstanceOpts) {
    util::mkdir(bundle, 0o755, 0, 0);
    build_rootfs(&bundle.join("rootfs"), opts);
    let mut spec = spec(host, &format!("{service}-build"), service, "build", opts);
    spec["hostname"] = json!(format!("{service}-host"));
    util::write_file(
        &bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).expect("spec json"),
        0o644,
        0,
        0,
    );
}

/// Container ids in a runc root (`runc list -q`).
pub fn list(root: &Path) -> Vec<String> {
    let out = runc(root, &["list", "-q"]);
    util::lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The cgroup path of `pid` for a v1 controller, or the v2 path for "".
pub fn cgroup_of(pid: i32, controller: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        let hit = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_owned())
    })
}

/// `runc --root <root> args…` with a timeout.
pub fn runc(root: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("runc");
    c.arg("--root").arg(root).args(args);
    util::run_with_timeout(&mut c, None, Duration::from_secs(30)).output
}

fn build_rootfs(rootfs: &Path, opts: &InstanceOpts) {
    util::mkdir(rootfs, 0o755, 0, 0);
    for d in [
        "bin", "etc", "proc", "sys", "dev", "home", "root", "tmp", "var", "run",
    ] {
        util::mkdir(&rootfs.join(d), 0o755, 0, 0);
    }
    util::set_owner_mode(&rootfs.join("root"), 0o700, 0, 0);
    util::set_owner_mode(&rootfs.join("tmp"), 0o1777, 0, 0);
    util::mkdir(&rootfs.join("home/app"), 0o755, 1000, 1000);
    // A copy, never a hard link: root in the container could write through it.
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    util::set_owner_mode(&rootfs.join("bin/busybox"), 0o755, 0, 0);
    for a in applets() {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
    }
    for d in ["usr", "usr/bin", "usr/sbin", "sbin"] {
        let _ = fs::create_dir(rootfs.join(d));
    }
    let sh = &opts.login_shell;
    util::write_file(
        &rootfs.join("etc/passwd"),
        format!("root:x:0:0:root:/root:{sh}\napp:x:1000:1000:app:/home/app:{sh}\n"),
        0o644,
        0,
        0,
    );
    util::write_file(
        &rootfs.join("etc/group"),
        "root:x:0:\napp:x:1000:\n",
        0o644,
        0,
        0,
    );
    for (path, content, mode) in &opts.files {
        let rel = path.trim_start_matches('/');
        let p = rootfs.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("create parent");
        }
        util::write_file(&p, content, *mode, 0, 0);
    }
}

fn spec(host: &TestHost, id: &str, service: &str, slug: &str, opts: &InstanceOpts) -> Value {
    let tmp = tempfile::tempdir().expect("tempdir");
    util::run_ok(
        Command::new("runc")
            .arg("spec")
            .arg("--bundle")
            .arg(tmp.path()),
    );
    let text = util::read_to_string(&tmp.path().join("config.json"));
    let mut s: Value = serde_json::from_str(&text).expect("runc spec json");
    let home = if opts.uid == 0 { "/root" } else { "/home/app" };
    let mut env = vec![
        json!("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        json!("TERM=xterm"),
        json!(format!("HOME={home}")),
    ];
    env.extend(opts.env.iter().map(|e| json!(e)));
    s["process"]["terminal"] = json!(false);
    s["process"]["args"] = json!(opts.args);
    s["process"]["env"] = json!(env);
    s["process"]["user"] = json!({"uid": opts.uid, "gid": opts.gid});
    s["process"]["cwd"] = json!(home);
    s["root"] = json!({"path": "rootfs", "readonly": false});
    s["hostname"] = json!(format!("{service}-{slug}"));
    if opts.annotations {
        s["annotations"] = json!({SERVICE_ANNOTATION: service, INSTANCE_ANNOTATION: slug});
    }
    for (k, v) in &opts.extra_annotations {
        s["annotations"][k] = json!(v);
    }
    s["linux"]["resources"]["memory"] = json!({"limit": opts.memory_limit});
    // Unique per test: the default (/<id>) would collide between tests that
    // run the same instance name under different runc roots.
    s["linux"]["cgroupsPath"] = json!(format!("/porthole-e2e-{}-{id}", host.tag()));
    if let Some(base) = opts.userns {
        let map = json!([{"containerID": 0, "hostID": base, "size": 65536}]);
        s["linux"]["uidMappings"] = map.clone();
        s["linux"]["gidMappings"] = map;
        if let Some(ns) = s["linux"]["namespaces"].as_array_mut() {
            ns.push(json!({"type": "user"}));
        }
        // Inside a user namespace sysfs cannot be mounted fresh; bind it.
        if let Some(mounts) = s["mounts"].as_array_mut() {
            for m in mounts.iter_mut() {
                if m["destination"] == "/sys" {
                    *m = json!({"destination": "/sys", "type": "none", "source": "/sys",
                                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
                }
            }
            mounts.retain(|m| m["type"] != "mqueue" && m["destination"] != "/sys/fs/cgroup");
        }
    }
    for (k, v) in &opts.process_set {
        s["process"][k] = v.clone();
    }
    for (k, v) in &opts.linux_set {
        s["linux"][k] = v.clone();
    }
    s
}
