//! Session recordings: asciicast v2 files written by the supervisor, on
//! the host side, into a root-only directory the container never sees.
//!
//! The supervisor ([`super::supervise`]) sees every byte of the relay and
//! hands copies to a [`Recorder`]. Nothing slow happens on the keystroke
//! path: the supervisor appends each chunk (with its time) to a batch in
//! memory and passes whole batches (32 KiB, or 100 ms old) over a bounded
//! channel to a writer thread, which turns them into JSON lines, writes
//! them in large `write(2)`s (no fsync) and hashes what it wrote. When the
//! channel is full the relay waits for the disk (backpressure, nothing is
//! lost); when the disk fails (full, I/O error) the writer stops writing,
//! keeps draining the channel, and says so with a `recording.failed`
//! event: the session goes on either way.
//!
//! The file (`<session id>.cast`, 0600, created `O_EXCL|O_NOFOLLOW` in a
//! directory checked to be root's and 0700):
//! - line 1, the asciicast v2 header (`version`, `width`, `height`,
//!   `timestamp`, `command`, `title`) with a `porthole` object: session id,
//!   service, instance, owner, key fingerprint, client, mode;
//! - `[t, "o", text]` output, `[t, "i", text]` input (mode `full`),
//!   `[t, "r", "COLSxROWS"]` window changes; bytes that are not UTF-8 are
//!   replaced by U+FFFD (asciicast strings are JSON text), a character
//!   split across reads is kept whole;
//! - `[t, "m", "porthole: recording stopped: …"]` when the size cap is
//!   reached (nothing but the end line follows);
//! - last, `[t, "m", "porthole.end {json}"]`: end reason, exit status,
//!   byte counts.
//!
//! Players ignore the `m` lines and unknown header keys, so the file plays
//! in `asciinema play` unchanged. When the recording is done the writer
//! makes the file read-only (0400) and its SHA-256 goes into the
//! session's `session.end` event (tamper evidence: a file changed later no
//! longer matches the syslog trail).

use crate::config::{Recording, RecordingMode};
use crate::log::{Event, Logger, Severity};
use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A batch is handed to the writer at this size …
const BATCH_BYTES: usize = 32 * 1024;
/// … or at this age, whichever comes first.
pub const BATCH_AGE: Duration = Duration::from_millis(100);
/// Batches in flight before the relay waits for the writer (~2 MiB).
const QUEUE: usize = 64;
/// The writer's file buffer: one `write(2)` per this many bytes.
const WRITE_BUF: usize = 256 * 1024;
/// Suffix of recording files.
pub const SUFFIX: &str = ".cast";

/// Who and what a recording is of (its header).
#[derive(Debug, Clone)]
pub struct Meta {
    pub session_id: String,
    pub service: String,
    pub instance: String,
    pub owner: String,
    pub fingerprint: String,
    pub client: Option<String>,
    pub command: String,
    /// The terminal size; None without a terminal.
    pub size: Option<(u16, u16)>,
    pub started_unix: i64,
}

/// How a session ended, for the recording's last line.
#[derive(Debug, Clone)]
pub struct EndInfo {
    pub reason: String,
    pub exit_status: Option<i32>,
    pub signal: Option<i32>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A finished recording, for the `session.end` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub path: PathBuf,
    /// SHA-256 of the file as it was closed, lowercase hex.
    pub sha256: String,
    pub bytes: u64,
    /// "complete", "truncated" (size cap) or "failed" (write error).
    pub status: &'static str,
}

/// What kind of bytes a chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Output = b'o',
    Input = b'i',
    Resize = b'r',
    End = b'e',
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            b'o' => Some(Kind::Output),
            b'i' => Some(Kind::Input),
            b'r' => Some(Kind::Resize),
            b'e' => Some(Kind::End),
            _ => None,
        }
    }
}

/// The supervisor's side: batches chunks and hands them to the writer.
pub struct Recorder {
    mode: RecordingMode,
    t0: Instant,
    /// Frames: kind (1 byte), time in µs (8), length (4), bytes.
    batch: Vec<u8>,
    batch_since: Option<Instant>,
    tx: Option<SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<Finished>>,
}

/// The recorder of a session about to start: the control plane's mode for
/// the service if it names one, else the host's.
pub fn for_session(
    cfg: &crate::config::Config,
    log: &Logger,
    service_mode: Option<RecordingMode>,
    record: &crate::session::registry::SessionRecord,
) -> Option<Recorder> {
    let mode = service_mode.unwrap_or(cfg.recording.mode);
    if !record.tty && !cfg.recording.commands {
        return None;
    }
    let size = record
        .tty
        .then(|| crate::session::supervise::window_size(0))
        .flatten()
        .map(|w| (w.cols, w.rows))
        .or(record.tty.then_some((80, 24)));
    let meta = Meta {
        session_id: record.id.clone(),
        service: record.service.clone(),
        instance: record.instance.clone(),
        owner: record.owner.clone(),
        fingerprint: record.fingerprint.clone(),
        client: record.client.clone(),
        command: record.command.clone(),
        size,
        started_unix: record.started,
    };
    start(&cfg.recording, log, &cfg.log.socket, mode, &meta)
}

/// Starts recording a session under `cfg.dir` (after applying retention).
/// None when `mode` is off, or when the file cannot be made: then a
/// `recording.failed` event says why and the session goes on unrecorded.
pub fn start(
    cfg: &Recording,
    log: &Logger,
    socket: &Path,
    mode: RecordingMode,
    meta: &Meta,
) -> Option<Recorder> {
    if mode == RecordingMode::Off {
        return None;
    }
    let failed = |why: String| {
        log.emit(
            &Event::new("recording.failed", Severity::Error)
                .field("session_id", meta.session_id.as_str())
                .field("instance", meta.instance.as_str())
                .field("owner", meta.owner.as_str())
                .field("dir", cfg.dir.display().to_string())
                .field("message", format!("the session is not recorded: {why}")),
        );
    };
    let dir = match open_dir(&cfg.dir, true) {
        Ok(d) => d,
        Err(e) => {
            failed(e);
            return None;
        }
    };
    let removed = retention(&dir, cfg, crate::time::now_unix());
    if removed.count > 0 {
        log.emit(
            &Event::new("recording.removed", Severity::Info)
                .field("dir", cfg.dir.display().to_string())
                .field("files", removed.count)
                .field("bytes", removed.bytes),
        );
    }
    let name = format!("{}{SUFFIX}", meta.session_id);
    let file = match create_file(&dir, &name) {
        Ok(f) => f,
        Err(e) => {
            failed(format!("cannot create {name}: {e}"));
            return None;
        }
    };
    let path = cfg.dir.join(&name);
    let header = header_line(meta, mode);
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
    let mut w = Writer {
        file,
        path,
        buf: Vec::with_capacity(WRITE_BUF),
        hasher: Sha256::new(),
        written: 0,
        max: cfg.max_bytes,
        capped: false,
        failed: None,
        carry_o: Vec::new(),
        carry_i: Vec::new(),
        scratch: Vec::new(),
        socket: socket.to_path_buf(),
        session_id: meta.session_id.clone(),
        instance: meta.instance.clone(),
    };
    w.put(header.as_bytes());
    let writer = std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || {
            for batch in rx {
                w.batch(&batch);
            }
            w.finish()
        });
    let writer = match writer {
        Ok(h) => h,
        Err(e) => {
            failed(format!("cannot start the writer thread: {e}"));
            return None;
        }
    };
    Some(Recorder {
        mode,
        t0: Instant::now(),
        batch: Vec::with_capacity(BATCH_BYTES + 4096),
        batch_since: None,
        tx: Some(tx),
        writer: Some(writer),
    })
}

impl Recorder {
    /// Whether the session's output goes into the file.
    pub fn wants_output(&self) -> bool {
        self.mode >= RecordingMode::Output
    }

    /// Whether the client's input goes into the file.
    pub fn wants_input(&self) -> bool {
        self.mode >= RecordingMode::Full
    }

    /// Bytes the session wrote (to the client).
    pub fn output(&mut self, bytes: &[u8]) {
        if self.wants_output() && !bytes.is_empty() {
            self.push(Kind::Output, bytes);
        }
    }

    /// Bytes the client typed.
    pub fn input(&mut self, bytes: &[u8]) {
        if self.wants_input() && !bytes.is_empty() {
            self.push(Kind::Input, bytes);
        }
    }

    /// The client's window is now `cols`×`rows`.
    pub fn resize(&mut self, cols: u16, rows: u16) {
        self.push(Kind::Resize, format!("{cols}x{rows}").as_bytes());
    }

    /// How long the supervisor may sleep before the batch is due.
    pub fn due_in(&self) -> Option<Duration> {
        self.batch_since
            .map(|t| BATCH_AGE.saturating_sub(t.elapsed()))
    }

    /// Hands the batch to the writer if it is big or old enough.
    pub fn tick(&mut self) {
        if self.batch.len() >= BATCH_BYTES
            || self.batch_since.is_some_and(|t| t.elapsed() >= BATCH_AGE)
        {
            self.send();
        }
    }

    fn push(&mut self, kind: Kind, bytes: &[u8]) {
        let us = u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Chunks larger than a frame can say are split (reads are 64 KiB).
        for part in bytes.chunks(u32::MAX as usize) {
            self.batch.push(kind as u8);
            self.batch.extend_from_slice(&us.to_le_bytes());
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            self.batch.extend_from_slice(&len.to_le_bytes());
            self.batch.extend_from_slice(part);
        }
        if self.batch_since.is_none() {
            self.batch_since = Some(Instant::now());
        }
        if self.batch.len() >= BATCH_BYTES {
            self.send();
        }
    }

    fn send(&mut self) {
        self.batch_since = None;
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_BYTES + 4096));
        if let Some(tx) = &self.tx {
            // Blocks while the queue is full: the disk sets the pace. An
            // error means the writer is gone; nothing more is recorded.
            if tx.send(batch).is_err() {
                self.tx = None;
            }
        }
    }

    /// Writes the end line, closes the file and returns its hash.
    pub fn finish(mut self, end: &EndInfo) -> Option<Finished> {
        let mut json = serde_json::Map::new();
        json.insert("reason".into(), end.reason.clone().into());
        if let Some(c) = end.exit_status {
            json.insert("exit_status".into(), c.into());
        }
        if let Some(s) = end.signal {
            json.insert("signal".into(), s.into());
        }
        json.insert("bytes_in".into(), end.bytes_in.into());
        json.insert("bytes_out".into(), end.bytes_out.into());
        let line = format!("{END_PREFIX}{}", serde_json::Value::Object(json));
        self.push(Kind::End, line.as_bytes());
        self.send();
        drop(self.tx.take());
        self.writer.take().and_then(|h| h.join().ok())
    }
}

/// The label of the last marker line.
pub const END_PREFIX: &str = "porthole.end ";

/// The header line (with its newline).
fn header_line(meta: &Meta, mode: RecordingMode) -> String {
    let (cols, rows) = meta.size.unwrap_or((80, 24));
    let mut p = serde_json::Map::new();
    p.insert("session_id".into(), meta.session_id.clone().into());
    p.insert("service".into(), meta.service.clone().into());
    p.insert("instance".into(), meta.instance.clone().into());
    p.insert("owner".into(), meta.owner.clone().into());
    p.insert("fingerprint".into(), meta.fingerprint.clone().into());
    if let Some(c) = &meta.client {
        p.insert("client".into(), c.clone().into());
    }
    p.insert("tty".into(), meta.size.is_some().into());
    p.insert("mode".into(), mode.as_str().into());
    let mut h = serde_json::Map::new();
    h.insert("version".into(), 2.into());
    h.insert("width".into(), cols.into());
    h.insert("height".into(), rows.into());
    h.insert("timestamp".into(), meta.started_unix.into());
    h.insert("command".into(), meta.command.clone().into());
    h.insert(
        "title".into(),
        format!("{} on {}", meta.owner, meta.instance).into(),
    );
    h.insert("porthole".into(), serde_json::Value::Object(p));
    format!("{}\n", serde_json::Value::Object(h))
}

/// The writer thread's state.
struct Writer {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    hasher: Sha256,
    /// Bytes in the file (and the buffer).
    written: u64,
    /// The size cap (0: none).
    max: u64,
    capped: bool,
    failed: Option<String>,
    /// An incomplete UTF-8 character at the end of the last chunk.
    carry_o: Vec<u8>,
    carry_i: Vec<u8>,
    /// The line being built (reused).
    scratch: Vec<u8>,
    socket: PathBuf,
    session_id: String,
    instance: String,
}

impl Writer {
    /// Decodes the frames of one batch and writes their lines.
    fn batch(&mut self, mut b: &[u8]) {
        while b.len() >= 13 {
            let kind = Kind::from_byte(b[0]);
            let mut t = [0u8; 8];
            t.copy_from_slice(&b[1..9]);
            let mut l = [0u8; 4];
            l.copy_from_slice(&b[9..13]);
            let len = u32::from_le_bytes(l) as usize;
            let Some(data) = b.get(13..13 + len) else {
                return;
            };
            b = &b[13 + len..];
            let secs = u64::from_le_bytes(t) as f64 / 1e6;
            match kind {
                Some(Kind::Output) => self.text(secs, 'o', data),
                Some(Kind::Input) => self.text(secs, 'i', data),
                Some(Kind::Resize) => {
                    let s = String::from_utf8_lossy(data);
                    self.line(secs, 'r', &s, false);
                }
                Some(Kind::End) => {
                    let s = String::from_utf8_lossy(data);
                    self.line(secs, 'm', &s, true);
                }
                None => return,
            }
        }
    }

    /// An output or input chunk: whole UTF-8 characters now, a split one
    /// with the next chunk.
    fn text(&mut self, secs: f64, code: char, data: &[u8]) {
        if self.failed.is_some() || self.capped {
            return;
        }
        let carry = if code == 'o' {
            std::mem::take(&mut self.carry_o)
        } else {
            std::mem::take(&mut self.carry_i)
        };
        // Most chunks have no carry: no copy of them then.
        let joined;
        let bytes: &[u8] = if carry.is_empty() {
            data
        } else {
            joined = [carry.as_slice(), data].concat();
            &joined
        };
        let keep = incomplete_tail(bytes);
        let (whole, rest) = bytes.split_at(bytes.len() - keep);
        if !whole.is_empty() {
            let s = String::from_utf8_lossy(whole);
            self.line(secs, code, &s, false);
        }
        let rest = rest.to_vec();
        if code == 'o' {
            self.carry_o = rest;
        } else {
            self.carry_i = rest;
        }
    }

    /// One event line; past the cap only the end line is written.
    fn line(&mut self, secs: f64, code: char, data: &str, end: bool) {
        if (self.capped && !end) || self.failed.is_some() {
            return;
        }
        let mut line = std::mem::take(&mut self.scratch);
        line.clear();
        let _ = write!(line, "[{secs:.6}, \"{code}\", ");
        json_string(&mut line, data);
        line.extend_from_slice(b"]\n");
        if !end && self.max > 0 && self.written + line.len() as u64 > self.max {
            self.scratch = line;
            self.capped = true;
            let marker = format!(
                "[{secs:.6}, \"m\", \"porthole: recording stopped: the size limit of {} bytes was reached; the session went on\"]\n",
                self.max
            );
            self.put(marker.as_bytes());
            self.event(
                "recording.truncated",
                Severity::Warning,
                format!("the recording reached its size limit of {} bytes; the rest of the session is not recorded", self.max),
            );
            return;
        }
        self.put(&line);
        self.scratch = line;
    }

    fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.written += bytes.len() as u64;
        if self.buf.len() >= WRITE_BUF {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() || self.failed.is_some() {
            self.buf.clear();
            return;
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => self.hasher.update(&self.buf),
            Err(e) => {
                let why = format!("writing {}: {e}", self.path.display());
                self.event(
                    "recording.failed",
                    Severity::Error,
                    format!("the recording stopped ({why}); the session went on"),
                );
                self.failed = Some(why);
            }
        }
        self.buf.clear();
    }

    fn event(&self, name: &str, sev: Severity, message: String) {
        Logger::syslog_only("porthole-shell", &self.socket).emit(
            &Event::new(name, sev)
                .field("session_id", self.session_id.as_str())
                .field("instance", self.instance.as_str())
                .field("path", self.path.display().to_string())
                .field("message", message),
        );
    }

    fn finish(mut self) -> Finished {
        self.flush();
        let sha256 = if self.failed.is_some() {
            // What reached the disk is unknown: hash the file as it is.
            hash_file(&mut self.file).unwrap_or_default()
        } else {
            hex(&self.hasher.finalize_reset())
        };
        let bytes = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        // Done: nobody writes it any more (root still can; the hash in the
        // audit trail is what tells).
        // SAFETY: fchmod on a file we hold.
        unsafe { libc::fchmod(self.file.as_raw_fd(), 0o400) };
        Finished {
            path: self.path,
            sha256,
            bytes,
            status: if self.failed.is_some() {
                "failed"
            } else if self.capped {
                "truncated"
            } else {
                "complete"
            },
        }
    }
}

/// Appends `s` as a JSON string. Runs of bytes that need no escape are
/// copied whole: this is the writer's inner loop (a GiB of output is a GiB
/// through here), and the release profile optimizes for size.
fn json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c >= 0x20 && c != b'"' && c != b'\\' {
            continue;
        }
        out.extend_from_slice(&b[start..i]);
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 15)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// How many bytes at the end of `b` start a UTF-8 character that is not
/// complete yet (0 to 3).
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let c = b[b.len() - back];
        if c & 0xC0 == 0x80 {
            continue; // continuation byte: look further back
        }
        let need = match c {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hash_file(f: &mut File) -> std::io::Result<String> {
    f.rewind()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 of the file at `path` (lowercase hex), opened without
/// following a symlink.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    hash_file(&mut f)
}

/// Opens the recordings directory: root's, 0700, not a symlink. With
/// `create`, makes it (and missing parents, 0755) first.
pub fn open_dir(dir: &Path, create: bool) -> Result<OwnedFd, String> {
    if create && std::fs::symlink_metadata(dir).is_err() {
        if let Some(parent) = dir.parent() {
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent);
        }
        let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
    }
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| "bad path".to_owned())?;
    // SAFETY: open with a valid C string; returns a new fd we own.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cannot open {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd was just returned by open and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let meta = File::from(fd.try_clone().map_err(|e| e.to_string())?)
        .metadata()
        .map_err(|e| e.to_string())?;
    if meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} must be a directory owned by root with mode 0700 (it is uid {} mode {:o})",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(fd)
}

fn create_file(dir: &OwnedFd, name: &str) -> std::io::Result<File> {
    let c =
        CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: openat relative to a directory fd we hold, valid C string;
    // returns a new fd we own.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat and is ours.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Whether `name` is a recording's file name (`<16 hex>.cast`): the only
/// files retention removes and replay opens.
pub fn is_recording_name(name: &str) -> bool {
    name.strip_suffix(SUFFIX)
        .is_some_and(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What retention removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub count: u64,
    pub bytes: u64,
}

/// Removes recordings older than `max_age_days`, then the oldest until
/// all take at most `max_total_mib`. Only `<id>.cast` regular files.
fn retention(dir: &OwnedFd, cfg: &Recording, now: i64) -> Removed {
    let mut removed = Removed::default();
    if cfg.max_age_days == 0 && cfg.max_total_mib == 0 {
        return removed;
    }
    let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return removed;
    };
    let mut files: Vec<(i64, u64, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let m = e.metadata().ok()?;
            (is_recording_name(&name) && m.file_type().is_file())
                .then(|| (m.mtime(), m.len(), name))
        })
        .collect();
    files.sort();
    let max_age = i64::try_from(cfg.max_age_days.saturating_mul(86_400)).unwrap_or(i64::MAX);
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    let cap = cfg.max_total_mib.saturating_mul(1024 * 1024);
    for (mtime, len, name) in files {
        let old = cfg.max_age_days > 0 && now.saturating_sub(mtime) > max_age;
        let over = cfg.max_total_mib > 0 && total > cap;
        if !old && !over {
            continue;
        }
        let Ok(c) = CString::new(name) else { continue };
        // SAFETY: unlinkat relative to a directory fd we hold.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } == 0 {
            removed.count += 1;
            removed.bytes += len;
            total = total.saturating_sub(len);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_tails() {
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_tail(&"é".as_bytes()[..1]), 1);
        assert_eq!(incomplete_tail(&"€".as_bytes()[..2]), 2);
        assert_eq!(incomplete_tail(&"😀".as_bytes()[..3]), 3);
        assert_eq!(incomplete_tail(b"\xff"), 0);
    }

    fn meta(id: &str) -> Meta {
        Meta {
            session_id: id.into(),
            service: "srv-a1".into(),
            instance: "srv-a1-aaaaa".into(),
            owner: "a@x".into(),
            fingerprint: "SHA256:x".into(),
            client: None,
            command: "shell".into(),
            size: Some((80, 24)),
            started_unix: 1,
        }
    }

    fn lines(p: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn writer_keeps_characters_whole_hashes_and_caps() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the recordings directory must be root's");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Recording {
            dir: tmp.path().join("rec"),
            ..Recording::default()
        };
        let log = Logger::stderr("test");
        let sock = tmp.path().join("nosock");
        let mut r = start(
            &cfg,
            &log,
            &sock,
            RecordingMode::Full,
            &meta("00000000000000aa"),
        )
        .unwrap();
        let euro = "€".as_bytes();
        r.output(b"a");
        r.output(&euro[..1]);
        r.output(&euro[1..]);
        r.output(b"\xffb");
        r.input(b"pw\n");
        r.resize(100, 30);
        let f = r
            .finish(&EndInfo {
                reason: "exit".into(),
                exit_status: Some(0),
                signal: None,
                bytes_in: 3,
                bytes_out: 6,
            })
            .unwrap();
        assert_eq!(f.status, "complete");
        assert_eq!(f.sha256, sha256_of(&f.path).unwrap());
        let l = lines(&f.path);
        assert_eq!(l[0]["version"], 2);
        let out: String = l[1..]
            .iter()
            .filter(|e| e[1] == "o")
            .map(|e| e[2].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(out, "a€\u{fffd}b");
        assert!(l.iter().any(|e| e[1] == "i" && e[2] == "pw\n"));
        assert!(l.iter().any(|e| e[1] == "r" && e[2] == "100x30"));
        assert!(l.last().unwrap()[2]
            .as_str()
            .unwrap()
            .starts_with(END_PREFIX));
        // O_EXCL: a second recording of the same id is refused.
        assert!(start(
            &cfg,
            &log,
            &sock,
            RecordingMode::Output,
            &meta("00000000000000aa")
        )
        .is_none());

        let capped = Recording {
            max_bytes: 4096,
            ..cfg.clone()
        };
        let mut r = start(
            &capped,
            &log,
            &sock,
            RecordingMode::Output,
            &meta("00000000000000bb"),
        )
        .unwrap();
        for _ in 0..100 {
            r.output(&[b'x'; 100]);
        }
        let end = EndInfo {
            reason: "exit".into(),
            exit_status: Some(0),
            signal: None,
            bytes_in: 0,
            bytes_out: 10_000,
        };
        let f = r.finish(&end).unwrap();
        assert_eq!(f.status, "truncated");
        assert!(f.bytes <= 4096 + 400, "{}", f.bytes);
        let l = lines(&f.path);
        let n = l.len();
        assert!(l[n - 2][2].as_str().unwrap().contains("size limit"));

        // Off: nothing at all.
        assert!(start(
            &cfg,
            &log,
            &sock,
            RecordingMode::Off,
            &meta("00000000000000cc")
        )
        .is_none());
        assert!(!cfg.dir.join("00000000000000cc.cast").exists());
    }

    #[test]
    fn json_strings_match_serde_json() {
        for s in [
            "",
            "plain",
            "a\"b\\c\nd\re\tf",
            "\u{1b}[1;31mred\u{0}\u{7f}\u{1f}",
            "Ünïcødé € 😀 \u{9b}",
        ] {
            let mut mine = Vec::new();
            json_string(&mut mine, s);
            let back: String = serde_json::from_slice(&mine).unwrap();
            assert_eq!(back, s);
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                serde_json::Value::String(s.into()).to_string()
            );
        }
    }

    #[test]
    fn names() {
        assert!(is_recording_name("0123456789abcdef.cast"));
        assert!(!is_recording_name("0123456789abcdef.cast.tmp"));
        assert!(!is_recording_name("../0123456789abcde.cast"));
        assert!(!is_recording_name("notes.txt"));
    }
}
