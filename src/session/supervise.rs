//! The supervisor: stays in the host namespaces for the whole session,
//! relays the session's bytes, and ends it when anything ends.
//!
//! All stdio is relayed, also without a terminal, for three reasons: no fd
//! of sshd's ever enters the container, a client that goes away is noticed
//! (the write side of sshd's pipe errors) even while the command is silent,
//! and the byte counts are known. With a terminal, sshd's tty is put in raw
//! mode and the container's own pty does the line discipline.
//!
//! One `poll` loop watches: the relays, the outer child (pidfd), the
//! instance's init (pidfd: readable when the instance stops) and the
//! signals that matter (signalfd: SIGWINCH resizes, SIGHUP/SIGTERM end).

use crate::session::enter::{pidfd_open, SessionIo, Spawned};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

const BUF: usize = 64 * 1024;
/// After the command exits, how long stragglers may keep its output open.
const DRAIN_GRACE: Duration = Duration::from_millis(1000);
/// How often the key-revocation watch is polled (its own schedule decides
/// when it actually reads the cache).
const KEY_CHECK_TICK: Duration = Duration::from_millis(250);

/// Why the session ended (audit `end_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Exit,
    ClientDisconnect,
    InstanceStopped,
    Signal,
    /// An admin's `porthole kill` / `close` (SIGTERM with a close request).
    Closed,
    Drained,
    MaxDuration,
    Idle,
    /// A fresh control-plane answer no longer admits the session's key.
    KeyRevoked,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Exit => "exit",
            EndReason::ClientDisconnect => "client_disconnect",
            EndReason::InstanceStopped => "instance_stopped",
            EndReason::Signal => "signal",
            EndReason::Closed => "closed",
            EndReason::Drained => "drained",
            EndReason::MaxDuration => "max_duration",
            EndReason::Idle => "idle",
            EndReason::KeyRevoked => "key_revoked",
        }
    }
}

/// How the session's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub reason: EndReason,
    pub status: ExitStatus,
    /// Bytes from the client into the session, and out of it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// What to tell the user about the end (closed, drained, limits).
    pub message: Option<String>,
}

/// One direction of the relay.
struct Pump {
    src: RawFd,
    dst: RawFd,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    src_eof: bool,
    /// Destination closed (or failed): nothing more goes there.
    dst_done: bool,
    /// Close `dst` when the source is exhausted (to pass EOF on).
    close_dst_on_eof: bool,
    count: u64,
    /// Moves bytes with splice(2) (one end is a pipe): no copy through our
    /// buffer, which for bulk transfers is most of the relay's CPU.
    splice: bool,
    /// A splice found the destination full: wait for it, not the source.
    dst_full: bool,
}

impl Pump {
    fn new(src: RawFd, dst: RawFd, close_dst_on_eof: bool) -> Pump {
        Pump {
            src,
            dst,
            buf: vec![0; BUF],
            start: 0,
            end: 0,
            src_eof: false,
            dst_done: false,
            close_dst_on_eof,
            count: 0,
            splice: false,
            dst_full: false,
        }
    }

    /// A pump that splices when either end is a pipe (the other then may be
    /// a pipe or a socket, as sshd's session fds are).
    fn spliced(src: RawFd, dst: RawFd, close_dst_on_eof: bool) -> Pump {
        let mut p = Pump::new(src, dst, close_dst_on_eof);
        p.splice = is_fifo(src) || is_fifo(dst);
        if p.splice {
            // Bytes only ever pass through the kernel.
            p.buf = Vec::new();
        }
        p
    }

    /// One splice of what the source has; false when the destination failed.
    fn splice_once(&mut self) -> bool {
        // SAFETY: splice on two fds we hold, no offsets.
        let r = unsafe {
            libc::splice(
                self.src,
                std::ptr::null_mut(),
                self.dst,
                std::ptr::null_mut(),
                BUF,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        if r > 0 {
            self.count += r as u64;
            return true;
        }
        if r == 0 {
            self.src_eof = true;
            return true;
        }
        match errno() {
            // The source was readable, so the destination is full.
            libc::EAGAIN => self.dst_full = true,
            libc::EINTR => {}
            libc::EINVAL => {
                // Not splice-able after all: relay through a buffer.
                self.splice = false;
                self.buf = vec![0; BUF];
            }
            libc::EPIPE => {
                self.dst_done = true;
                return false;
            }
            // EIO and the like come from the source: end of its data.
            _ => self.src_eof = true,
        }
        true
    }

    fn pending(&self) -> bool {
        self.end > self.start
    }

    fn wants_read(&self) -> bool {
        if self.splice {
            return !self.src_eof && !self.dst_done && !self.dst_full;
        }
        !self.src_eof && !self.dst_done && self.end < self.buf.len()
    }

    fn finished(&self) -> bool {
        (self.src_eof && !self.pending()) || self.dst_done
    }

    /// Writes what is buffered as far as `dst` takes it now. Returns false
    /// when the destination failed (it is then done).
    fn flush(&mut self) -> bool {
        let w = write_fd(self.dst, &self.buf[self.start..self.end]);
        if w > 0 {
            self.start += w as usize;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
        } else if w < 0 && errno() != libc::EAGAIN && errno() != libc::EINTR {
            self.dst_done = true;
            return false;
        }
        true
    }
}

fn set_nonblocking(fd: RawFd, on: bool) -> i32 {
    // SAFETY: fcntl on an fd we hold; returns the old flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            let new = if on {
                flags | libc::O_NONBLOCK
            } else {
                flags & !libc::O_NONBLOCK
            };
            libc::fcntl(fd, libc::F_SETFL, new);
        }
        flags
    }
}

fn is_fifo(fd: RawFd) -> bool {
    // SAFETY: stat is plain data filled by fstat on an fd we hold.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> isize {
    // SAFETY: buf is valid for buf.len() bytes.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

fn write_fd(fd: RawFd, buf: &[u8]) -> isize {
    // SAFETY: buf is valid for buf.len() bytes.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Saved terminal state of sshd's tty, restored on drop.
struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: RawFd) -> Option<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
            Some(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes we saved for this fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// The client's terminal size (sshd's tty), if it has one.
pub fn window_size(fd: RawFd) -> Option<crate::session::enter::WinSize> {
    // SAFETY: winsize is plain data filled by the ioctl.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0).then_some(
            crate::session::enter::WinSize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            },
        )
    }
}

fn copy_window_size(from: RawFd, to: RawFd) {
    // SAFETY: winsize is plain data; both fds are terminals we hold.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

/// The signals the supervisor handles through its signalfd.
fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGWINCH,
            libc::SIGHUP,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the signals the supervisor handles, so that from here on they
/// wait for its signalfd instead of killing it: called before the session
/// is registered, since an admin's `porthole kill` (SIGTERM) may come as
/// soon as the record exists. The session process clears its mask before
/// exec.
pub fn block_session_signals() -> bool {
    let set = handled_signals();
    // SAFETY: changes this process's signal mask; `set` is initialised.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) == 0 }
}

/// Returns a signalfd for the handled signals (blocking them if the caller
/// has not yet); signals that arrived while blocked are read from it.
fn signal_fd() -> Option<OwnedFd> {
    if !block_session_signals() {
        return None;
    }
    let set = handled_signals();
    // SAFETY: signalfd returns a new fd we own; `set` is initialised.
    unsafe {
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        (fd >= 0).then(|| OwnedFd::from_raw_fd(fd))
    }
}

/// Kills every process of the session: members of the inner process's
/// session (found through /proc in the host pid namespace) that live in
/// the instance's pid namespace. Returns how many were signalled.
pub fn kill_session(inner_pid: i32, pid_ns: (u64, u64), sig: libc::c_int) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // One system call rules out nearly every process of the host (Linux
        // answers getsid for any process, in our pid namespace's numbers);
        // reading each /proc/PID/stat made this scan the biggest part of a
        // short session's cost. The checks below still decide.
        // SAFETY: getsid has no memory effects.
        if unsafe { libc::getsid(pid) } != inner_pid {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        // Fields after the name: state ppid pgrp session …
        let sid = after
            .split_ascii_whitespace()
            .nth(3)
            .and_then(|s| s.parse::<i32>().ok());
        if sid != Some(inner_pid) {
            continue;
        }
        let same_ns = std::fs::metadata(format!("/proc/{pid}/ns/pid"))
            .map(|m| (m.dev(), m.ino()) == pid_ns)
            .unwrap_or(false);
        if same_ns {
            // SAFETY: sending a signal to a pid of the instance's namespace.
            unsafe { libc::kill(pid, sig) };
            n += 1;
        }
    }
    n
}

/// A drain in force: when live sessions are closed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainNotice {
    pub deadline_unix: i64,
    pub message: String,
}

/// Receives (kind, text) of each notice shown to the user.
pub type NoticeHook<'a> = Box<dyn FnMut(&str, &str) + 'a>;

/// The session controls the supervisor enforces besides the relay.
pub struct Controls<'a> {
    /// Close the session at this point (maximum duration).
    pub max_duration: Option<Duration>,
    /// Close an interactive session after this long without client input.
    pub idle_timeout: Option<Duration>,
    /// Warnings before a duration or idle close, as time left.
    pub warn_before: Vec<Duration>,
    /// Notices before a drain deadline, as time left (plus one at once).
    pub drain_notices: Vec<Duration>,
    /// Polled about once a second: the drain in force, if any.
    pub drain: Box<dyn FnMut() -> Option<DrainNotice> + 'a>,
    /// The message of an admin's close request (asked on SIGTERM).
    pub close_message: Box<dyn FnMut() -> Option<String> + 'a>,
    /// Polled on the tick: the sentence to close the session with when its
    /// key was revoked (see `revoke::KeyWatch`; must not block).
    pub key_revoked: Box<dyn FnMut() -> Option<String> + 'a>,
    /// Called with (kind, text) for every notice shown to the user, for audit.
    pub on_notice: NoticeHook<'a>,
}

impl Controls<'_> {
    /// No limits, no drains (tests and callers without a registry).
    pub fn none() -> Controls<'static> {
        Controls {
            max_duration: None,
            idle_timeout: None,
            warn_before: Vec::new(),
            drain_notices: Vec::new(),
            drain: Box::new(|| None),
            close_message: Box::new(|| None),
            key_revoked: Box::new(|| None),
            on_notice: Box::new(|_, _| {}),
        }
    }
}

/// Human form of a duration for notices ("1h 5m", "10m", "45s").
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, sec) => format!("{m}m {sec}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

/// Warnings not yet given, as thresholds of time left. Crossing several at
/// once (a short limit) gives one warning, not a burst.
struct Warnings {
    pending: Vec<Duration>,
}

impl Warnings {
    fn new(mut at: Vec<Duration>) -> Warnings {
        at.sort();
        Warnings { pending: at }
    }

    /// True when a warning is due now (time left fell to a threshold).
    fn due(&mut self, left: Duration) -> bool {
        let before = self.pending.len();
        self.pending.retain(|t| left > *t);
        self.pending.len() != before
    }
}

/// Relays until the session ends; returns how it ended.
pub fn run(spawned: Spawned, init_pidfd: &OwnedFd, mut controls: Controls<'_>) -> Outcome {
    let outer_pidfd = pidfd_open(spawned.outer_pid).ok();
    let sigfd = signal_fd();
    let mut raw = None;
    let mut saved_flags = Vec::new();
    let mut pumps: Vec<Pump> = Vec::new();
    // Keep the session's fds alive for the loop; dropping closes them.
    let mut owned: Vec<OwnedFd> = Vec::new();
    let master_fd;
    match spawned.io {
        SessionIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            pumps.push(Pump::spliced(0, stdin.as_raw_fd(), true));
            pumps.push(Pump::spliced(stdout.as_raw_fd(), 1, false));
            pumps.push(Pump::spliced(stderr.as_raw_fd(), 2, false));
            owned.extend([stdin, stdout, stderr]);
            master_fd = None;
        }
        SessionIo::Pty { master } => {
            raw = RawMode::enter(0);
            pumps.push(Pump::new(0, master.as_raw_fd(), false));
            pumps.push(Pump::new(master.as_raw_fd(), 1, false));
            master_fd = Some(master.as_raw_fd());
            owned.push(master);
        }
    }
    for fd in [0, 1, 2] {
        saved_flags.push((fd, set_nonblocking(fd, true)));
    }
    for o in &owned {
        set_nonblocking(o.as_raw_fd(), true);
    }

    let mut reason = None;
    let mut status = ExitStatus::Unknown;
    let mut exited_at: Option<Instant> = None;
    let mut killed = false;
    let started = Instant::now();
    let interactive = master_fd.is_some();
    let notice_fd = if interactive { 1 } else { 2 };
    let notice = |kind: &str, text: &str, on: &mut dyn FnMut(&str, &str)| {
        let line = if interactive {
            format!("\r\nporthole: {text}\r\n")
        } else {
            format!("porthole: {text}\n")
        };
        let _ = write_fd(notice_fd, line.as_bytes());
        on(kind, text);
    };
    let mut duration_warnings = Warnings::new(controls.warn_before.clone());
    let mut idle_warnings = Warnings::new(controls.warn_before.clone());
    let idle_timeout = controls.idle_timeout.filter(|_| interactive);
    let mut last_input = Instant::now();
    let mut drain_seen: Option<DrainNotice> = None;
    let mut drain_warnings = Warnings::new(controls.drain_notices.clone());
    let mut next_drain_check = Instant::now();
    let mut next_key_check = Instant::now();
    let mut final_message: Option<String> = None;
    loop {
        // Output pumps (to the client) are the ones we wait for at the end.
        let outputs_done = pumps
            .iter()
            .filter(|p| p.dst == 1 || p.dst == 2)
            .all(Pump::finished);
        if exited_at.is_some() && (outputs_done || reason == Some(EndReason::ClientDisconnect)) {
            break;
        }
        if let Some(t) = exited_at {
            if !killed && t.elapsed() >= DRAIN_GRACE {
                kill_session(spawned.inner_pid, spawned.pid_ns, libc::SIGKILL);
                killed = true;
            }
            if t.elapsed() >= DRAIN_GRACE * 3 {
                break;
            }
        }
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut roles: Vec<Role> = Vec::new();
        for (i, p) in pumps.iter().enumerate() {
            if p.wants_read() {
                fds.push(libc::pollfd {
                    fd: p.src,
                    events: libc::POLLIN,
                    revents: 0,
                });
                roles.push(Role::Read(i));
            }
            if (p.pending() || p.dst_full) && !p.dst_done {
                fds.push(libc::pollfd {
                    fd: p.dst,
                    events: libc::POLLOUT,
                    revents: 0,
                });
                roles.push(Role::Write(i));
            } else if p.dst == 1 && !p.dst_done {
                // Watch the client side even while idle: POLLERR means the
                // reader (sshd) went away.
                fds.push(libc::pollfd {
                    fd: 1,
                    events: 0,
                    revents: 0,
                });
                roles.push(Role::ClientOut);
            }
        }
        if exited_at.is_none() {
            if let Some(p) = &outer_pidfd {
                fds.push(libc::pollfd {
                    fd: p.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                roles.push(Role::Child);
            }
        }
        if reason.is_none() {
            fds.push(libc::pollfd {
                fd: init_pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            roles.push(Role::Init);
        }
        if let Some(s) = &sigfd {
            fds.push(libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            roles.push(Role::Signal);
        }
        let timeout_ms = if exited_at.is_some() || outer_pidfd.is_none() {
            100
        } else {
            // Limits, idle and drains are checked on a 250 ms tick.
            250
        };
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 && errno() != libc::EINTR {
            break;
        }
        if outer_pidfd.is_none() && exited_at.is_none() {
            if let Some(st) = try_wait(spawned.outer_pid) {
                status = st;
                exited_at = Some(Instant::now());
                if killed_with_instance(st, init_pidfd) {
                    reason.get_or_insert(EndReason::InstanceStopped);
                }
            }
        }
        for (pfd, role) in fds.iter().zip(roles.iter()) {
            if pfd.revents == 0 {
                continue;
            }
            match *role {
                Role::Read(i) if pumps[i].splice => {
                    let p = &mut pumps[i];
                    let before = p.count;
                    if !p.splice_once() && (p.dst == 1 || p.dst == 2) {
                        reason.get_or_insert(EndReason::ClientDisconnect);
                    }
                    if p.src == 0 && p.count > before {
                        last_input = Instant::now();
                        idle_warnings = Warnings::new(controls.warn_before.clone());
                    }
                }
                Role::Read(i) => {
                    let p = &mut pumps[i];
                    let r = read_fd(p.src, &mut p.buf[p.end..]);
                    if r > 0 {
                        p.end += r as usize;
                        p.count += r as u64;
                        if p.src == 0 {
                            last_input = Instant::now();
                            idle_warnings = Warnings::new(controls.warn_before.clone());
                        }
                        // Write through: pass the bytes on now rather than
                        // after another poll round (a keystroke's echo
                        // crosses this relay twice). What the destination
                        // does not take now waits for POLLOUT as before.
                        if !p.dst_done && !p.flush() && (p.dst == 1 || p.dst == 2) {
                            reason.get_or_insert(EndReason::ClientDisconnect);
                        }
                    } else if r == 0 || (errno() != libc::EAGAIN && errno() != libc::EINTR) {
                        // EOF; EIO on a pty master means the last holder of
                        // the terminal closed it.
                        p.src_eof = true;
                    }
                }
                Role::Write(i) if pumps[i].splice => {
                    // Room again at the destination: read the source next round.
                    pumps[i].dst_full = false;
                    if pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                        pumps[i].dst_done = true;
                        if pumps[i].dst == 1 || pumps[i].dst == 2 {
                            reason.get_or_insert(EndReason::ClientDisconnect);
                        }
                    }
                }
                Role::Write(i) => {
                    let p = &mut pumps[i];
                    if p.pending() && !p.dst_done && !p.flush() && (p.dst == 1 || p.dst == 2) {
                        reason.get_or_insert(EndReason::ClientDisconnect);
                    }
                }
                Role::ClientOut => {
                    if pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                        reason.get_or_insert(EndReason::ClientDisconnect);
                        for p in pumps.iter_mut().filter(|p| p.dst == 1) {
                            p.dst_done = true;
                        }
                    }
                }
                Role::Child => {
                    if let Some(st) = try_wait(spawned.outer_pid) {
                        status = st;
                        exited_at = Some(Instant::now());
                        if killed_with_instance(st, init_pidfd) {
                            reason.get_or_insert(EndReason::InstanceStopped);
                        }
                    }
                }
                Role::Init => {
                    reason.get_or_insert(EndReason::InstanceStopped);
                }
                Role::Signal => {
                    if let Some(s) = &sigfd {
                        for sig in drain_signals(s) {
                            if sig == libc::SIGWINCH {
                                if let Some(m) = master_fd {
                                    copy_window_size(0, m);
                                }
                            } else if sig == libc::SIGTERM {
                                // `porthole kill`/`close` leave their message first.
                                let msg = (controls.close_message)();
                                if msg.is_some() || reason.is_none() {
                                    final_message = Some(
                                        msg.unwrap_or_else(|| "closed by the platform".into()),
                                    );
                                    reason.get_or_insert(EndReason::Closed);
                                }
                            } else if sig == libc::SIGHUP {
                                // The terminal hung up: sshd lost the client.
                                reason.get_or_insert(EndReason::ClientDisconnect);
                            } else if sig != libc::SIGPIPE {
                                reason.get_or_insert(EndReason::Signal);
                            }
                        }
                    }
                }
            }
        }
        if reason.is_none() && exited_at.is_none() {
            let now = Instant::now();
            if let Some(max) = controls.max_duration {
                let left = max.saturating_sub(started.elapsed());
                if left.is_zero() {
                    final_message = Some(format!(
                        "session closed: the maximum session duration is {}",
                        human(max)
                    ));
                    reason = Some(EndReason::MaxDuration);
                } else if duration_warnings.due(left) {
                    notice(
                        "max_duration",
                        &format!(
                            "this session will be closed in {} (maximum session duration {})",
                            human(left),
                            human(max)
                        ),
                        &mut *controls.on_notice,
                    );
                }
            }
            if let Some(idle) = idle_timeout {
                let left = idle.saturating_sub(last_input.elapsed());
                if left.is_zero() {
                    final_message = Some(format!(
                        "session closed after {} without input",
                        human(idle)
                    ));
                    reason.get_or_insert(EndReason::Idle);
                } else if idle_warnings.due(left) {
                    notice("idle", &format!("no input for a while: this session will be closed in {} unless you type something", human(left)), &mut *controls.on_notice);
                }
            }
            if now >= next_drain_check {
                next_drain_check = now + Duration::from_secs(1);
                let current = (controls.drain)();
                if current != drain_seen {
                    drain_warnings = Warnings::new(controls.drain_notices.clone());
                    if let Some(d) = &current {
                        let left = Duration::from_secs(
                            u64::try_from(d.deadline_unix - crate::time::now_unix()).unwrap_or(0),
                        );
                        drain_warnings.due(left);
                        notice(
                            "drain",
                            &format!(
                                "{} - this session will be closed in {}",
                                d.message,
                                human(left)
                            ),
                            &mut *controls.on_notice,
                        );
                    } else if drain_seen.is_some() {
                        notice(
                            "undrain",
                            "maintenance cancelled; this session stays open",
                            &mut *controls.on_notice,
                        );
                    }
                    drain_seen = current;
                }
            }
            // Rate-limited like the drain check: a busy relay wakes far
            // more often than the tick.
            if reason.is_none() && now >= next_key_check {
                next_key_check = now + KEY_CHECK_TICK;
                if let Some(m) = (controls.key_revoked)() {
                    final_message = Some(m);
                    reason = Some(EndReason::KeyRevoked);
                }
            }
            if let Some(d) = &drain_seen {
                let left = d.deadline_unix - crate::time::now_unix();
                if left <= 0 {
                    final_message = Some(format!("session closed for maintenance: {}", d.message));
                    reason.get_or_insert(EndReason::Drained);
                } else if drain_warnings.due(Duration::from_secs(left as u64)) {
                    notice(
                        "drain",
                        &format!(
                            "{} - this session will be closed in {}",
                            d.message,
                            human(Duration::from_secs(left as u64))
                        ),
                        &mut *controls.on_notice,
                    );
                }
            }
        }
        // Pass EOF on to the session's stdin once everything was written.
        for p in pumps.iter_mut() {
            if p.close_dst_on_eof && p.src_eof && !p.pending() && !p.dst_done {
                p.dst_done = true;
                if let Some(pos) = owned.iter().position(|o| o.as_raw_fd() == p.dst) {
                    drop(owned.remove(pos));
                }
            }
        }
        // A stdin that reached EOF is no reason to stop reading outputs,
        // but a pty whose client side is gone is.
        if master_fd.is_some() && pumps[0].src_eof && reason.is_none() && exited_at.is_none() {
            reason = Some(EndReason::ClientDisconnect);
        }
        if let Some(r) = reason {
            if r != EndReason::Exit && exited_at.is_none() && !killed {
                kill_session(spawned.inner_pid, spawned.pid_ns, libc::SIGHUP);
                kill_session(spawned.inner_pid, spawned.pid_ns, libc::SIGKILL);
                // SAFETY: killing our own outer child.
                unsafe { libc::kill(spawned.outer_pid, libc::SIGKILL) };
                killed = true;
            }
        }
    }
    if exited_at.is_none() {
        status = wait_blocking(spawned.outer_pid);
    }
    if !killed {
        kill_session(spawned.inner_pid, spawned.pid_ns, libc::SIGKILL);
    }
    drop(raw);
    for (fd, flags) in saved_flags {
        if flags >= 0 {
            // SAFETY: restoring flags we read from this fd.
            unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
        }
    }
    let bytes_in = pumps.first().map(|p| p.count).unwrap_or(0);
    let bytes_out = pumps.iter().skip(1).map(|p| p.count).sum();
    Outcome {
        reason: reason.unwrap_or(EndReason::Exit),
        status,
        bytes_in,
        bytes_out,
        message: final_message,
    }
}

/// Whether a session process that died of SIGKILL went down with its
/// instance. When the instance's init dies the kernel kills everything in
/// its pid namespace, and the init finishes exiting only once we have
/// reaped the session process (our child), so its pidfd turns readable
/// just after: wait briefly for it rather than report a plain signal.
fn killed_with_instance(st: ExitStatus, init_pidfd: &OwnedFd) -> bool {
    if st != ExitStatus::Signal(libc::SIGKILL) {
        return false;
    }
    let mut p = libc::pollfd {
        fd: init_pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 200) > 0 }
}

#[derive(Clone, Copy)]
enum Role {
    Read(usize),
    Write(usize),
    ClientOut,
    Child,
    Init,
    Signal,
}

fn decode(st: libc::c_int) -> ExitStatus {
    if libc::WIFEXITED(st) {
        ExitStatus::Code(libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        ExitStatus::Signal(libc::WTERMSIG(st))
    } else {
        ExitStatus::Unknown
    }
}

fn try_wait(pid: i32) -> Option<ExitStatus> {
    let mut st = 0;
    // SAFETY: non-blocking wait for our own child.
    let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    (r == pid).then(|| decode(st))
}

fn wait_blocking(pid: i32) -> ExitStatus {
    let mut st = 0;
    loop {
        // SAFETY: blocking wait for our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            return decode(st);
        }
        if r < 0 && errno() != libc::EINTR {
            return ExitStatus::Unknown;
        }
    }
}

fn drain_signals(fd: &OwnedFd) -> Vec<i32> {
    let mut out = Vec::new();
    loop {
        // SAFETY: signalfd_siginfo is plain data, read fills it whole.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: info is valid for `size` bytes.
        let r = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if r != size as isize {
            break;
        }
        out.push(info.ssi_signo as i32);
    }
    out
}

/// Ends the supervisor like the session ended: same exit code, or the same
/// signal re-raised (so sshd reports exit-signal to the client).
pub fn exit_like(status: ExitStatus, fallback: i32) -> ! {
    if let ExitStatus::Signal(sig) = status {
        crate::session::enter::reraise(sig);
    }
    let code = match status {
        ExitStatus::Code(c) => c,
        _ => fallback,
    };
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;

    #[test]
    fn kill_session_only_touches_its_session_in_its_pid_namespace() {
        // SAFETY: the pre_exec hook only calls setsid, async-signal-safe.
        let mut child = unsafe {
            std::process::Command::new("sleep")
                .arg("30")
                .pre_exec(|| {
                    libc::setsid();
                    Ok(())
                })
                .spawn()
                .unwrap()
        };
        let pid = child.id() as i32;
        let own = std::fs::metadata("/proc/self/ns/pid").unwrap();
        let own = (own.dev(), own.ino());
        assert_eq!(
            kill_session(pid, (own.0, own.1 + 1), libc::SIGKILL),
            0,
            "other namespace"
        );
        assert!(child.try_wait().unwrap().is_none());
        assert_eq!(
            kill_session(pid + 1_000_000, own, libc::SIGKILL),
            0,
            "other session"
        );
        assert_eq!(kill_session(pid, own, libc::SIGKILL), 1);
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn warnings_fire_once_per_threshold_and_durations_read_well() {
        let mut w = Warnings::new(vec![Duration::from_secs(600), Duration::from_secs(60)]);
        assert!(!w.due(Duration::from_secs(900)));
        assert!(w.due(Duration::from_secs(599)));
        assert!(!w.due(Duration::from_secs(300)));
        assert!(w.due(Duration::from_secs(30)));
        assert!(!w.due(Duration::from_secs(1)));
        let mut burst = Warnings::new(vec![Duration::from_secs(600), Duration::from_secs(60)]);
        assert!(
            burst.due(Duration::from_secs(5)),
            "one warning for both thresholds"
        );
        assert!(!burst.due(Duration::from_secs(4)));
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_secs(3900)), "1h 5m");
        assert_eq!(human(Duration::from_secs(600)), "10m");
        assert_eq!(human(Duration::from_secs(75)), "1m 15s");
        assert_eq!(human(Duration::from_secs(3)), "3s");
    }
}
