//! porthole-sftp: an SFTP v3 server (draft-ietf-secsh-filexfer-02) with
//! the OpenSSH extensions clients use, over stdin/stdout.
//!
//! It runs inside the instance as the container user (see `sftp`), so
//! it needs no path checks of its own: every path is resolved by the
//! kernel against the process's root and cwd, which are the container's
//! (`..` at `/` stays at `/`, an absolute symlink target starts at the
//! container's `/`), and every permission is the container user's.
//!
//! Packets are decoded and encoded by `russh-sftp`'s protocol types, used
//! synchronously. Before a packet reaches that decoder its length is
//! checked against [`MAX_PACKET`] (as OpenSSH's sftp-server does): a longer
//! one is answered with `SSH_FX_BAD_MESSAGE` and ends the session, since
//! the stream cannot be trusted to be in step after it; a malformed body
//! gets `SSH_FX_BAD_MESSAGE` for its request id and an unknown type
//! `SSH_FX_OP_UNSUPPORTED`, and the session goes on. Nothing the client
//! sends can make it allocate more than one packet, or hold more than
//! [`MAX_HANDLES`] open files.

use crate::sftp::events::FileEvent;
use bytes::Bytes;
use russh_sftp::extensions::{
    ExpandPathExtension, FsyncExtension, HardlinkExtension, LimitsExtension, Statvfs,
    StatvfsExtension,
};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File as NameEntry, FileAttributes, Handle as HandleReply, Name,
    OpenFlags, Packet, Status, StatusCode, Version,
};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, Metadata, OpenOptions, ReadDir};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Largest packet accepted (OpenSSH's `SFTP_MAX_MSG_LENGTH`).
pub const MAX_PACKET: u32 = 256 * 1024;
/// Largest READ answered and WRITE advertised in `limits@openssh.com`.
pub const MAX_IO: u32 = MAX_PACKET - 1024;
/// Open file and directory handles at once.
pub const MAX_HANDLES: usize = 512;
/// Directory entries per READDIR answer.
const DIR_BATCH: usize = 100;

/// The extensions announced in VERSION, with their versions.
pub const EXTENSIONS: [(&str, &str); 6] = [
    ("posix-rename@openssh.com", "1"),
    ("statvfs@openssh.com", "2"),
    ("hardlink@openssh.com", "1"),
    ("fsync@openssh.com", "1"),
    ("limits@openssh.com", "1"),
    ("expand-path@openssh.com", "1"),
];

/// Why serving stopped early (EOF on stdin is the normal end, `Ok`).
#[derive(Debug)]
pub enum ServeError {
    /// Reading stdin or writing stdout failed: the channel is gone.
    Io(std::io::Error),
    /// The client sent a packet whose length cannot be honoured (0 or over
    /// [`MAX_PACKET`]); it was told so. The message says which.
    Protocol(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Io(e) => write!(f, "sftp channel: {e}"),
            ServeError::Protocol(m) => write!(f, "sftp protocol: {m}"),
        }
    }
}

impl std::error::Error for ServeError {}

enum Handle {
    File {
        file: File,
        /// As the client named it, made absolute: what the audit says.
        path: String,
        writable: bool,
        written: u64,
    },
    Dir {
        path: PathBuf,
        entries: ReadDir,
        /// `.` and `..` go first, as readdir(3) gives them.
        dots_sent: bool,
    },
}

/// One SFTP session's state.
pub struct Server<W: Write> {
    out: W,
    handles: HashMap<String, Handle>,
    next_handle: u64,
    events: Option<File>,
    initialized: bool,
}

/// Serves one session: packets from `input`, answers to `output`, audit
/// lines to `events`. Returns at EOF.
pub fn serve(input: impl Read, output: impl Write, events: Option<File>) -> Result<(), ServeError> {
    let mut input = std::io::BufReader::with_capacity(MAX_PACKET as usize + 4, input);
    let mut server = Server {
        out: std::io::BufWriter::with_capacity(MAX_PACKET as usize + 64, output),
        handles: HashMap::new(),
        next_handle: 0,
        events,
        initialized: false,
    };
    let result = server.run(&mut input);
    // Handles still open at the end are closed like CLOSE would (audited).
    let open: Vec<String> = server.handles.keys().cloned().collect();
    for h in open {
        server.close(&h);
    }
    let _ = server.out.flush();
    result
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn status(id: u32, code: StatusCode, msg: impl Into<String>) -> Packet {
    Packet::Status(Status {
        id,
        status_code: code,
        error_message: msg.into(),
        language_tag: "en".into(),
    })
}

/// A request that failed: its STATUS reply, kept small until it is sent.
struct Failed {
    id: u32,
    code: StatusCode,
    msg: String,
}

impl From<Failed> for Packet {
    fn from(f: Failed) -> Packet {
        status(f.id, f.code, f.msg)
    }
}

fn fail(id: u32, code: StatusCode, msg: impl Into<String>) -> Failed {
    Failed {
        id,
        code,
        msg: msg.into(),
    }
}

fn ok(id: u32) -> Packet {
    status(id, StatusCode::Ok, "Success")
}

/// The status for an I/O error: its kind as the code, its text (without
/// Rust's "(os error N)") as the message.
fn io_fail(id: u32, e: &std::io::Error) -> Failed {
    use std::io::ErrorKind as K;
    let code = match e.kind() {
        K::NotFound => StatusCode::NoSuchFile,
        K::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or("Failure");
    fail(id, code, text)
}

/// What an I/O step gives: a reply either way.
type Reply = Result<Packet, Failed>;

fn attrs_of(m: &Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(m.size()),
        uid: Some(m.uid()),
        user: None,
        gid: Some(m.gid()),
        group: None,
        permissions: Some(m.mode()),
        atime: Some(u32::try_from(m.atime().max(0)).unwrap_or(u32::MAX)),
        mtime: Some(u32::try_from(m.mtime().max(0)).unwrap_or(u32::MAX)),
    }
}

/// A directory entry with an `ls -l` line as OpenSSH's sftp-server makes
/// it (numeric owner and group: the image's passwd is not consulted).
fn entry_of(name: String, m: &Metadata) -> NameEntry {
    let mode = m.mode();
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let bit = |b: u32, c: char| if mode & b != 0 { c } else { '-' };
    let exec = |x: u32, s: u32, set: char, unset: char| match (mode & x != 0, mode & s != 0) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    let perms: String = [
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect();
    let longname = format!(
        "{kind}{perms} {:>3} {:<8} {:<8} {:>8} {} {name}",
        m.nlink(),
        m.uid(),
        m.gid(),
        m.size(),
        ls_time(m.mtime(), crate::time::now_unix()),
    );
    NameEntry {
        filename: name,
        longname,
        attrs: attrs_of(m),
    }
}

/// `ls -l`'s date: `Mon dd HH:MM` within six months of now, else
/// `Mon dd  YYYY` (UTC: the image's zone files are not consulted).
fn ls_time(t: i64, now: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mon = MONTHS[usize::try_from(month - 1).unwrap_or(0).min(11)];
    if (now - t).abs() < 182 * 86_400 {
        format!("{mon} {day:>2} {:02}:{:02}", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{mon} {day:>2}  {year}")
    }
}

/// `path` made absolute against the cwd, `.`/`..` folded lexically (for
/// names that do not exist yet; `..` at `/` stays `/`).
fn lexical_absolute(path: &str) -> PathBuf {
    let p = Path::new(if path.is_empty() { "." } else { path });
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// REALPATH: the canonical path where it exists; otherwise its existing
/// parent canonicalized plus the last name (as OpenSSH's sftp-server does
/// for a destination), else the lexical form.
fn real_path(path: &str) -> PathBuf {
    let p = if path.is_empty() { "." } else { path };
    if let Ok(c) = fs::canonicalize(p) {
        return c;
    }
    let abs = lexical_absolute(p);
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => fs::canonicalize(parent)
            .map(|c| c.join(name))
            .unwrap_or(abs),
        _ => abs,
    }
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn name_reply(id: u32, path: &Path) -> Packet {
    let s = path_string(path);
    let attrs = fs::symlink_metadata(path)
        .map(|m| attrs_of(&m))
        .unwrap_or_default();
    Packet::Name(Name {
        id,
        files: vec![NameEntry {
            filename: s.clone(),
            longname: s,
            attrs,
        }],
    })
}

/// Sets what `attrs` carries on `path` (or on `file` when given), in
/// OpenSSH's order: size, permissions, times, owner.
fn apply_attrs(path: &str, file: Option<&File>, attrs: &FileAttributes) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(size) = attrs.size {
        match file {
            Some(f) => f.set_len(size)?,
            None => OpenOptions::new().write(true).open(path)?.set_len(size)?,
        }
    }
    if let Some(mode) = attrs.permissions {
        let perm = fs::Permissions::from_mode(mode & 0o7777);
        match file {
            Some(f) => f.set_permissions(perm)?,
            None => fs::set_permissions(path, perm)?,
        }
    }
    if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
        let t = |s: u32| std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(s));
        let times = fs::FileTimes::new()
            .set_accessed(t(atime))
            .set_modified(t(mtime));
        match file {
            Some(f) => f.set_times(times)?,
            // Times through a handle opened without following a final
            // symlink would need O_PATH tricks; like `touch`, follow it.
            None => File::options()
                .write(true)
                .open(path)
                .or_else(|_| File::open(path))?
                .set_times(times)?,
        }
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        match file {
            Some(f) => std::os::unix::fs::fchown(f, attrs.uid, attrs.gid)?,
            None => std::os::unix::fs::chown(path, attrs.uid, attrs.gid)?,
        }
    }
    Ok(())
}

fn statvfs(path: &str) -> std::io::Result<Statvfs> {
    let c = std::ffi::CString::new(path).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: all-zero is a valid `statvfs` (integers only).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a live, writable struct.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // OpenSSH's SSH2_FXE_STATVFS_ST_RDONLY and _NOSUID.
    let flags = (if st.f_flag & libc::ST_RDONLY != 0 {
        1
    } else {
        0
    }) | (if st.f_flag & libc::ST_NOSUID != 0 {
        2
    } else {
        0
    });
    Ok(Statvfs {
        block_size: st.f_bsize,
        fragment_size: st.f_frsize,
        blocks: st.f_blocks,
        blocks_free: st.f_bfree,
        blocks_avail: st.f_bavail,
        inodes: st.f_files,
        inodes_free: st.f_ffree,
        inodes_avail: st.f_favail,
        fs_id: st.f_fsid,
        flags,
        name_max: st.f_namemax,
    })
}

fn extended_reply<T: serde::Serialize>(id: u32, value: &T) -> Reply {
    russh_sftp::ser::to_bytes(value)
        .map(|b| {
            Packet::ExtendedReply(ExtendedReply {
                id,
                data: b.to_vec(),
            })
        })
        .map_err(|_| fail(id, StatusCode::Failure, "cannot encode the reply"))
}

fn decode_ext<T: serde::de::DeserializeOwned>(id: u32, data: Vec<u8>) -> Result<T, Failed> {
    let mut b = Bytes::from(data);
    russh_sftp::de::from_bytes(&mut b)
        .map_err(|_| fail(id, StatusCode::BadMessage, "malformed extended request"))
}

impl<W: Write> Server<W> {
    fn run(&mut self, input: &mut std::io::BufReader<impl Read>) -> Result<(), ServeError> {
        let mut len = [0u8; 4];
        loop {
            if input.buffer().is_empty() {
                // Nothing more pipelined: send what is pending before waiting.
                self.out.flush().map_err(ServeError::Io)?;
            }
            if !read_full(input, &mut len).map_err(ServeError::Io)? {
                return Ok(());
            }
            let n = u32::from_be_bytes(len);
            if n == 0 || n > MAX_PACKET {
                let msg = format!("packet length {n} is not in 1..={MAX_PACKET}");
                self.send(status(0, StatusCode::BadMessage, msg.clone()))?;
                self.out.flush().map_err(ServeError::Io)?;
                return Err(ServeError::Protocol(msg));
            }
            let mut body = vec![0u8; n as usize];
            if !read_full(input, &mut body).map_err(ServeError::Io)? {
                return Err(ServeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let kind = body[0];
            let id = body
                .get(1..5)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            let reply = match Packet::try_from(&mut Bytes::from(body)) {
                Ok(p) => self.handle(p),
                Err(_) if Self::known_type(kind) => {
                    status(id, StatusCode::BadMessage, "malformed request")
                }
                Err(_) => status(
                    id,
                    StatusCode::OpUnsupported,
                    format!("unsupported request type {kind}"),
                ),
            };
            self.send(reply)?;
        }
    }

    fn known_type(kind: u8) -> bool {
        matches!(kind, 1..=20 | 200)
    }

    fn send(&mut self, p: Packet) -> Result<(), ServeError> {
        let bytes = Bytes::try_from(p).map_err(|e| ServeError::Protocol(e.to_string()))?;
        self.out.write_all(&bytes).map_err(ServeError::Io)
    }

    fn audit(&mut self, e: FileEvent) {
        if let Some(f) = &mut self.events {
            if f.write_all(e.encode().as_bytes()).is_err() {
                // The supervisor is gone: the session is ending anyway.
                self.events = None;
            }
        }
    }

    fn new_handle(&mut self, id: u32, h: Handle) -> Packet {
        if self.handles.len() >= MAX_HANDLES {
            return status(id, StatusCode::Failure, "too many open handles");
        }
        self.next_handle += 1;
        let name = self.next_handle.to_string();
        self.handles.insert(name.clone(), h);
        Packet::Handle(HandleReply { id, handle: name })
    }

    fn close(&mut self, handle: &str) -> bool {
        match self.handles.remove(handle) {
            Some(Handle::File {
                path,
                writable: true,
                written,
                ..
            }) => {
                self.audit(FileEvent::Write {
                    path,
                    bytes: written,
                });
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    fn handle(&mut self, p: Packet) -> Packet {
        let id = p.get_request_id();
        if !self.initialized {
            return match p {
                Packet::Init(_) => {
                    self.initialized = true;
                    let extensions = EXTENSIONS
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    Packet::Version(Version {
                        version: 3,
                        extensions,
                    })
                }
                _ => status(
                    id,
                    StatusCode::Failure,
                    "the session has not been initialised",
                ),
            };
        }
        let r: Reply = match p {
            Packet::Init(_) => Err(fail(id, StatusCode::BadMessage, "already initialised")),
            Packet::Open(o) => self.open(o.id, &o.filename, o.pflags, &o.attrs),
            Packet::Close(c) => Ok(if self.close(&c.handle) {
                ok(id)
            } else {
                status(id, StatusCode::Failure, "no such handle")
            }),
            Packet::Read(r) => self.read(r.id, &r.handle, r.offset, r.len),
            Packet::Write(w) => self.write(w.id, &w.handle, w.offset, &w.data),
            Packet::Lstat(s) => fs::symlink_metadata(&s.path)
                .map(|m| {
                    Packet::Attrs(Attrs {
                        id,
                        attrs: attrs_of(&m),
                    })
                })
                .map_err(|e| io_fail(id, &e)),
            Packet::Stat(s) => fs::metadata(&s.path)
                .map(|m| {
                    Packet::Attrs(Attrs {
                        id,
                        attrs: attrs_of(&m),
                    })
                })
                .map_err(|e| io_fail(id, &e)),
            Packet::Fstat(s) => match self.handles.get(&s.handle) {
                Some(Handle::File { file, .. }) => file
                    .metadata()
                    .map(|m| {
                        Packet::Attrs(Attrs {
                            id,
                            attrs: attrs_of(&m),
                        })
                    })
                    .map_err(|e| io_fail(id, &e)),
                _ => Err(fail(id, StatusCode::Failure, "no such file handle")),
            },
            Packet::SetStat(s) => apply_attrs(&s.path, None, &s.attrs)
                .map(|()| ok(id))
                .map_err(|e| io_fail(id, &e)),
            Packet::FSetStat(s) => match self.handles.get(&s.handle) {
                Some(Handle::File { file, path, .. }) => apply_attrs(path, Some(file), &s.attrs)
                    .map(|()| ok(id))
                    .map_err(|e| io_fail(id, &e)),
                _ => Err(fail(id, StatusCode::Failure, "no such file handle")),
            },
            Packet::OpenDir(o) => match fs::read_dir(&o.path) {
                Ok(entries) => Ok(self.new_handle(
                    id,
                    Handle::Dir {
                        path: PathBuf::from(&o.path),
                        entries,
                        dots_sent: false,
                    },
                )),
                Err(e) => Err(io_fail(id, &e)),
            },
            Packet::ReadDir(r) => self.read_dir(id, &r.handle),
            Packet::Remove(r) => fs::remove_file(&r.filename)
                .map(|()| {
                    let path = path_string(&lexical_absolute(&r.filename));
                    self.audit(FileEvent::Remove { path });
                    ok(id)
                })
                .map_err(|e| io_fail(id, &e)),
            Packet::MkDir(m) => {
                let mode = m.attrs.permissions.unwrap_or(0o777) & 0o7777;
                fs::DirBuilder::new()
                    .mode(mode)
                    .create(&m.path)
                    .map(|()| ok(id))
                    .map_err(|e| io_fail(id, &e))
            }
            Packet::RmDir(r) => fs::remove_dir(&r.path)
                .map(|()| {
                    let path = path_string(&lexical_absolute(&r.path));
                    self.audit(FileEvent::Remove { path });
                    ok(id)
                })
                .map_err(|e| io_fail(id, &e)),
            Packet::RealPath(r) => Ok(name_reply(id, &real_path(&r.path))),
            Packet::Rename(r) => {
                // SFTP v3 rename never replaces (OpenSSH: link + unlink).
                if fs::symlink_metadata(&r.newpath).is_ok() {
                    Err(fail(id, StatusCode::Failure, "the target exists"))
                } else {
                    self.rename(id, &r.oldpath, &r.newpath)
                }
            }
            Packet::ReadLink(r) => fs::read_link(&r.path)
                .map(|t| {
                    let s = path_string(&t);
                    Packet::Name(Name {
                        id,
                        files: vec![NameEntry {
                            filename: s.clone(),
                            longname: s,
                            attrs: FileAttributes::default(),
                        }],
                    })
                })
                .map_err(|e| io_fail(id, &e)),
            // OpenSSH's clients send (target, link) in that order; the
            // crate names the first field `linkpath`. Served as OpenSSH's
            // sftp-server does: symlink(first, second).
            Packet::Symlink(s) => std::os::unix::fs::symlink(&s.linkpath, &s.targetpath)
                .map(|()| ok(id))
                .map_err(|e| io_fail(id, &e)),
            Packet::Extended(e) => self.extended(id, &e.request, e.data),
            _ => Err(fail(id, StatusCode::OpUnsupported, "not a request")),
        };
        r.unwrap_or_else(Packet::from)
    }

    fn open(&mut self, id: u32, name: &str, flags: OpenFlags, attrs: &FileAttributes) -> Reply {
        let mut opts: OpenOptions = flags.into();
        let mode = attrs.permissions.unwrap_or(0o666) & 0o7777;
        opts.mode(mode).custom_flags(libc::O_NOCTTY);
        if !flags.contains(OpenFlags::READ) && !flags.contains(OpenFlags::WRITE) {
            opts.read(true);
        }
        let file = opts.open(name).map_err(|e| io_fail(id, &e))?;
        let meta = file.metadata().map_err(|e| io_fail(id, &e))?;
        if meta.is_dir() {
            return Err(fail(id, StatusCode::Failure, "is a directory"));
        }
        let writable = flags.contains(OpenFlags::WRITE) || flags.contains(OpenFlags::APPEND);
        let path = path_string(&lexical_absolute(name));
        Ok(self.new_handle(
            id,
            Handle::File {
                file,
                path,
                writable,
                written: 0,
            },
        ))
    }

    fn read(&mut self, id: u32, handle: &str, offset: u64, len: u32) -> Reply {
        let Some(Handle::File { file, .. }) = self.handles.get(handle) else {
            return Err(fail(id, StatusCode::Failure, "no such file handle"));
        };
        let mut buf = vec![0u8; len.min(MAX_IO) as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if got == 0 => return Err(io_fail(id, &e)),
                Err(_) => break,
            }
        }
        if got == 0 && !buf.is_empty() {
            return Err(fail(id, StatusCode::Eof, "End of file"));
        }
        buf.truncate(got);
        Ok(Packet::Data(Data { id, data: buf }))
    }

    fn write(&mut self, id: u32, handle: &str, offset: u64, data: &[u8]) -> Reply {
        let Some(Handle::File { file, written, .. }) = self.handles.get_mut(handle) else {
            return Err(fail(id, StatusCode::Failure, "no such file handle"));
        };
        file.write_all_at(data, offset)
            .map_err(|e| io_fail(id, &e))?;
        *written += data.len() as u64;
        Ok(ok(id))
    }

    fn read_dir(&mut self, id: u32, handle: &str) -> Reply {
        let Some(Handle::Dir {
            path,
            entries,
            dots_sent,
        }) = self.handles.get_mut(handle)
        else {
            return Err(fail(id, StatusCode::Failure, "no such directory handle"));
        };
        let mut files = Vec::new();
        if !*dots_sent {
            *dots_sent = true;
            for dot in [".", ".."] {
                if let Ok(m) = fs::symlink_metadata(path.join(dot)) {
                    files.push(entry_of(dot.into(), &m));
                }
            }
        }
        while files.len() < DIR_BATCH {
            let Some(entry) = entries.next() else { break };
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            match entry.metadata() {
                Ok(m) => files.push(entry_of(name, &m)),
                Err(_) => files.push(NameEntry {
                    longname: name.clone(),
                    filename: name,
                    attrs: FileAttributes::default(),
                }),
            }
        }
        if files.is_empty() {
            return Err(fail(id, StatusCode::Eof, "End of file"));
        }
        Ok(Packet::Name(Name { id, files }))
    }

    fn rename(&mut self, id: u32, from: &str, to: &str) -> Reply {
        fs::rename(from, to).map_err(|e| io_fail(id, &e))?;
        self.audit(FileEvent::Rename {
            from: path_string(&lexical_absolute(from)),
            to: path_string(&lexical_absolute(to)),
        });
        Ok(ok(id))
    }

    fn extended(&mut self, id: u32, request: &str, data: Vec<u8>) -> Reply {
        match request {
            "posix-rename@openssh.com" => {
                let r: HardlinkExtension = decode_ext(id, data)?;
                self.rename(id, &r.oldpath, &r.newpath)
            }
            "hardlink@openssh.com" => {
                let r: HardlinkExtension = decode_ext(id, data)?;
                fs::hard_link(&r.oldpath, &r.newpath)
                    .map(|()| ok(id))
                    .map_err(|e| io_fail(id, &e))
            }
            "statvfs@openssh.com" => {
                let r: StatvfsExtension = decode_ext(id, data)?;
                let st = statvfs(&r.path).map_err(|e| io_fail(id, &e))?;
                extended_reply(id, &st)
            }
            "fsync@openssh.com" => {
                let r: FsyncExtension = decode_ext(id, data)?;
                match self.handles.get(&r.handle) {
                    Some(Handle::File { file, .. }) => file
                        .sync_all()
                        .map(|()| ok(id))
                        .map_err(|e| io_fail(id, &e)),
                    _ => Err(fail(id, StatusCode::Failure, "no such file handle")),
                }
            }
            "limits@openssh.com" => extended_reply(
                id,
                &LimitsExtension {
                    max_packet_len: u64::from(MAX_PACKET),
                    max_read_len: u64::from(MAX_IO),
                    max_write_len: u64::from(MAX_IO),
                    max_open_handles: MAX_HANDLES as u64,
                },
            ),
            "expand-path@openssh.com" => {
                let r: ExpandPathExtension = decode_ext(id, data)?;
                let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
                let p = if r.path == "~" {
                    home
                } else if let Some(rest) = r.path.strip_prefix("~/") {
                    format!("{}/{rest}", home.trim_end_matches('/'))
                } else {
                    r.path
                };
                Ok(name_reply(id, &real_path(&p)))
            }
            other => Err(fail(
                id,
                StatusCode::OpUnsupported,
                format!("unsupported extension {other}"),
            )),
        }
    }
}

/// The VERSION extensions as a map (for tests and docs).
pub fn extensions() -> BTreeMap<&'static str, &'static str> {
    EXTENSIONS.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn replies(input: Vec<u8>) -> (Vec<Packet>, Result<(), ServeError>) {
        let mut out = Vec::new();
        let r = serve(&input[..], &mut out, None);
        let mut b = &out[..];
        let mut ps = Vec::new();
        while b.len() >= 4 {
            let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            ps.push(Packet::try_from(&mut Bytes::copy_from_slice(&b[4..4 + n])).unwrap());
            b = &b[4 + n..];
        }
        (ps, r)
    }

    fn init() -> Vec<u8> {
        packet(&[1, 0, 0, 0, 3])
    }

    fn code(p: &Packet) -> (u32, StatusCode) {
        match p {
            Packet::Status(s) => (s.id, s.status_code),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn version_announces_the_openssh_extensions() {
        let (ps, r) = replies(init());
        assert!(r.is_ok());
        match &ps[0] {
            Packet::Version(v) => {
                assert_eq!(v.version, 3);
                for (k, _) in EXTENSIONS {
                    assert!(v.extensions.contains_key(k), "{k}");
                }
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn unknown_types_and_malformed_bodies_get_a_status_and_the_session_goes_on() {
        let mut input = init();
        input.extend(packet(&[99, 0, 0, 0, 5, 1, 2]));
        // OPEN id 6 whose filename length runs past the packet.
        input.extend(packet(&[3, 0, 0, 0, 6, 0xff, 0xff, 0xff, 0xf0, b'a']));
        // Then a valid REALPATH still works.
        input.extend(packet(&[16, 0, 0, 0, 7, 0, 0, 0, 1, b'/']));
        let (ps, r) = replies(input);
        assert!(r.is_ok());
        assert_eq!(code(&ps[1]), (5, StatusCode::OpUnsupported));
        assert_eq!(code(&ps[2]), (6, StatusCode::BadMessage));
        assert!(matches!(&ps[3], Packet::Name(n) if n.id == 7 && n.files[0].filename == "/"));
    }

    #[test]
    fn an_oversized_length_is_refused_without_allocating_it() {
        let mut input = init();
        input.extend_from_slice(&u32::MAX.to_be_bytes());
        let (ps, r) = replies(input);
        assert_eq!(code(&ps[1]), (0, StatusCode::BadMessage));
        assert!(matches!(r, Err(ServeError::Protocol(_))));
    }

    #[test]
    fn requests_before_init_are_refused() {
        let (ps, _) = replies(packet(&[16, 0, 0, 0, 7, 0, 0, 0, 1, b'/']));
        assert_eq!(code(&ps[0]), (7, StatusCode::Failure));
    }

    #[test]
    fn ls_times_read_like_ls() {
        assert_eq!(ls_time(0, 10), "Jan  1 00:00");
        assert_eq!(ls_time(951_782_400, 2_000_000_000), "Feb 29  2000");
    }

    #[test]
    fn lexical_paths_never_climb_above_root() {
        assert_eq!(lexical_absolute("/../../etc"), PathBuf::from("/etc"));
        assert_eq!(lexical_absolute("/a/./b/../c"), PathBuf::from("/a/c"));
    }
}
