//! The system calls of entering, in one place: thin wrappers that turn a
//! `-1`/errno into `std::io::Error` and raw fds into `OwnedFd`.
//!
//! Run by the setuid session shell as root: on the host side before the
//! fork (pidfds, pipes, the fork itself) and in both children after it,
//! where the process is single-threaded and may still hold host fds. They
//! trust their arguments (prepared by [`super::spawn`] and the steps) and
//! nothing the container controls. Every `unsafe` is here or says why it
//! is not; the callers stay safe code, except the forks, whose contract
//! (a single-threaded caller) no wrapper can check.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_long(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An fd the kernel just returned, now owned.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: a fresh fd from the kernel that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// pidfd_open(2).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = cvt_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
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

/// openat(2) with `O_CLOEXEC` added; `None` is the cwd.
pub fn openat(dir: Option<RawFd>, path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let at = dir.unwrap_or(libc::AT_FDCWD);
    // SAFETY: path is NUL-terminated and outlives the call.
    owned(unsafe { libc::openat(at, path.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh fds that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec `SOCK_SEQPACKET` pair (for passing the pty master).
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: fresh fds we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// fork(2). Returns the child's pid, 0 in the child.
///
/// # Safety
/// The caller must be single-threaded: the child then may allocate and use
/// std, as no other thread can hold a lock it would inherit.
pub unsafe fn fork() -> io::Result<i32> {
    // SAFETY: the caller guarantees a single-threaded process.
    cvt(unsafe { libc::fork() })
}

/// `clone3(CLONE_INTO_CGROUP)` with fork semantics: the child starts life
/// in the cgroup-v2 directory `cgroup_dir`, without the migration that
/// writing to `cgroup.procs` would cost. Returns the child's pid (0 in the
/// child), or the error when the kernel cannot do it.
///
/// # Safety
/// As [`fork`]; in addition the child must not use glibc state that a raw
/// clone leaves stale (it never calls raise or pthread functions).
pub unsafe fn fork_into_cgroup(cgroup_dir: RawFd) -> io::Result<i32> {
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
    // a copy of our memory; the caller guarantees a single thread and no
    // stale glibc state in the child. args is live and correctly sized.
    let r = cvt_long(unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    })?;
    Ok(r as i32)
}

/// `clone(CLONE_PARENT)` with fork semantics: the child becomes our
/// parent's child. Returns its pid, 0 in the child.
///
/// # Safety
/// As [`fork_into_cgroup`].
pub unsafe fn fork_sibling() -> io::Result<i32> {
    // SAFETY: without CLONE_VM or a stack this is fork(2); the caller
    // guarantees a single thread and no stale glibc state in the child.
    let r = cvt_long(unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    })?;
    Ok(r as i32)
}

/// Waits for our child `pid` to exit (its status is not wanted).
pub fn reap(pid: i32) {
    let mut st = 0;
    // SAFETY: waiting for our own child; st is a valid int.
    unsafe { libc::waitpid(pid, &mut st, 0) };
}

/// Ends the calling process at once: no destructors, no atexit handlers
/// (a forked child must not run the parent's).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no state of ours.
    unsafe { libc::_exit(code) }
}

/// Dies of `sig` like the process whose status we pass on.
pub fn reraise(sig: libc::c_int) {
    // SAFETY: resetting a disposition, unblocking and raising a signal, on
    // zero-initialised plain-data locals.
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

/// The one data byte a message carrying an fd needs.
fn one_byte_iov(data: &mut [u8; 1]) -> libc::iovec {
    libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    }
}

/// Control-buffer size for one SCM_RIGHTS fd.
fn fd_cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize }
}

/// A msghdr over `iov` and `control`; both must outlive its use.
fn one_fd_msghdr(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zeroed is a valid initial state.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    msg
}

/// Receives one fd sent with [`send_fd`] (close-on-exec), if one is there.
pub fn recv_fd(sock: &OwnedFd) -> Option<OwnedFd> {
    let mut data = [0u8; 1];
    let mut iov = one_byte_iov(&mut data);
    let mut cbuf = vec![0u8; fd_cmsg_space()];
    let mut msg = one_fd_msghdr(&mut iov, &mut cbuf);
    // SAFETY: msg points at iov, data and cbuf, all live, sized as declared.
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

/// Sends `fd` over the unix socket `sock` (SCM_RIGHTS).
pub fn send_fd(sock: &OwnedFd, fd: RawFd) -> io::Result<()> {
    let mut data = [0u8; 1];
    let mut iov = one_byte_iov(&mut data);
    // SAFETY: a pure size computation.
    let len = unsafe { libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; fd_cmsg_space()];
    let msg = one_fd_msghdr(&mut iov, &mut cbuf);
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
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// close_range(2) over `first..=last` with `flags` (0 closes).
pub fn close_range(first: u32, last: u32, flags: u32) -> io::Result<()> {
    // SAFETY: closes (or marks) a range of our own fds; the caller holds no
    // Rust owner of them it will use again.
    cvt_long(unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) })?;
    Ok(())
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

/// capset(2) of the calling thread to the given 64-bit sets.
pub fn capset(eff: u64, prm: u64, inh: u64) -> io::Result<()> {
    let header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
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
    cvt_long(r)?;
    Ok(())
}

/// prctl(2) with integer arguments only.
fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl with integer arguments; none of the options used here
    // reads or writes memory.
    cvt(unsafe { libc::prctl(option, arg, 0, 0, 0) })?;
    Ok(())
}

/// SIGKILL when the parent dies (reset by every credential change).
pub fn set_pdeathsig_kill() -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
}

/// Clears the dumpable flag: nothing may ptrace us or open our `/proc/PID`.
pub fn clear_dumpable() -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, 0)
}

/// Drops capability `cap` from the bounding set.
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap))
}

/// Clears the ambient capability set.
pub fn clear_ambient() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    Ok(())
}

/// Sets `no_new_privs` (never cleared again).
pub fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
}

pub fn getppid() -> i32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getppid() }
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    cvt(unsafe { libc::setsid() })?;
    Ok(())
}

pub fn setgroups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: the slice is live and its length is passed with it.
    cvt(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    Ok(())
}

pub fn setresgid(gid: u32) -> io::Result<()> {
    // SAFETY: integer arguments.
    cvt(unsafe { libc::setresgid(gid, gid, gid) })?;
    Ok(())
}

pub fn setresuid(uid: u32) -> io::Result<()> {
    // SAFETY: integer arguments.
    cvt(unsafe { libc::setresuid(uid, uid, uid) })?;
    Ok(())
}

/// (effective uid, effective gid).
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: no arguments, cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

pub fn umask(mask: u32) {
    // SAFETY: integer argument, cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) };
}

pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: path is NUL-terminated and outlives the call.
    cvt(unsafe { libc::chdir(path.as_ptr()) })?;
    Ok(())
}

pub fn fchdir(dir: RawFd) -> io::Result<()> {
    // SAFETY: integer argument; a bad fd is an error, not UB.
    cvt(unsafe { libc::fchdir(dir) })?;
    Ok(())
}

pub fn chroot(path: &CStr) -> io::Result<()> {
    // SAFETY: path is NUL-terminated and outlives the call.
    cvt(unsafe { libc::chroot(path.as_ptr()) })?;
    Ok(())
}

/// setns(2) through a pidfd into the namespaces `flags`.
pub fn setns(pidfd: RawFd, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: integer arguments; a bad fd is an error, not UB.
    cvt(unsafe { libc::setns(pidfd, flags) })?;
    Ok(())
}

pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: integer arguments; the target is one of our standard fds,
    // which no Rust owner holds.
    cvt(unsafe { libc::dup2(from, to) })?;
    Ok(())
}

/// Best-effort write of `bytes` to fd 2.
pub fn write_stderr(bytes: &[u8]) {
    // SAFETY: writes from a live buffer of the given length.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// Every catchable signal back to its default disposition (Rust ignores
/// SIGPIPE, and ignored dispositions survive exec), and none blocked.
pub fn reset_signals() {
    // SAFETY: resets and mask changes on our own process, with a
    // zero-initialised plain-data sigset.
    unsafe {
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// execve(2); returns only on failure, with the error.
/// Executes the program in `fd` (a sealed memfd: porthole-sftp) with
/// `execveat(fd, "", ..., AT_EMPTY_PATH)`: nothing is looked up in the
/// container's filesystem, so the image cannot substitute anything for it.
/// Only returns on failure. The fd may be close-on-exec: the kernel has
/// read the ELF program before it closes it (only a script could not run).
pub fn execveat_fd(
    fd: RawFd,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    if argv.last().map_or(true, |p| !p.is_null()) || envp.last().map_or(true, |p| !p.is_null()) {
        return io::Error::from_raw_os_error(libc::EINVAL);
    }
    // SAFETY: an empty NUL-terminated path; argv/envp are NULL-terminated
    // (checked above) arrays of pointers to C strings the caller keeps
    // alive (see `ExecArgs`); `fd` is an integer the kernel checks.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

/// Clears close-on-exec on `fd`, so the program exec'd next keeps it.
pub fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments on an fd of ours.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
    Ok(())
}

pub fn execve(
    program: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    if argv.last().map_or(true, |p| !p.is_null()) || envp.last().map_or(true, |p| !p.is_null()) {
        return io::Error::from_raw_os_error(libc::EINVAL);
    }
    // SAFETY: argv/envp are NULL-terminated (checked above) arrays of
    // pointers to C strings the caller keeps alive (see `ExecArgs`).
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// Opens the pty multiplexer of the (container's) `/dev/ptmx`.
pub fn open_ptmx() -> io::Result<OwnedFd> {
    openat(
        None,
        c"/dev/ptmx",
        libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
    )
}

/// unlockpt(3) of a pty master.
pub fn unlockpt(master: &OwnedFd) -> io::Result<()> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from a live local.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    Ok(())
}

/// Opens the peer (slave) of a pty master without a path (TIOCGPTPEER).
pub fn pty_peer(master: &OwnedFd) -> io::Result<OwnedFd> {
    const TIOCGPTPEER: libc::c_ulong = 0x5441;
    // SAFETY: TIOCGPTPEER takes open flags as an integer and returns an fd.
    owned(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY,
        )
    })
}

/// TIOCSWINSZ.
pub fn set_winsize(tty: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a live local.
    cvt(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &size) })?;
    Ok(())
}

/// Makes `tty` our controlling terminal (TIOCSCTTY).
pub fn set_controlling_tty(tty: &OwnedFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    cvt(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) })?;
    Ok(())
}

/// seccomp(SECCOMP_SET_MODE_FILTER): installs `filter` with `flags` on the
/// calling thread. Allocates nothing (it may run under no_new_privs as the
/// last step before exec).
pub fn seccomp_set_filter(filter: &[libc::sock_filter], flags: u32) -> io::Result<()> {
    const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
    // confine bounds a compiled filter to the kernel's 4096 instructions;
    // anything longer is refused here rather than truncated.
    let len =
        u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prog points at a live instruction array of `len` entries for
    // the duration of the call; the kernel copies it and never writes it.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            libc::c_ulong::from(flags),
            &prog as *const libc::sock_fprog,
        )
    })?;
    Ok(())
}

pub fn setrlimit(res: u32, lim: &libc::rlimit) -> io::Result<()> {
    // SAFETY: reads a live rlimit value.
    cvt(unsafe { libc::setrlimit(res as libc::__rlimit_resource_t, lim) })?;
    Ok(())
}

pub fn getrlimit(res: u32) -> io::Result<libc::rlimit> {
    let mut have = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: writes into a live local rlimit.
    cvt(unsafe { libc::getrlimit(res as libc::__rlimit_resource_t, &mut have) })?;
    Ok(have)
}
