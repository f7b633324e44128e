//! The supervisor: stays in the host namespaces for the whole session,
//! relays the session's bytes, and ends it when anything ends.
//!
//! Runs in `porthole-shell` after the spawn, as root (the setuid shell's
//! effective uid), in the host's namespaces and cgroups: the session's
//! processes live in the instance's pid namespace, where it has no pid, so
//! they can neither signal nor trace it. It trusts its own fds (sshd's
//! stdio, the session's pipes or pty master, the pidfds, its signalfd) and
//! the controls `shell` built from root-owned configuration and registry
//! files; nothing the session writes: its bytes are relayed, never parsed,
//! and the only processes signalled are members of the session in the
//! instance's pid namespace ([`kill_session`]).
//!
//! All stdio is relayed, also without a terminal, for three reasons: no fd
//! of sshd's ever enters the container, a client that goes away is noticed
//! (the write side of sshd's pipe errors) even while the command is silent,
//! and the byte counts are known. With a terminal, sshd's tty is put in raw
//! mode and the container's own pty does the line discipline.
//!
//! One `poll` loop (`Supervisor`) watches: the relays, the outer child
//! (pidfd), the instance's init (pidfd: readable when the instance stops)
//! and the signals that matter (signalfd: SIGWINCH resizes, SIGHUP/SIGTERM
//! end). When to warn and when to close for limits and drains is decided by
//! a pure clock (`clock::SessionClock`), unit-tested with made-up times.

mod clock;

use crate::session::enter::{pidfd_open, SessionIo, Spawned};
use crate::session::record::{self, Recorder};
use clock::{Notice, SessionClock};
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
    /// The session's recording, closed and hashed (None: not recorded).
    pub recording: Option<record::Finished>,
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

    /// Reads what the source has into the buffer and writes it through.
    /// Returns false when the destination failed (it is then done).
    fn read_through(&mut self) -> bool {
        let r = read_fd(self.src, &mut self.buf[self.end..]);
        if r > 0 {
            self.end += r as usize;
            self.count += r as u64;
            // Write through: pass the bytes on now rather than after
            // another poll round (a keystroke's echo crosses this relay
            // twice). What the destination does not take now waits for
            // POLLOUT.
            if !self.dst_done && !self.flush() {
                return false;
            }
        } else if r == 0 || (errno() != libc::EAGAIN && errno() != libc::EINTR) {
            // EOF; EIO on a pty master means the last holder of the
            // terminal closed it.
            self.src_eof = true;
        }
        true
    }

    /// Whether this pump writes to the client (sshd's stdout or stderr):
    /// a failure there means the client is gone.
    fn to_client(&self) -> bool {
        self.dst == 1 || self.dst == 2
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

/// Writes all of `buf` to a (possibly non-blocking) fd, waiting for room;
/// gives up on an error other than EAGAIN/EINTR.
fn write_all_fd(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        let w = write_fd(fd, buf);
        if w > 0 {
            buf = &buf[w as usize..];
            continue;
        }
        if w < 0 && (errno() == libc::EAGAIN || errno() == libc::EINTR) {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 1000) };
            continue;
        }
        return;
    }
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
    /// A file transfer (the sftp subsystem): the idle timeout applies
    /// without a terminal, and bytes relayed either way count as activity
    /// (a long upload or download is not idle).
    pub transfer: bool,
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
            transfer: false,
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

/// Relays until the session ends; returns how it ended.
pub fn run(spawned: Spawned, init_pidfd: &OwnedFd, controls: Controls<'_>) -> Outcome {
    run_recorded(spawned, init_pidfd, controls, None)
}

/// [`run`], feeding `recorder` (output, input when it wants it, window
/// sizes, the end) and telling the user first that the session is recorded.
pub fn run_recorded(
    spawned: Spawned,
    init_pidfd: &OwnedFd,
    controls: Controls<'_>,
    recorder: Option<Recorder>,
) -> Outcome {
    let mut s = Supervisor::new(spawned, init_pidfd, controls, recorder);
    s.announce_recording();
    s.run()
}

/// The relay between sshd's stdio (fds 0, 1, 2) and the session's fds.
struct Relay {
    /// Client input first (`pumps[0]`), then the outputs.
    pumps: Vec<Pump>,
    /// Keep the session's fds alive for the loop; dropping closes them.
    owned: Vec<OwnedFd>,
    /// The container pty's master, when the session has a terminal.
    master: Option<RawFd>,
    /// sshd's tty in raw mode while the session runs.
    raw: Option<RawMode>,
    /// The flags of fds 0, 1, 2 before they were made non-blocking: they
    /// are sshd's, shared with whoever else holds them.
    saved_flags: Vec<(RawFd, i32)>,
}

impl Relay {
    /// `copy_out`/`copy_in`: relay those pipes through our buffer (not
    /// splice) so that the recorder sees their bytes.
    fn new(io: SessionIo, copy_out: bool, copy_in: bool) -> Relay {
        let pump = |src: RawFd, dst: RawFd, eof: bool, copy: bool| {
            if copy {
                Pump::new(src, dst, eof)
            } else {
                Pump::spliced(src, dst, eof)
            }
        };
        let mut relay = match io {
            SessionIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => Relay {
                pumps: vec![
                    pump(0, stdin.as_raw_fd(), true, copy_in),
                    pump(stdout.as_raw_fd(), 1, false, copy_out),
                    pump(stderr.as_raw_fd(), 2, false, copy_out),
                ],
                owned: vec![stdin, stdout, stderr],
                master: None,
                raw: None,
                saved_flags: Vec::new(),
            },
            SessionIo::Pty { master } => Relay {
                raw: RawMode::enter(0),
                pumps: vec![
                    Pump::new(0, master.as_raw_fd(), false),
                    Pump::new(master.as_raw_fd(), 1, false),
                ],
                master: Some(master.as_raw_fd()),
                owned: vec![master],
                saved_flags: Vec::new(),
            },
        };
        for fd in [0, 1, 2] {
            relay.saved_flags.push((fd, set_nonblocking(fd, true)));
        }
        for o in &relay.owned {
            set_nonblocking(o.as_raw_fd(), true);
        }
        relay
    }

    /// Output pumps (to the client) are the ones waited for at the end.
    fn outputs_done(&self) -> bool {
        self.pumps
            .iter()
            .filter(|p| p.to_client())
            .all(Pump::finished)
    }

    /// Passes EOF on to the session's stdin once everything was written.
    fn pass_eof(&mut self) {
        for p in self.pumps.iter_mut() {
            if p.close_dst_on_eof && p.src_eof && !p.pending() && !p.dst_done {
                p.dst_done = true;
                if let Some(pos) = self.owned.iter().position(|o| o.as_raw_fd() == p.dst) {
                    drop(self.owned.remove(pos));
                }
            }
        }
    }

    /// Bytes from the client into the session, and out of it.
    fn counts(&self) -> (u64, u64) {
        let bytes_in = self.pumps.first().map(|p| p.count).unwrap_or(0);
        let bytes_out = self.pumps.iter().skip(1).map(|p| p.count).sum();
        (bytes_in, bytes_out)
    }

    /// Gives sshd its terminal mode and fd flags back.
    fn restore(&mut self) {
        drop(self.raw.take());
        for (fd, flags) in self.saved_flags.drain(..) {
            if flags >= 0 {
                // SAFETY: restoring flags we read from this fd.
                unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
            }
        }
    }
}

/// The supervisor's state for one session: the relay, the processes it
/// watches, the clock, and how the session is ending. One `poll` loop
/// ([`Supervisor::run`]) hands each ready fd to its handler; after each
/// round the limits are ticked and an ending session is killed.
struct Supervisor<'a> {
    /// Our child; its exit status is the session's.
    outer_pid: i32,
    /// The session leader and its pid namespace: what `kill_session` kills.
    inner_pid: i32,
    pid_ns: (u64, u64),
    /// Readable when the outer child exits; None on kernels without pidfd,
    /// where the child is polled with `waitpid` each round instead.
    outer_pidfd: Option<OwnedFd>,
    /// Readable when the instance's init exits (the instance stopped).
    init_pidfd: &'a OwnedFd,
    sigfd: Option<OwnedFd>,
    relay: Relay,
    controls: Controls<'a>,
    clock: SessionClock,
    started: Instant,
    next_drain_check: Instant,
    next_key_check: Instant,
    /// Why the session is ending, once something ended it (the first
    /// reason wins, except where a handler says otherwise).
    reason: Option<EndReason>,
    /// What the user is told at the end.
    message: Option<String>,
    status: ExitStatus,
    /// When the outer child exited (reaped).
    exited_at: Option<Instant>,
    /// The session's processes were sent SIGKILL.
    killed: bool,
    /// Gets copies of what the relay passes on, when recorded.
    recorder: Option<Recorder>,
}

impl<'a> Supervisor<'a> {
    fn new(
        spawned: Spawned,
        init_pidfd: &'a OwnedFd,
        controls: Controls<'a>,
        recorder: Option<Recorder>,
    ) -> Supervisor<'a> {
        let outer_pidfd = pidfd_open(spawned.outer_pid).ok();
        let sigfd = signal_fd();
        let relay = Relay::new(
            spawned.io,
            recorder.as_ref().is_some_and(Recorder::wants_output),
            recorder.as_ref().is_some_and(Recorder::wants_input),
        );
        let interactive = relay.master.is_some();
        let clock = SessionClock::new(clock::Limits {
            max_duration: controls.max_duration,
            // A command without a terminal gets no input and is not idle;
            // a file transfer is idle when nothing moves either way.
            idle_timeout: controls
                .idle_timeout
                .filter(|_| interactive || controls.transfer),
            warn_before: controls.warn_before.clone(),
            drain_notices: controls.drain_notices.clone(),
        });
        let now = Instant::now();
        Supervisor {
            outer_pid: spawned.outer_pid,
            inner_pid: spawned.inner_pid,
            pid_ns: spawned.pid_ns,
            outer_pidfd,
            init_pidfd,
            sigfd,
            relay,
            controls,
            clock,
            started: now,
            next_drain_check: now,
            next_key_check: now,
            reason: None,
            message: None,
            status: ExitStatus::Unknown,
            exited_at: None,
            killed: false,
            recorder,
        }
    }

    /// Tells the user (and the audit log) that the session is recorded.
    fn announce_recording(&mut self) {
        let Some(r) = &self.recorder else {
            return;
        };
        let text = if r.wants_input() {
            "this session is recorded (what you see and what you type)"
        } else if r.wants_output() {
            "this session is recorded (what you see)"
        } else {
            "this session's metadata is recorded (who, when, which command)"
        };
        let line = if self.relay.master.is_some() {
            format!("porthole: {text}\r\n")
        } else {
            format!("porthole: {text}\n")
        };
        let fd = if self.relay.master.is_some() { 1 } else { 2 };
        write_all_fd(fd, line.as_bytes());
        // The recording holds what the client saw, porthole's lines too.
        if let Some(r) = &mut self.recorder {
            r.output(line.as_bytes());
        }
        (self.controls.on_notice)("recording", text);
    }

    fn run(mut self) -> Outcome {
        loop {
            if self.after_exit() {
                break;
            }
            let (mut fds, roles) = self.poll_set();
            let timeout = self.poll_timeout();
            // SAFETY: fds is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 && errno() != libc::EINTR {
                break;
            }
            if self.outer_pidfd.is_none() && self.exited_at.is_none() {
                self.on_child_exit();
            }
            for (pfd, role) in fds.iter().zip(roles) {
                if pfd.revents != 0 {
                    self.on_ready(role, pfd.revents);
                }
            }
            if self.reason.is_none() && self.exited_at.is_none() {
                self.on_tick();
            }
            self.relay.pass_eof();
            self.on_pty_hangup();
            self.kill_if_ending();
            if let Some(r) = &mut self.recorder {
                r.tick();
            }
        }
        self.finish()
    }

    /// The clock's view of the time now.
    fn now(&self) -> clock::Now {
        clock::Now {
            elapsed: self.started.elapsed(),
            unix: crate::time::now_unix(),
        }
    }

    /// Records why the session ends, unless it is already ending.
    fn end(&mut self, reason: EndReason) {
        self.reason.get_or_insert(reason);
    }

    /// After the command exited: whether the loop is done, because its
    /// output was all passed on (or the client is gone to take it), or
    /// stragglers that keep the output open had their grace.
    fn after_exit(&mut self) -> bool {
        let Some(t) = self.exited_at else {
            return false;
        };
        if self.relay.outputs_done() || self.reason == Some(EndReason::ClientDisconnect) {
            return true;
        }
        if !self.killed && t.elapsed() >= DRAIN_GRACE {
            kill_session(self.inner_pid, self.pid_ns, libc::SIGKILL);
            self.killed = true;
        }
        t.elapsed() >= DRAIN_GRACE * 3
    }

    /// The fds to wait for this round, with what each one is.
    fn poll_set(&self) -> (Vec<libc::pollfd>, Vec<Role>) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut roles: Vec<Role> = Vec::new();
        let mut watch = |fd: RawFd, events: libc::c_short, role: Role| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            roles.push(role);
        };
        for (i, p) in self.relay.pumps.iter().enumerate() {
            if p.wants_read() {
                watch(p.src, libc::POLLIN, Role::Read(i));
            }
            if (p.pending() || p.dst_full) && !p.dst_done {
                watch(p.dst, libc::POLLOUT, Role::Write(i));
            } else if p.dst == 1 && !p.dst_done {
                // Watch the client side even while idle: POLLERR means the
                // reader (sshd) went away.
                watch(1, 0, Role::ClientOut);
            }
        }
        if self.exited_at.is_none() {
            if let Some(p) = &self.outer_pidfd {
                watch(p.as_raw_fd(), libc::POLLIN, Role::Child);
            }
        }
        if self.reason.is_none() {
            watch(self.init_pidfd.as_raw_fd(), libc::POLLIN, Role::Init);
        }
        if let Some(s) = &self.sigfd {
            watch(s.as_raw_fd(), libc::POLLIN, Role::Signal);
        }
        (fds, roles)
    }

    /// How long to wait in `poll`, in milliseconds.
    fn poll_timeout(&self) -> libc::c_int {
        let tick = if self.exited_at.is_some() || self.outer_pidfd.is_none() {
            Duration::from_millis(100)
        } else {
            // Drains and revocation are checked on a 250 ms tick.
            KEY_CHECK_TICK
        };
        let wait = if self.reason.is_none() && self.exited_at.is_none() {
            // Wake for the clock's next warning or close, if sooner.
            self.clock
                .next_deadline(self.now())
                .map_or(tick, |d| d.min(tick))
        } else {
            tick
        };
        // A pending recording batch is handed on when it is due.
        let wait = match self.recorder.as_ref().and_then(Recorder::due_in) {
            Some(d) => wait.min(d),
            None => wait,
        };
        // Rounded up: waking a fraction of a millisecond early would only
        // spin until the deadline.
        let ms = wait.as_nanos().div_ceil(1_000_000);
        libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
    }

    fn on_ready(&mut self, role: Role, revents: libc::c_short) {
        match role {
            Role::Read(i) => self.on_readable(i),
            Role::Write(i) => self.on_writable(i, revents),
            Role::ClientOut => self.on_client_out(revents),
            Role::Child => self.on_child_exit(),
            Role::Init => self.on_instance_stopped(),
            Role::Signal => self.on_signals(),
        }
    }

    /// A relay's source has bytes (or EOF): the client's input or the
    /// session's output.
    fn on_readable(&mut self, i: usize) {
        let p = &mut self.relay.pumps[i];
        let before = p.count;
        let at = p.end;
        let dst_ok = if p.splice {
            p.splice_once()
        } else {
            p.read_through()
        };
        if let (Some(r), false) = (&mut self.recorder, p.splice) {
            // The bytes just read: flushing moves the indices, not them.
            let n = usize::try_from(p.count - before).unwrap_or(0);
            if let Some(bytes) = p.buf.get(at..at + n) {
                if p.src == 0 {
                    r.input(bytes);
                } else {
                    r.output(bytes);
                }
            }
        }
        // Transfers (sftp) count both ways as activity: a long upload is
        // not idle.
        let counts = p.src == 0 || self.controls.transfer;
        let (to_client, input) = (p.to_client(), counts && p.count > before);
        if !dst_ok && to_client {
            self.end(EndReason::ClientDisconnect);
        }
        if input {
            let now = self.now();
            self.clock.input(now);
        }
    }

    /// A relay's destination has room again (or failed).
    fn on_writable(&mut self, i: usize, revents: libc::c_short) {
        let p = &mut self.relay.pumps[i];
        let gone = if p.splice {
            // Room again at the destination: read the source next round.
            p.dst_full = false;
            if revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                p.dst_done = true;
                true
            } else {
                false
            }
        } else {
            p.pending() && !p.dst_done && !p.flush()
        };
        if gone && p.to_client() {
            self.end(EndReason::ClientDisconnect);
        }
    }

    /// sshd's end of our stdout went away while nothing was being written.
    fn on_client_out(&mut self, revents: libc::c_short) {
        if revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            self.end(EndReason::ClientDisconnect);
            for p in self.relay.pumps.iter_mut().filter(|p| p.dst == 1) {
                p.dst_done = true;
            }
        }
    }

    /// The outer child may have exited: reap it and keep its status.
    fn on_child_exit(&mut self) {
        if let Some(st) = try_wait(self.outer_pid) {
            self.status = st;
            self.exited_at = Some(Instant::now());
            if killed_with_instance(st, self.init_pidfd) {
                self.end(EndReason::InstanceStopped);
            }
        }
    }

    fn on_instance_stopped(&mut self) {
        self.end(EndReason::InstanceStopped);
    }

    fn on_signals(&mut self) {
        let Some(s) = &self.sigfd else {
            return;
        };
        for sig in drain_signals(s) {
            match sig {
                libc::SIGWINCH => {
                    if let Some(m) = self.relay.master {
                        copy_window_size(0, m);
                        if let (Some(r), Some(ws)) = (&mut self.recorder, window_size(0)) {
                            r.resize(ws.cols, ws.rows);
                        }
                    }
                }
                libc::SIGTERM => self.on_close_request(),
                // The terminal hung up: sshd lost the client.
                libc::SIGHUP => self.end(EndReason::ClientDisconnect),
                // A write to a gone client fails with EPIPE instead.
                libc::SIGPIPE => {}
                _ => self.end(EndReason::Signal),
            }
        }
    }

    /// SIGTERM: `porthole kill`/`close` leave their message first, and it
    /// is the one told even when the session was already ending.
    fn on_close_request(&mut self) {
        let msg = (self.controls.close_message)();
        if msg.is_some() || self.reason.is_none() {
            self.message = Some(msg.unwrap_or_else(|| "closed by the platform".into()));
            self.end(EndReason::Closed);
        }
    }

    /// Limits, drains and revocation, while the session runs.
    fn on_tick(&mut self) {
        let now = Instant::now();
        if now >= self.next_drain_check {
            self.next_drain_check = now + Duration::from_secs(1);
            self.on_drain_check();
        }
        let tick = self.clock.tick(self.now());
        for n in &tick.notices {
            self.notify(n);
        }
        if let Some(close) = tick.close {
            self.reason = Some(close.reason());
            self.message = Some(close.message());
            return;
        }
        // Rate-limited like the drain check: a busy relay wakes far more
        // often than the tick.
        if now >= self.next_key_check {
            self.next_key_check = now + KEY_CHECK_TICK;
            self.on_key_check();
        }
    }

    /// Reads the drain in force; the clock says whether that is news.
    fn on_drain_check(&mut self) {
        let current = (self.controls.drain)();
        let now = self.now();
        if let Some(n) = self.clock.drain(current, now) {
            self.notify(&n);
        }
    }

    fn on_key_check(&mut self) {
        if let Some(m) = (self.controls.key_revoked)() {
            self.message = Some(m);
            self.reason = Some(EndReason::KeyRevoked);
        }
    }

    /// A stdin that reached EOF is no reason to stop reading outputs, but
    /// a pty whose client side is gone is.
    fn on_pty_hangup(&mut self) {
        if self.relay.master.is_some()
            && self.relay.pumps[0].src_eof
            && self.reason.is_none()
            && self.exited_at.is_none()
        {
            self.reason = Some(EndReason::ClientDisconnect);
        }
    }

    /// Tells the user (on the terminal, or stderr without one) and the
    /// audit log.
    fn notify(&mut self, n: &Notice) {
        let text = n.text();
        let line = if self.relay.master.is_some() {
            format!("\r\nporthole: {text}\r\n")
        } else {
            format!("porthole: {text}\n")
        };
        let fd = if self.relay.master.is_some() { 1 } else { 2 };
        let _ = write_fd(fd, line.as_bytes());
        if let Some(r) = &mut self.recorder {
            r.output(line.as_bytes());
        }
        (self.controls.on_notice)(n.kind(), &text);
    }

    /// Something other than the command's own exit ends the session: kill
    /// it, once (the loop then waits for its exit and drains the output).
    fn kill_if_ending(&mut self) {
        let Some(r) = self.reason else {
            return;
        };
        if r != EndReason::Exit && self.exited_at.is_none() && !self.killed {
            kill_session(self.inner_pid, self.pid_ns, libc::SIGHUP);
            kill_session(self.inner_pid, self.pid_ns, libc::SIGKILL);
            // SAFETY: killing our own outer child.
            unsafe { libc::kill(self.outer_pid, libc::SIGKILL) };
            self.killed = true;
        }
    }

    /// Reaps the session, kills what is left of it, gives sshd its
    /// terminal back and says how the session ended.
    fn finish(mut self) -> Outcome {
        if self.exited_at.is_none() {
            self.status = wait_blocking(self.outer_pid);
        }
        if !self.killed {
            kill_session(self.inner_pid, self.pid_ns, libc::SIGKILL);
        }
        self.relay.restore();
        let (bytes_in, bytes_out) = self.relay.counts();
        let reason = self.reason.unwrap_or(EndReason::Exit);
        let recording = self.recorder.take().and_then(|r| {
            r.finish(&record::EndInfo {
                reason: reason.as_str().to_owned(),
                exit_status: match self.status {
                    ExitStatus::Code(c) => Some(c),
                    _ => None,
                },
                signal: match self.status {
                    ExitStatus::Signal(s) => Some(s),
                    _ => None,
                },
                bytes_in,
                bytes_out,
            })
        });
        Outcome {
            reason,
            status: self.status,
            bytes_in,
            bytes_out,
            message: self.message,
            recording,
        }
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
    use super::clock::Warnings;
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
