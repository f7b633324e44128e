//! Entering an instance: pin its init, then fork into its cgroups and
//! namespaces and exec as its user, confined as the instance is.
//!
//! Run by the setuid session shell `porthole-shell` as root: [`pin`],
//! [`open_cgroups`] and [`spawn`] on the host side, before the fork; the
//! forked children run [`child`] (root until the inner child becomes the
//! container user and execs). The supervisor (our caller) never leaves the
//! host namespaces. It trusts the init's pid and start time from the
//! runtime's root-owned state, the pinned `/proc/PID`, and the [`Plan`]
//! built from them on the host side; it treats what comes back from inside
//! (the pty master, the children's reports) as unchecked until checked.
//!
//! The order is the lesson of nsenter, lxc-attach and runc exec (and of
//! their CVEs): pin the init with a pidfd and re-check its start time; open
//! every host-side thing (root dir, cgroup files, namespaces via the pidfd)
//! before touching the container; make the process non-dumpable so the
//! container cannot ptrace or open `/proc/PID/exe` of a privileged process
//! (CVE-2016-9962, CVE-2019-5736); mark every inherited fd close-on-exec and
//! never leave a host directory as cwd (CVE-2024-21626).
//!
//! Two forks: the first child ("outer") joins cgroups and namespaces and
//! chroots; joining a pid namespace only affects children, so it forks the
//! "inner" process, which drops to the container user and execs. The inner
//! is cloned with CLONE_PARENT, so it is the supervisor's child and the
//! outer exits at once. What each child does, in order, is a list computed
//! here before the fork ([`steps`], unit-tested); the children report over
//! a status pipe in typed frames ([`report`]); the system calls are in
//! [`sys`].

mod child;
pub mod report;
pub mod steps;
mod sys;

pub use sys::{pidfd_alive, pidfd_open, reraise};

use crate::session::confine::Confinement;
use crate::session::container::{CgroupDir, ProcessCreds};
use report::ChildReport;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// Why entering failed; each says who can fix it.
#[derive(Debug)]
pub enum EnterError {
    /// The instance went away between resolve and entry: tell the user.
    Vanished,
    /// Kernel refused a step (message says which): an admin/host problem.
    Host(String),
    /// The process inside could not be set up (message from inside).
    Inside(String),
}

impl std::fmt::Display for EnterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnterError::Vanished => f.write_str("the instance stopped while connecting"),
            EnterError::Host(m) => write!(f, "cannot enter the instance: {m}"),
            EnterError::Inside(m) => write!(f, "cannot start the session: {m}"),
        }
    }
}

impl std::error::Error for EnterError {}

fn host_err(what: &str, e: std::io::Error) -> EnterError {
    EnterError::Host(format!("{what}: {e}"))
}

/// The instance's init, pinned: the pidfd cannot come to mean another
/// process, and the other fds were opened while the start time matched.
pub struct Pinned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// `/proc/PID` as a directory fd.
    pub proc_dir: OwnedFd,
    /// The container's root directory (`/proc/PID/root`).
    pub root: OwnedFd,
    /// Namespaces that differ from ours (CLONE_NEW* flags for setns).
    pub ns_flags: libc::c_int,
}

fn open_dir_at(dirfd: Option<&OwnedFd>, path: &str, flags: i32) -> std::io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    sys::openat(dirfd.map(|d| d.as_raw_fd()), &c, flags)
}

fn read_at(dirfd: &OwnedFd, name: &str, max: u64) -> std::io::Result<String> {
    let fd = open_dir_at(Some(dirfd), name, libc::O_RDONLY | libc::O_NOFOLLOW)?;
    let mut s = String::new();
    File::from(fd).take(max).read_to_string(&mut s)?;
    Ok(s)
}

const NAMESPACES: [(&str, libc::c_int); 8] = [
    ("user", libc::CLONE_NEWUSER),
    ("mnt", libc::CLONE_NEWNS),
    ("pid", libc::CLONE_NEWPID),
    ("net", libc::CLONE_NEWNET),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", 0x80), // CLONE_NEWTIME
];

/// Pins `pid` if its start time is still `start`.
pub fn pin(pid: i32, start: u64) -> Result<Pinned, EnterError> {
    let pidfd = pidfd_open(pid).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) => EnterError::Vanished,
        _ => EnterError::Host(format!("pidfd_open: {e}")),
    })?;
    let proc_dir = open_dir_at(
        None,
        &format!("/proc/{pid}"),
        libc::O_DIRECTORY | libc::O_RDONLY,
    )
    .map_err(|_| EnterError::Vanished)?;
    // The pidfd and the /proc dir were both opened before this check: if
    // the start time still matches, both refer to the instance's init.
    let stat = read_at(&proc_dir, "stat", 4096).map_err(|_| EnterError::Vanished)?;
    if crate::session::runtime::parse_stat_start(&stat) != Some(start) || !pidfd_alive(&pidfd) {
        return Err(EnterError::Vanished);
    }
    let root = open_dir_at(Some(&proc_dir), "root", libc::O_DIRECTORY | libc::O_RDONLY)
        .map_err(|e| EnterError::Host(format!("open container root: {e}")))?;
    let mut ns_flags = 0;
    for (name, flag) in NAMESPACES {
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/{name}"));
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"));
        use std::os::unix::fs::MetadataExt;
        match (theirs, ours) {
            (Ok(t), Ok(o)) if t.ino() != o.ino() || t.dev() != o.dev() => ns_flags |= flag,
            (Ok(_), Ok(_)) => {}
            (Err(_), Err(_)) => {} // kernel without this namespace type
            (Err(_), Ok(_)) => return Err(EnterError::Vanished),
            (Ok(_), Err(e)) => return Err(EnterError::Host(format!("/proc/self/ns/{name}: {e}"))),
        }
    }
    // A recycled init pid (or a forged runtime state) can name a process of
    // the host: never "enter" something that shares our mount namespace or
    // the host init's, whatever its start time says. The same for the pid
    // namespace: a process in the host's (or ours) could see and signal
    // every host process, so an "instance" that runs there is not one a
    // session may join.
    if ns_flags & libc::CLONE_NEWNS == 0 || shares_host_ns(pid, "mnt") {
        return Err(EnterError::Host(format!(
            "process {pid} is not in a container (it shares the host's mount namespace)"
        )));
    }
    if ns_flags & libc::CLONE_NEWPID == 0 || shares_host_ns(pid, "pid") {
        return Err(EnterError::Host(format!(
            "process {pid} is not in a container (it shares the host's pid namespace)"
        )));
    }
    if !pidfd_alive(&pidfd) {
        return Err(EnterError::Vanished);
    }
    Ok(Pinned {
        pid,
        pidfd,
        proc_dir,
        root,
        ns_flags,
    })
}

/// True when `pid` is in the namespace `kind` (`mnt`, `pid`) of the host's
/// init (pid 1). An unreadable pid 1 (sandboxes deny it even to root)
/// cannot be compared with: then only the check against our own namespace
/// (`ns_flags` in [`pin`], which fails closed) applies. A target whose
/// namespace cannot be read counts as shared (fail closed).
fn shares_host_ns(pid: i32, kind: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(host) = std::fs::metadata(format!("/proc/1/ns/{kind}")) else {
        return false;
    };
    match std::fs::metadata(format!("/proc/{pid}/ns/{kind}")) {
        Ok(t) => t.ino() == host.ino() && t.dev() == host.dev(),
        Err(_) => true,
    }
}

impl Pinned {
    /// Reads a file of `/proc/PID` through the pinned directory.
    pub fn read_proc(&self, name: &str) -> Result<String, EnterError> {
        read_at(&self.proc_dir, name, 1 << 20).map_err(|_| EnterError::Vanished)
    }
}

/// Window size for a new pty.
#[derive(Debug, Clone, Copy, Default)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// Everything the inner process needs, prepared on the host side.
pub struct Plan {
    /// Path of the program inside the container.
    pub program: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// Ids as seen inside the container's user namespace.
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub creds: ProcessCreds,
    pub home: CString,
    /// Some when the session gets a terminal.
    pub pty: Option<WinSize>,
    /// `cgroup.procs` files to join, opened before forking.
    pub cgroups: Vec<(CgroupDir, File)>,
    /// Seccomp, LSM label, rlimits and oom_score_adj of the instance.
    pub confinement: Confinement,
    /// The host's procfs, opened before forking, for writing the LSM exec
    /// label (only when there is one to write).
    pub host_proc: Option<OwnedFd>,
    /// Some: the program is this sealed memfd (porthole-sftp, copied from
    /// the host file as root before entering), executed with `execveat`;
    /// `program` is then only its name. Never a path the container can
    /// reopen or replace.
    pub program_fd: Option<OwnedFd>,
    /// Some: the write end of a host pipe the program keeps across exec
    /// (porthole-sftp's audit events; its number is in `argv`). Every
    /// other fd but stdio is closed or close-on-exec.
    pub pass_fd: Option<OwnedFd>,
}

/// Opens what joining each cgroup takes: for a v1 hierarchy its `tasks`
/// file, for the v2 hierarchy the directory itself (the session is born in
/// it with `clone3(CLONE_INTO_CGROUP)`). A required one (memory, pids,
/// devices, v2) that cannot be opened is an error: the session's memory
/// must be charged to the instance, and on v1 the devices cgroup is the
/// instance's device allow-list.
///
/// Why not `cgroup.procs`: moving a whole thread group takes the kernel's
/// global threadgroup lock for writing, which waits for an RCU grace period
/// (5-15 ms, most of what entering cost). Moving only the calling thread of
/// a single-threaded process (`0` into v1 `tasks`) and being born in the v2
/// cgroup skip that lock and give the same result.
pub fn open_cgroups(dirs: Vec<CgroupDir>) -> Result<Vec<(CgroupDir, File)>, EnterError> {
    let mut out = Vec::new();
    for d in dirs {
        let f = if d.controllers.is_empty() {
            File::options()
                .read(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_DIRECTORY)
                .open(&d.dir)
        } else {
            File::options()
                .write(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(d.dir.join("tasks"))
        };
        match f {
            Ok(f) => out.push((d, f)),
            Err(e) if d.is_required() => {
                return Err(EnterError::Host(format!("cgroup {}: {e}", d.dir.display())))
            }
            Err(_) => {}
        }
    }
    Ok(out)
}

/// The session's processes as the supervisor holds them.
pub struct Spawned {
    /// Our child whose exit status is the session's: the inner process
    /// (cloned with CLONE_PARENT; the outer child has already exited).
    pub outer_pid: i32,
    /// Host pid of the inner process (session leader inside the container).
    pub inner_pid: i32,
    /// (device, inode) of the instance's pid namespace: only processes in
    /// it are ever signalled as "the session's", so a recycled pid number
    /// can never make us kill a process of the host.
    pub pid_ns: (u64, u64),
    pub io: SessionIo,
}

/// The supervisor's ends of the session's stdio.
pub enum SessionIo {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Pty {
        master: OwnedFd,
    },
}

/// Forks the session into the pinned instance. Returns once the inner
/// process has exec'd (or failed, with its message).
pub fn spawn(pinned: &Pinned, plan: &Plan) -> Result<Spawned, EnterError> {
    // The processes forked below exec inside the instance: their
    // /proc/self/exe must be the sealed copy, never the host file (see
    // `sealed`). porthole-shell re-executed itself at start; refuse if not.
    if !crate::session::sealed::is_sealed_self() {
        return Err(EnterError::Host(
            "porthole-shell is not running from its sealed copy".into(),
        ));
    }
    // Everything the children run is decided here, on the host side.
    let steps = steps::child_steps(plan);
    let exec = child::ExecArgs::new(plan);
    let (status_r, status_w) = sys::pipe().map_err(|e| host_err("pipe2", e))?;
    let (pty_sock_parent, pty_sock_child) =
        sys::socketpair().map_err(|e| host_err("socketpair", e))?;
    let (child_io, parent_io) = if plan.pty.is_some() {
        (None, None)
    } else {
        let p = || sys::pipe().map_err(|e| host_err("pipe2", e));
        let (in_r, in_w) = p()?;
        let (out_r, out_w) = p()?;
        let (err_r, err_w) = p()?;
        (Some([in_r, out_w, err_w]), Some((in_w, out_r, err_r)))
    };
    let supervisor = std::process::id() as i32;

    let unified = plan
        .cgroups
        .iter()
        .find(|(d, _)| d.controllers.is_empty())
        .map(|(_, f)| f.as_raw_fd());
    // Single-threaded (no thread is ever spawned), so the child may
    // allocate and use std after the fork; it calls no raise or pthread
    // functions, which a raw clone leaves stale.
    let into_cgroup = |fd| {
        // SAFETY: single-threaded, see above.
        unsafe { sys::fork_into_cgroup(fd) }
    };
    let (outer, born_in_unified) = match unified.map(into_cgroup) {
        Some(Ok(pid)) => (pid, true),
        // Kernels without clone3/CLONE_INTO_CGROUP: fork, then join by writing.
        _ => {
            // SAFETY: single-threaded, see above.
            let pid = unsafe { sys::fork() };
            (pid.map_err(|e| host_err("fork", e))?, false)
        }
    };
    if outer == 0 {
        drop(status_r);
        drop(pty_sock_parent);
        drop(parent_io);
        child::run(
            child::Child {
                pinned,
                plan,
                exec: &exec,
                parent: supervisor,
                born_in_unified,
                status: File::from(status_w),
                pty_sock: pty_sock_child,
                io: child_io,
                notice: None,
                inner: false,
            },
            &steps,
        )
    }

    drop(status_w);
    drop(pty_sock_child);
    drop(child_io);
    let mut bytes = Vec::new();
    let _ = File::from(status_r).take(64 * 1024).read_to_end(&mut bytes);
    // The outer process exits as soon as it has reported.
    sys::reap(outer);
    let reports = ChildReport::decode_all(&bytes)
        .map_err(|_| EnterError::Inside("the session process sent a malformed report".into()))?;
    let mut inner_pid = 0;
    let mut failure = None;
    for r in reports {
        match r {
            ChildReport::Started { pid } => inner_pid = pid,
            ChildReport::Failed(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        if inner_pid > 0 {
            // It is our child (CLONE_PARENT) and exits after reporting.
            sys::reap(inner_pid);
        }
        return Err(if e.is_vanished() {
            EnterError::Vanished
        } else {
            EnterError::Inside(e.to_string())
        });
    }
    if inner_pid <= 0 {
        return Err(if pidfd_alive(&pinned.pidfd) {
            EnterError::Inside("the session process died before it started".into())
        } else {
            EnterError::Vanished
        });
    }
    let io = match parent_io {
        Some((stdin, stdout, stderr)) => SessionIo::Pipes {
            stdin,
            stdout,
            stderr,
        },
        None => {
            let master = sys::recv_fd(&pty_sock_parent)
                .ok_or_else(|| EnterError::Inside("no terminal was received".into()))?;
            check_pty_master(&master)?;
            SessionIo::Pty { master }
        }
    };
    let pid_ns = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(format!("/proc/{}/ns/pid", pinned.pid))
            .map_err(|_| EnterError::Vanished)?;
        (m.dev(), m.ino())
    };
    Ok(Spawned {
        pid_ns,
        outer_pid: inner_pid,
        inner_pid,
        io,
    })
}

/// The fd came from inside the container: make sure it is a pty master
/// (char device 5:2, the ptmx multiplexer) before relaying to it.
fn check_pty_master(fd: &OwnedFd) -> Result<(), EnterError> {
    let f = File::from(
        fd.try_clone()
            .map_err(|e| EnterError::Host(e.to_string()))?,
    );
    let meta = f.metadata().map_err(|e| EnterError::Host(e.to_string()))?;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let rdev = meta.rdev();
    if !meta.file_type().is_char_device() || libc::major(rdev) != 5 || libc::minor(rdev) != 2 {
        return Err(EnterError::Inside(
            "the container's /dev/ptmx is not a terminal multiplexer".into(),
        ));
    }
    Ok(())
}
