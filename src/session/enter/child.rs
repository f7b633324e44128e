//! The forked side of entering: one loop that runs the step list
//! ([`super::steps`]) and one executor, [`run_step`], that performs a step.
//!
//! Runs in the two children of the setuid session shell, as root: first
//! the outer child (host pid namespace, joins cgroups, namespaces and the
//! root), then, from [`Step::CloneInner`] on, the inner child (inside every
//! namespace of the instance) until it execs the session's program as the
//! container user. Single-threaded (a fork of a single-threaded process).
//! It trusts the plan and the pinned fds prepared on the host side; the
//! container's files it touches (`/dev/ptmx`, HOME) are opened only after
//! the process is the container user, and the pty master it sends out is
//! checked by the supervisor.
//!
//! Never returns: a step's failure is reported ([`ChildReport::Failed`]) and
//! the process exits; success ends in `execve` (inner) or, for the outer
//! child, in reporting the inner pid.

use super::report::{ChildError, ChildReport};
use super::steps::Step;
use super::{sys, Pinned, Plan};
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// `execve`'s argument arrays, built before the fork from the plan's C
/// strings (which the child's copy of memory keeps alive): the last steps
/// allocate nothing, and nothing runs under the seccomp filter but exec.
pub struct ExecArgs {
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
}

impl ExecArgs {
    pub fn new(plan: &Plan) -> ExecArgs {
        let nul_terminated = |v: &[CString]| {
            v.iter()
                .map(|a| a.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        ExecArgs {
            argv: nul_terminated(&plan.argv),
            envp: nul_terminated(&plan.env),
        }
    }
}

/// What a child holds while it runs its steps.
pub struct Child<'a> {
    pub pinned: &'a Pinned,
    pub plan: &'a Plan,
    pub exec: &'a ExecArgs,
    /// The parent we must still have (the supervisor for the outer child;
    /// for the inner one, what it saw right after the fork).
    pub parent: i32,
    /// The outer child was born in the v2 cgroup (clone3).
    pub born_in_unified: bool,
    /// Write end of the status pipe.
    pub status: File,
    /// Our end of the socket the pty master is sent over.
    pub pty_sock: OwnedFd,
    /// The session's ends of the stdio pipes (no pty).
    pub io: Option<[OwnedFd; 3]>,
    /// Said to the user once stdio is set up.
    pub notice: Option<String>,
    /// Past `CloneInner`: this is the inner child.
    pub inner: bool,
}

/// What the loop does after a step.
pub enum Next {
    Continue,
    /// The outer child's part is done (it forked the inner child).
    Exit,
}

/// Runs `steps` in order; never returns.
pub fn run(mut cx: Child<'_>, steps: &[Step]) -> ! {
    for &step in steps {
        match run_step(step, &mut cx) {
            Ok(Next::Continue) => {}
            Ok(Next::Exit) => sys::exit_now(0),
            Err(e) => fail(&mut cx, e),
        }
    }
    // A list always ends in Exec or CloneInner; say so if one did not.
    fail(
        &mut cx,
        ChildError::new(Step::Exec, "the session was not started"),
    )
}

fn fail(cx: &mut Child<'_>, e: ChildError) -> ! {
    let _ = cx.status.write_all(&ChildReport::Failed(e).encode());
    sys::exit_now(if cx.inner { 126 } else { 125 })
}

/// Maps an `io::Result` to a failure of `step` doing `what`.
fn at<T>(step: Step, what: &str, r: std::io::Result<T>) -> Result<T, ChildError> {
    r.map_err(|e| ChildError::io(step, what, &e))
}

/// Performs one step.
pub fn run_step(step: Step, cx: &mut Child<'_>) -> Result<Next, ChildError> {
    let plan = cx.plan;
    match step {
        Step::PdeathSig => at(step, "prctl", sys::set_pdeathsig_kill())?,
        Step::CheckParent => {
            if sys::getppid() != cx.parent {
                return Err(ChildError::new(step, "supervisor gone"));
            }
        }
        Step::JoinCgroups => join_cgroups(cx)?,
        Step::OomScoreAdj => oom_score_adj(plan)?,
        Step::SetNs => {
            if cx.pinned.ns_flags != 0 {
                let r = sys::setns(cx.pinned.pidfd.as_raw_fd(), cx.pinned.ns_flags);
                at(step, "setns", r)?;
            }
        }
        Step::Chroot => {
            let r = sys::fchdir(cx.pinned.root.as_raw_fd());
            at(step, "fchdir to container root", r)?;
            at(step, "chroot", sys::chroot(c"."))?;
            at(step, "chdir /", sys::chdir(c"/"))?;
        }
        Step::CloneInner => {
            // CLONE_PARENT: the inner process becomes the supervisor's
            // child, so this process can exit at once instead of staying
            // alive for the whole session only to wait for it (one process
            // and ~1.8 MB of RSS less per session); the supervisor reaps
            // the inner process itself.
            // SAFETY: single-threaded (see spawn); the inner child uses no
            // raise or pthread functions.
            let pid = at(step, "fork into the instance", unsafe {
                sys::fork_sibling()
            })?;
            if pid == 0 {
                // Our parent as we see it: the supervisor is outside the
                // instance's pid namespace, so 0; compared again after
                // the uid change rather than assumed.
                cx.parent = sys::getppid();
                cx.inner = true;
                return Ok(Next::Continue);
            }
            // Report the inner pid and exit: the supervisor reads until
            // every writer is gone (we exit, the inner process execs).
            let _ = cx.status.write_all(&ChildReport::Started { pid }.encode());
            return Ok(Next::Exit);
        }
        Step::SetSid => at(step, "setsid", sys::setsid())?,
        Step::LsmExecLabel => set_lsm_exec_label(plan)?,
        Step::CloseHostFds => {
            let mut keep = vec![cx.pty_sock.as_raw_fd(), cx.status.as_raw_fd()];
            // The sealed program and the audit pipe (porthole-sftp): made
            // on the host for this session, nothing of the host's.
            keep.extend(plan.program_fd.iter().map(|f| f.as_raw_fd()));
            keep.extend(plan.pass_fd.iter().map(|f| f.as_raw_fd()));
            if let Some(io) = &cx.io {
                keep.extend(io.iter().map(|f| f.as_raw_fd()));
            }
            at(step, "close_range", close_all_except(&mut keep))?;
        }
        Step::Rlimits => {
            for (res, lim) in &plan.confinement.rlimits {
                let r = apply_limit(*res, lim);
                at(step, &format!("setting resource limit {res}"), r)?;
            }
        }
        Step::DropBoundingSet => {
            for cap in 0..64u32 {
                if plan.creds.cap_bnd & (1u64 << cap) != 0 {
                    continue;
                }
                match sys::capbset_drop(cap) {
                    // Beyond the kernel's last capability.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    r => at(step, "dropping capabilities", r)?,
                }
            }
        }
        Step::ClearAmbient => at(step, "clearing ambient capabilities", sys::clear_ambient())?,
        Step::Seccomp => {
            if let Some(prog) = &plan.confinement.seccomp {
                let r = sys::seccomp_set_filter(&prog.filter, prog.flags);
                at(step, "installing the seccomp filter", r)?;
            }
        }
        Step::SetGroups => at(step, "setgroups", sys::setgroups(&plan.groups))?,
        Step::SetGid => at(step, "setgid", sys::setresgid(plan.gid))?,
        Step::ClearDumpable => at(step, "clearing dumpable", sys::clear_dumpable())?,
        Step::SetUid => at(step, "setuid", sys::setresuid(plan.uid))?,
        Step::CapsOfInit => {
            let c = &plan.creds;
            at(step, "capset", sys::capset(c.cap_eff, c.cap_prm, c.cap_inh))?;
        }
        Step::DropAllCaps => at(step, "capset", sys::capset(0, 0, 0))?,
        Step::Umask => sys::umask(plan.creds.umask),
        Step::NoNewPrivs => at(step, "no_new_privs", sys::set_no_new_privs())?,
        Step::CheckCreds => {
            if sys::effective_ids() != (plan.uid, plan.gid) {
                return Err(ChildError::new(step, "credentials did not change"));
            }
        }
        Step::ChdirHome => {
            // chdir as the user, and make sure we ended up where we asked
            // (a symlinked HOME resolves inside the container's root anyway).
            let home_ok = sys::chdir(&plan.home).is_ok()
                && std::env::current_dir()
                    .map(|d| d.as_os_str().as_encoded_bytes() == plan.home.as_bytes())
                    .unwrap_or(false);
            if !home_ok {
                at(step, "chdir /", sys::chdir(c"/"))?;
                cx.notice = Some(format!(
                    "porthole: home directory {} is not usable; starting in /\r\n",
                    plan.home.to_string_lossy()
                ));
            }
        }
        Step::Pty => {
            let ws = plan.pty.unwrap_or_default();
            setup_pty(ws.rows, ws.cols, &cx.pty_sock)?;
        }
        Step::Stdio => {
            let Some([stdin, stdout, stderr]) = &cx.io else {
                return Err(ChildError::new(step, "no stdio for the session"));
            };
            for (fd, to) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
                at(step, "dup2", sys::dup2(fd.as_raw_fd(), to))?;
            }
        }
        Step::Notices => {
            if let Some(n) = cx.notice.take() {
                sys::write_stderr(n.as_bytes());
            }
        }
        Step::ResetSignals => sys::reset_signals(),
        Step::CloexecAll => {
            // Every fd but stdio must close at exec: nothing of the host leaks.
            let r = sys::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            at(step, "close_range", r)?;
            // Except the one pipe the program is told about (argv).
            if let Some(f) = &plan.pass_fd {
                at(
                    step,
                    "keeping the event pipe",
                    sys::clear_cloexec(f.as_raw_fd()),
                )?;
            }
        }
        Step::Exec => {
            // Still non-dumpable (cleared after every change above); exec
            // turns it back on for the container's program.
            let Some(fd) = &plan.program_fd else {
                let e = sys::execve(&plan.program, &cx.exec.argv, &cx.exec.envp);
                let what = format!("cannot run {}", plan.program.to_string_lossy());
                return Err(ChildError::io(step, what, &e));
            };
            // The sealed copy (porthole-sftp). The seccomp filter is
            // already installed: execveat must be allowed by the instance's
            // profile like execve (shell.rs refuses before entering when
            // the profile says otherwise; this catches an errno action).
            let e = sys::execveat_fd(fd.as_raw_fd(), &cx.exec.argv, &cx.exec.envp);
            let what = match e.raw_os_error() {
                Some(libc::EPERM | libc::ENOSYS) => format!(
                    "cannot run {}: the instance's seccomp profile does not allow execveat",
                    plan.program.to_string_lossy()
                ),
                _ => format!("cannot run {}", plan.program.to_string_lossy()),
            };
            return Err(ChildError::io(step, what, &e));
        }
    }
    Ok(Next::Continue)
}

/// Joins each cgroup: `0` (this thread, the only one; see `open_cgroups`)
/// into a v1 `tasks` file, our pid into the v2 `cgroup.procs` unless we
/// were born there. Only the required ones must succeed.
fn join_cgroups(cx: &Child<'_>) -> Result<(), ChildError> {
    for (dir, file) in &cx.plan.cgroups {
        let joined = if dir.controllers.is_empty() {
            if cx.born_in_unified {
                continue;
            }
            join_unified(file)
        } else {
            let mut f = file;
            f.write_all(b"0")
        };
        if let Err(e) = joined {
            if dir.is_required() {
                let what = format!("joining cgroup {}", dir.dir.display());
                return Err(ChildError::io(Step::JoinCgroups, what, &e));
            }
        }
    }
    Ok(())
}

/// Joins the v2 cgroup whose directory is `dir` by writing our pid.
fn join_unified(dir: &File) -> std::io::Result<()> {
    let fd = sys::openat(
        Some(dir.as_raw_fd()),
        c"cgroup.procs",
        libc::O_WRONLY | libc::O_NOFOLLOW,
    )?;
    File::from(fd).write_all(std::process::id().to_string().as_bytes())
}

/// Written on the host side (the host's /proc), inherited by the session
/// and everything it starts, as runc does for exec. Lowering it needs
/// CAP_SYS_RESOURCE: without it the session keeps a higher score (killed
/// sooner under memory pressure, never later).
fn oom_score_adj(plan: &Plan) -> Result<(), ChildError> {
    let Some(adj) = plan.confinement.oom_score_adj else {
        return Ok(());
    };
    let current: Option<i32> = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
        if current.map_or(true, |c| c < adj) {
            return Err(ChildError::io(
                Step::OomScoreAdj,
                "setting oom_score_adj",
                &e,
            ));
        }
    }
    Ok(())
}

/// Sets one limit to the instance's value, or to the clamped value when
/// raising the hard limit is not allowed (no CAP_SYS_RESOURCE): clamped
/// down, never up.
fn apply_limit(res: u32, want: &libc::rlimit) -> std::io::Result<()> {
    if sys::setrlimit(res, want).is_ok() {
        return Ok(());
    }
    let have = sys::getrlimit(res)?;
    sys::setrlimit(res, &crate::session::confine::clamp_limit(*want, have))
}

/// Closes every fd but stdio and `keep`: the pidfd, the `/proc/PID` and
/// root directories, the cgroup files and the host's procfs are host
/// objects the session must never hold, even before its exec.
fn close_all_except(keep: &mut [RawFd]) -> std::io::Result<()> {
    keep.sort_unstable();
    let mut from: u32 = 3;
    for &fd in keep.iter() {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd < from {
            continue;
        }
        if fd > from {
            sys::close_range(from, fd - 1, 0)?;
        }
        from = fd.saturating_add(1);
    }
    sys::close_range(from, u32::MAX, 0)
}

/// Writes the instance's LSM label as our exec label, through the host's
/// procfs (opened before entering; see `confine::host_proc`).
fn set_lsm_exec_label(plan: &Plan) -> Result<(), ChildError> {
    let step = Step::LsmExecLabel;
    let (Some(label), Some(proc_fd)) = (&plan.confinement.lsm, &plan.host_proc) else {
        if plan.confinement.lsm.is_some() {
            return Err(ChildError::new(
                step,
                "no host procfs to set the LSM label through",
            ));
        }
        return Ok(());
    };
    let (attr, value) = label.attr_write();
    let path = |a: &str| {
        CString::new(format!("thread-self/{a}")).map_err(|e| ChildError::new(step, e.to_string()))
    };
    let (primary, fallback) = (path(attr)?, path(label.attr_fallback())?);
    let open = |p: &CString| {
        sys::openat(
            Some(proc_fd.as_raw_fd()),
            p,
            libc::O_WRONLY | libc::O_NOFOLLOW,
        )
    };
    let fd = open(&primary).or_else(|_| open(&fallback));
    let fd = at(step, "opening the LSM exec attribute", fd)?;
    let r = File::from(fd).write_all(value.as_bytes());
    at(step, &format!("setting the LSM exec label {value:?}"), r)
}

/// Gives the session a terminal of the container's own devpts: opened as
/// the container user, so nothing of the host's tty enters the container.
fn setup_pty(rows: u16, cols: u16, sock: &OwnedFd) -> Result<(), ChildError> {
    let step = Step::Pty;
    let master = at(
        step,
        "the container has no usable /dev/ptmx",
        sys::open_ptmx(),
    )?;
    at(step, "unlockpt", sys::unlockpt(&master))?;
    let slave = at(step, "opening the terminal", sys::pty_peer(&master))?;
    let r = sys::set_winsize(&slave, rows, cols);
    at(step, "setting the window size", r)?;
    let r = sys::set_controlling_tty(&slave);
    at(step, "setting the controlling terminal", r)?;
    for fd in 0..3 {
        at(step, "dup2", sys::dup2(slave.as_raw_fd(), fd))?;
    }
    at(step, "sendmsg", sys::send_fd(sock, master.as_raw_fd()))
}
