//! Small process and file helpers shared by the harness modules.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Runs `cmd` to completion and returns its output; panics only when it
/// cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", show(cmd)))
}

/// Runs `cmd` and panics with its stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    if !out.status.success() {
        panic!(
            "{} failed ({}):\nstdout: {}\nstderr: {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// `program arg arg …` for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// What [`run_with_timeout`] observed.
#[derive(Debug)]
pub struct Timed {
    pub output: Output,
    pub elapsed: Duration,
    /// The process was still running at the deadline and was killed.
    pub timed_out: bool,
}

/// Spawns `cmd` with piped stdio, feeds `stdin` (then closes it), collects
/// stdout/stderr, and kills the process when `timeout` passes.
pub fn run_with_timeout(cmd: &mut Command, stdin: Option<Vec<u8>>, timeout: Duration) -> Timed {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", show(cmd)));
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => Some(thread::spawn(move || {
            // A closed pipe (the remote side exited early) is not our error.
            let _ = pipe.write_all(&data);
        })),
        _ => None,
    };
    let out_reader = reader(child.stdout.take());
    let err_reader = reader(child.stderr.take());
    let (status, timed_out) = wait_deadline(&mut child, timeout);
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if let Some(w) = writer {
        let _ = w.join();
    }
    Timed {
        output: Output {
            status,
            stdout,
            stderr,
        },
        elapsed: start.elapsed(),
        timed_out,
    }
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child` until `timeout`, then kills it. Returns the status and
/// whether it had to be killed.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> (ExitStatus, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return (st, false),
            Ok(None) => {}
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let st = child
                .wait()
                .unwrap_or_else(|e| panic!("waiting for killed child {}: {e}", child.id()));
            return (st, true);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `f` every 10 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Creates a directory (parents must exist) with exact mode and owner.
pub fn mkdir(path: &Path, mode: u32, uid: u32, gid: u32) {
    if !path.is_dir() {
        fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    }
    set_owner_mode(path, mode, uid, gid);
}

/// Writes a file with exact mode and owner (not affected by the umask).
pub fn write_file(path: &Path, content: impl AsRef<[u8]>, mode: u32, uid: u32, gid: u32) {
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    set_owner_mode(path, mode, uid, gid);
}

pub fn set_owner_mode(path: &Path, mode: u32, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

pub fn read_to_string(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The mount-namespace link of a process (`mnt:[4026531840]`).
pub fn mnt_ns(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Every process whose mount namespace is `ns`.
pub fn pids_in_mnt_ns(ns: &str) -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| mnt_ns(pid).as_deref() == Some(ns))
        .collect()
}

/// Sends `sig` to `pid`; errors (already gone) are ignored.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether `pid` exists (and is not a zombie we could reap).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Finds `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn cmd(program: impl AsRef<OsStr>) -> Command {
    Command::new(program)
}
