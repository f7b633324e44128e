//! Entering an instance: pin its init, then fork into its cgroups and
//! namespaces and exec as its user.
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
//! outer exits at once. The supervisor (our caller) never leaves the host
//! namespaces.

use crate::session::confine::Confinement;
use crate::session::container::{CgroupDir, ProcessCreds};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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

fn host_err(what: &str) -> EnterError {
    EnterError::Host(format!("{what}: {}", std::io::Error::last_os_error()))
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

/// pidfd_open(2).
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// True while the process behind the pidfd is alive.
pub fn pidfd_alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: signal 0 only checks; the pidfd is valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

fn open_dir_at(dirfd: Option<&OwnedFd>, path: &str, flags: i32) -> std::io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let at = dirfd.map(|d| d.as_raw_fd()).unwrap_or(libc::AT_FDCWD);
    // SAFETY: c is NUL-terminated and outlives the call.
    let fd = unsafe { libc::openat(at, c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd from openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

fn pipe() -> Result<(OwnedFd, OwnedFd), EnterError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(host_err("pipe2"));
    }
    // SAFETY: pipe2 returned two fresh fds that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn socketpair() -> Result<(OwnedFd, OwnedFd), EnterError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(host_err("socketpair"));
    }
    // SAFETY: fresh fds we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
    let (status_r, status_w) = pipe()?;
    let (pty_sock_parent, pty_sock_child) = socketpair()?;
    let (child_io, parent_io) = if plan.pty.is_some() {
        (None, None)
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        (Some([in_r, out_w, err_w]), Some((in_w, out_r, err_r)))
    };
    let supervisor = std::process::id() as i32;

    let unified = plan
        .cgroups
        .iter()
        .find(|(d, _)| d.controllers.is_empty())
        .map(|(_, f)| f.as_raw_fd());
    let (outer, born_in_unified) = match unified.map(fork_into_cgroup) {
        Some(Ok(pid)) => (pid, true),
        // Kernels without clone3/CLONE_INTO_CGROUP: fork, then join by writing.
        _ => {
            // SAFETY: porthole-shell is single-threaded (no thread is ever
            // spawned), so the child may allocate and use std after fork.
            (unsafe { libc::fork() }, false)
        }
    };
    if outer < 0 {
        return Err(host_err("fork"));
    }
    if outer == 0 {
        drop(status_r);
        drop(pty_sock_parent);
        drop(parent_io);
        let mut status = Some(File::from(status_w));
        let code = match outer_child(
            pinned,
            plan,
            supervisor,
            born_in_unified,
            &mut status,
            child_io,
            pty_sock_child,
        ) {
            Ok(code) => code,
            Err(msg) => {
                if let Some(s) = status.as_mut() {
                    let _ = s.write_all(format!("E{msg}\n").as_bytes());
                }
                125
            }
        };
        // SAFETY: _exit never returns; no destructors or atexit handlers
        // of the parent's state may run in the child.
        unsafe { libc::_exit(code) }
    }

    drop(status_w);
    drop(pty_sock_child);
    drop(child_io);
    let mut report = String::new();
    let _ = File::from(status_r)
        .take(64 * 1024)
        .read_to_string(&mut report);
    let mut inner_pid = 0;
    let mut error = None;
    for line in report.lines() {
        if let Some(p) = line.strip_prefix('P') {
            inner_pid = p.parse().unwrap_or(0);
        } else if let Some(e) = line.strip_prefix('E') {
            error = Some(e.to_owned());
        }
    }
    // The outer process exits as soon as it has reported.
    reap(outer);
    if let Some(e) = error {
        if inner_pid > 0 {
            // It is our child (CLONE_PARENT) and exits after reporting.
            reap(inner_pid);
        }
        return Err(if e == "vanished" {
            EnterError::Vanished
        } else {
            EnterError::Inside(e)
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
            let master = recv_fd(&pty_sock_parent)
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

/// `clone3(CLONE_INTO_CGROUP)` with fork semantics: the child starts life
/// in the cgroup-v2 directory `cgroup_dir`, without the migration that
/// writing to `cgroup.procs` would cost. Returns the child's pid (0 in the
/// child), or the error when the kernel cannot do it.
fn fork_into_cgroup(cgroup_dir: RawFd) -> std::io::Result<i32> {
    /// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2).
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup_dir as u64,
    };
    // SAFETY: without CLONE_VM or a stack this is fork(2): the child runs on
    // a copy of our memory. porthole-shell is single-threaded, so no lock
    // is held by another thread; the child uses no glibc state that a raw
    // clone leaves stale (it never calls raise or pthread functions).
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as i32)
}

/// Joins the v2 cgroup whose directory is `dir` by writing our pid.
fn join_unified(dir: &File) -> std::io::Result<()> {
    let fd = open_dir_at_raw(
        dir.as_raw_fd(),
        "cgroup.procs",
        libc::O_WRONLY | libc::O_NOFOLLOW,
    )?;
    File::from(fd).write_all(std::process::id().to_string().as_bytes())
}

fn open_dir_at_raw(dirfd: RawFd, path: &str, flags: i32) -> std::io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated and outlives the call.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd from openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn reap(pid: i32) {
    let mut st = 0;
    // SAFETY: waiting for our own child; st is a valid int.
    unsafe { libc::waitpid(pid, &mut st, 0) };
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

fn recv_fd(sock: &OwnedFd) -> Option<OwnedFd> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; zeroed is a valid initial state.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg points at live buffers sized as declared.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n <= 0 {
        return None;
    }
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR walks its control buffer.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return None;
    }
    // SAFETY: cmsg is non-null and inside cbuf.
    let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
    if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS {
        return None;
    }
    // SAFETY: SCM_RIGHTS data holds at least one int; read it unaligned.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const RawFd) };
    // SAFETY: the kernel installed this fd in our table for us.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send_fd(sock: &OwnedFd, fd: RawFd) -> Result<(), String> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: pure size computations.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize,
            libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize,
        )
    };
    let mut cbuf = vec![0u8; space];
    // SAFETY: plain data; zeroed is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer is large enough for one SCM_RIGHTS int.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = len;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
    }
    // SAFETY: msg points at live buffers.
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) } < 0 {
        return Err(format!("sendmsg: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn check(r: libc::c_int, what: &str) -> Result<(), String> {
    if r < 0 {
        Err(os_err(what))
    } else {
        Ok(())
    }
}

/// Runs in the outer child: host pid namespace, about to join everything.
fn outer_child(
    pinned: &Pinned,
    plan: &Plan,
    supervisor: i32,
    born_in_unified: bool,
    status: &mut Option<File>,
    child_io: Option<[OwnedFd; 3]>,
    pty_sock: OwnedFd,
) -> Result<i32, String> {
    // SAFETY: prctl/getppid with integer arguments.
    unsafe {
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
            "prctl",
        )?;
        if libc::getppid() != supervisor {
            return Err("supervisor gone".into());
        }
    }
    for (dir, file) in &plan.cgroups {
        let joined = if dir.controllers.is_empty() {
            if born_in_unified {
                continue;
            }
            join_unified(file)
        } else {
            // `0`: this thread, the only one (see open_cgroups).
            let mut f = file;
            f.write_all(b"0")
        };
        if let Err(e) = joined {
            if dir.is_required() {
                return Err(format!("joining cgroup {}: {e}", dir.dir.display()));
            }
        }
    }
    if let Some(adj) = plan.confinement.oom_score_adj {
        // Written on the host side (the host's /proc), inherited by the
        // session and everything it starts, as runc does for exec. Lowering
        // it needs CAP_SYS_RESOURCE: without it the session keeps a higher
        // score (killed sooner under memory pressure, never later).
        let current: Option<i32> = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let written = std::fs::write("/proc/self/oom_score_adj", adj.to_string());
        if let Err(e) = written {
            if current.map_or(true, |c| c < adj) {
                return Err(format!("setting oom_score_adj: {e}"));
            }
        }
    }
    if pinned.ns_flags != 0 {
        // SAFETY: setns with a valid pidfd and namespace flags.
        let r = unsafe { libc::setns(pinned.pidfd.as_raw_fd(), pinned.ns_flags) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Err("vanished".into());
            }
            return Err(format!("setns: {e}"));
        }
    }
    // SAFETY: fchdir/chroot on the pinned root fd and a constant path.
    unsafe {
        check(
            libc::fchdir(pinned.root.as_raw_fd()),
            "fchdir to container root",
        )?;
        check(libc::chroot(c".".as_ptr()), "chroot")?;
        check(libc::chdir(c"/".as_ptr()), "chdir /")?;
    }
    // CLONE_PARENT: the inner process becomes the supervisor's child, so
    // this process can exit at once instead of staying alive for the whole
    // session only to wait for it (one process and ~1.8 MB of RSS less per
    // session); the supervisor reaps the inner process itself.
    // SAFETY: without CLONE_VM or a stack this is fork(2) (single-threaded,
    // see spawn() and fork_into_cgroup for what a raw clone leaves stale).
    let inner = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    } as i32;
    if inner < 0 {
        return Err(os_err("fork into the instance"));
    }
    if inner == 0 {
        let keep_status = status.as_ref().map(|s| s.as_raw_fd());
        let err = inner_child(plan, child_io, &pty_sock, keep_status).unwrap_or_else(|e| e);
        if let Some(s) = status.as_mut() {
            let _ = s.write_all(format!("E{err}\n").as_bytes());
        }
        // SAFETY: _exit never returns.
        unsafe { libc::_exit(126) }
    }
    // Report the inner pid and close our end: the supervisor reads until
    // every writer is gone (we closed it, the inner process exec'd).
    if let Some(mut s) = status.take() {
        let _ = s.write_all(format!("P{inner}\n").as_bytes());
    }
    Ok(0)
}

/// Dies of `sig` like the process whose status we pass on.
pub fn reraise(sig: libc::c_int) {
    // SAFETY: resetting a disposition, unblocking and raising a signal.
    unsafe {
        let rl: libc::rlimit = std::mem::zeroed();
        libc::setrlimit(libc::RLIMIT_CORE, &rl);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capset(eff: u64, prm: u64, inh: u64) -> Result<(), String> {
    let header = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    }; // _LINUX_CAPABILITY_VERSION_3
    let data = [
        CapData {
            effective: eff as u32,
            permitted: prm as u32,
            inheritable: inh as u32,
        },
        CapData {
            effective: (eff >> 32) as u32,
            permitted: (prm >> 32) as u32,
            inheritable: (inh >> 32) as u32,
        },
    ];
    // SAFETY: header and data are valid for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(os_err("capset"));
    }
    Ok(())
}

/// Sets the process non-dumpable. Every credential change resets the flag
/// to `fs.suid_dumpable`, so it is cleared again after each one: while this
/// process still runs our code, nothing in the container may ptrace it or
/// open its `/proc/PID` files.
fn clear_dumpable() -> Result<(), String> {
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) },
        "clearing dumpable",
    )
}

/// Closes every fd but stdio and `keep`: the pidfd, the `/proc/PID` and
/// root directories, the cgroup files and the host's procfs are host
/// objects the session must never hold, even before its exec.
fn close_all_except(keep: &mut [RawFd]) -> Result<(), String> {
    keep.sort_unstable();
    let mut from: u32 = 3;
    for &fd in keep.iter() {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd < from {
            continue;
        }
        if fd > from {
            // SAFETY: closes a range of our own fds; nothing refers to them.
            check(
                unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32) } as libc::c_int,
                "close_range",
            )?;
        }
        from = fd.saturating_add(1);
    }
    // SAFETY: as above.
    check(
        unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) } as libc::c_int,
        "close_range",
    )
}

/// Writes the instance's LSM label as our exec label, through the host's
/// procfs (opened before entering; see `confine::host_proc`).
fn set_lsm_exec_label(plan: &Plan) -> Result<(), String> {
    let (Some(label), Some(proc_fd)) = (&plan.confinement.lsm, &plan.host_proc) else {
        if plan.confinement.lsm.is_some() {
            return Err("no host procfs to set the LSM label through".into());
        }
        return Ok(());
    };
    let (attr, value) = label.attr_write();
    let path = |a: &str| CString::new(format!("thread-self/{a}")).map_err(|e| e.to_string());
    let (primary, fallback) = (path(attr)?, path(label.attr_fallback())?);
    let fd = crate::session::confine::open_at_write(proc_fd, &primary)
        .or_else(|_| crate::session::confine::open_at_write(proc_fd, &fallback))
        .map_err(|e| format!("opening the LSM exec attribute: {e}"))?;
    let mut f = File::from(fd);
    f.write_all(value.as_bytes())
        .map_err(|e| format!("setting the LSM exec label {value:?}: {e}"))
}

/// Runs in the inner child: inside every namespace, still privileged.
/// Applies, in order, what `runc exec` applies, becomes the container user
/// and execs. Returns only on failure.
///
/// The order matters: the LSM label is written while the host's procfs fd
/// is still open, then every host fd is closed before any privilege is
/// given up; limits are set while root may still raise them; without
/// no_new_privs the seccomp filter needs CAP_SYS_ADMIN, so it goes in
/// before the uid change (runc's order), with it as late as possible.
fn inner_child(
    plan: &Plan,
    child_io: Option<[OwnedFd; 3]>,
    pty_sock: &OwnedFd,
    status_fd: Option<RawFd>,
) -> Result<String, String> {
    // SAFETY: all calls below are plain syscalls on valid arguments in a
    // single-threaded child; pointers reference live locals.
    let outer = unsafe {
        // The outer child as we see it: 0, as it is outside the instance's
        // pid namespace (pin refuses an instance sharing ours); compared
        // below rather than assumed.
        let outer = libc::getppid();
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
            "prctl",
        )?;
        check(libc::setsid(), "setsid")?;
        outer
    };
    set_lsm_exec_label(plan)?;
    let mut keep: Vec<RawFd> = vec![pty_sock.as_raw_fd()];
    keep.extend(status_fd);
    if let Some(io) = &child_io {
        keep.extend(io.iter().map(|f| f.as_raw_fd()));
    }
    close_all_except(&mut keep)?;
    for (res, lim) in &plan.confinement.rlimits {
        crate::session::confine::apply_limit(*res, lim)
            .map_err(|e| format!("setting resource limit {res}: {e}"))?;
    }
    // SAFETY: see the first block.
    unsafe {
        // Drop from the bounding set what the container's init does not have.
        for cap in 0..64u32 {
            if plan.creds.cap_bnd & (1u64 << cap) == 0 {
                let r = libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                    return Err(os_err("dropping capabilities"));
                }
            }
        }
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
            "clearing ambient capabilities",
        )?;
    }
    if let (Some(prog), false) = (&plan.confinement.seccomp, plan.creds.no_new_privs) {
        crate::session::confine::install(prog)
            .map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    // SAFETY: see the first block.
    unsafe {
        let groups: Vec<libc::gid_t> = plan.groups.clone();
        check(libc::setgroups(groups.len(), groups.as_ptr()), "setgroups")?;
        check(libc::setresgid(plan.gid, plan.gid, plan.gid), "setgid")?;
    }
    clear_dumpable()?;
    // SAFETY: see the first block.
    unsafe {
        check(libc::setresuid(plan.uid, plan.uid, plan.uid), "setuid")?;
    }
    clear_dumpable()?;
    // SAFETY: see the first block.
    unsafe {
        // Changing the effective ids cleared the parent-death signal set
        // above: arm it again, or the session outlives a supervisor that
        // was killed (SIGKILL, a crash). If the outer child died before
        // that, we were reparented and getppid() changed.
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
            "prctl",
        )?;
        if libc::getppid() != outer {
            return Err("supervisor gone".into());
        }
    }
    // A root container user keeps exactly the init's capabilities; any
    // other user lost them all with setuid and we make sure of it.
    if plan.uid == 0 {
        capset(plan.creds.cap_eff, plan.creds.cap_prm, plan.creds.cap_inh)?;
    } else {
        capset(0, 0, 0)?;
    }
    clear_dumpable()?;
    // SAFETY: integer-argument syscalls.
    unsafe {
        // The shell runs with umask 077; the session gets the instance's.
        libc::umask(plan.creds.umask as libc::mode_t);
        if plan.creds.no_new_privs {
            check(
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                "no_new_privs",
            )?;
        }
        // Still non-dumpable (cleared after every change above); exec turns
        // it back on for the container's program.
        if libc::geteuid() != plan.uid || libc::getegid() != plan.gid {
            return Err("credentials did not change".into());
        }
    }
    // HOME: chdir as the user, and make sure we ended up where we asked
    // (a symlinked HOME resolves inside the container's root anyway).
    let mut notice = None;
    // SAFETY: home is NUL-terminated.
    let home_ok = unsafe { libc::chdir(plan.home.as_ptr()) } == 0
        && std::env::current_dir()
            .map(|d| d.as_os_str().as_encoded_bytes() == plan.home.as_bytes())
            .unwrap_or(false);
    if !home_ok {
        // SAFETY: constant path.
        check(unsafe { libc::chdir(c"/".as_ptr()) }, "chdir /")?;
        notice = Some(format!(
            "porthole: home directory {} is not usable; starting in /\r\n",
            plan.home.to_string_lossy()
        ));
    }
    match (plan.pty, child_io) {
        (Some(ws), _) => setup_pty(ws, pty_sock)?,
        (None, Some([stdin, stdout, stderr])) => {
            // SAFETY: dup2 onto the standard fds; the pipes are ours.
            unsafe {
                check(libc::dup2(stdin.as_raw_fd(), 0), "dup2")?;
                check(libc::dup2(stdout.as_raw_fd(), 1), "dup2")?;
                check(libc::dup2(stderr.as_raw_fd(), 2), "dup2")?;
            }
        }
        (None, None) => return Err("no stdio for the session".into()),
    }
    if let Some(n) = notice {
        // SAFETY: writing a byte buffer to fd 2.
        unsafe { libc::write(2, n.as_ptr().cast(), n.len()) };
    }
    // SAFETY: resets and mask changes on our own process before exec.
    unsafe {
        // Rust ignores SIGPIPE; ignored dispositions survive exec.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        // Every fd but stdio must close at exec: nothing of the host leaks.
        check(
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) as libc::c_int,
            "close_range",
        )?;
    }
    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = plan
        .env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    if let (Some(prog), true) = (&plan.confinement.seccomp, plan.creds.no_new_privs) {
        // With no_new_privs the filter needs no privilege: install it last,
        // so as few of our own calls as possible run under it.
        crate::session::confine::install(prog)
            .map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    // SAFETY: argv/envp are NULL-terminated arrays of live C strings.
    unsafe { libc::execve(plan.program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(format!(
        "cannot run {}: {}",
        plan.program.to_string_lossy(),
        std::io::Error::last_os_error()
    ))
}

/// Gives the session a terminal of the container's own devpts: opened as
/// the container user, so nothing of the host's tty enters the container.
fn setup_pty(ws: WinSize, sock: &OwnedFd) -> Result<(), String> {
    // SAFETY: plain syscalls; the fds are checked before use.
    unsafe {
        let master = libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if master < 0 {
            return Err(os_err("the container has no usable /dev/ptmx"));
        }
        let master = OwnedFd::from_raw_fd(master);
        let unlock: libc::c_int = 0;
        check(
            libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock),
            "unlockpt",
        )?;
        const TIOCGPTPEER: libc::c_ulong = 0x5441;
        let slave = libc::ioctl(
            master.as_raw_fd(),
            TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY,
        );
        if slave < 0 {
            return Err(os_err("opening the terminal"));
        }
        let slave = OwnedFd::from_raw_fd(slave);
        let size = libc::winsize {
            ws_row: ws.rows,
            ws_col: ws.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        check(
            libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &size),
            "setting the window size",
        )?;
        check(
            libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0),
            "setting the controlling terminal",
        )?;
        for fd in 0..3 {
            check(libc::dup2(slave.as_raw_fd(), fd), "dup2")?;
        }
        send_fd(sock, master.as_raw_fd())?;
    }
    Ok(())
}
