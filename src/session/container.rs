//! What we learn about an instance from the host side, before entering it.
//!
//! nsenter and runc exec taught that everything needed inside must be read
//! (or opened) while still in the host's namespaces, from the pinned init
//! process: its credentials and capability sets, its cgroups, and files of
//! its root filesystem. Files inside the container belong to the tenant, so
//! they are opened with `openat2(RESOLVE_IN_ROOT)` relative to the pinned
//! root: a symlink `/etc/passwd -> /host/etc/shadow` resolves inside the
//! container, never on the host. And they are opened `O_PATH` first and
//! reopened for reading only once fstat says they are regular files: host
//! root never runs a device's open routine (a watchdog, a tape) planted in
//! an image, nor blocks on or wakes a FIFO. Parsers here are pure and
//! size-capped.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

const MAX_PASSWD_BYTES: u64 = 4 * 1024 * 1024;
const MAX_ENV_BYTES: u64 = 1024 * 1024;

/// Credentials and privilege limits of the container's init process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessCreds {
    /// Real uid/gid as the host sees them.
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// The init's file-creation mask (kernels since 4.7 report it).
    pub umask: u32,
}

/// Parses `/proc/PID/status`. Missing lines mean the kernel is not what we
/// expect: None (fail closed) rather than guessing privileges.
pub fn parse_status(text: &str) -> Option<ProcessCreds> {
    let mut c = ProcessCreds {
        umask: 0o022,
        ..ProcessCreds::default()
    };
    let mut seen = 0u32;
    for line in text.lines() {
        let Some((key, val)) = line.split_once(':') else {
            continue;
        };
        let val = val.trim();
        let first = || {
            val.split_ascii_whitespace()
                .next()
                .and_then(|v| v.parse::<u32>().ok())
        };
        let hex = || u64::from_str_radix(val, 16).ok();
        match key {
            "Uid" => (c.uid, seen) = (first()?, seen | 1),
            "Gid" => (c.gid, seen) = (first()?, seen | 2),
            "Groups" => {
                c.groups = val
                    .split_ascii_whitespace()
                    .map(|g| g.parse().ok())
                    .collect::<Option<Vec<u32>>>()?;
                seen |= 4;
            }
            "CapInh" => (c.cap_inh, seen) = (hex()?, seen | 8),
            "CapPrm" => (c.cap_prm, seen) = (hex()?, seen | 16),
            "CapEff" => (c.cap_eff, seen) = (hex()?, seen | 32),
            "CapBnd" => (c.cap_bnd, seen) = (hex()?, seen | 64),
            "CapAmb" => (c.cap_amb, seen) = (hex()?, seen | 128),
            "NoNewPrivs" => (c.no_new_privs, seen) = (val == "1", seen | 256),
            "Umask" => c.umask = u32::from_str_radix(val, 8).ok().filter(|m| *m <= 0o777)?,
            _ => {}
        }
    }
    (seen == 511).then_some(c)
}

/// One `inside outside count` line set of a uid_map/gid_map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap(Vec<(u32, u32, u32)>);

impl IdMap {
    /// Parses uid_map/gid_map text. A range running past the 32-bit id
    /// space on either side is no map the kernel would write: the whole map
    /// is refused (None) rather than wrapped into other ids.
    pub fn parse(text: &str) -> Option<IdMap> {
        const ID_SPACE: u64 = 1 << 32;
        let mut v = Vec::new();
        for line in text.lines() {
            let mut it = line.split_ascii_whitespace().map(|x| x.parse::<u32>().ok());
            let (Some(Some(inside)), Some(Some(outside)), Some(Some(count))) =
                (it.next(), it.next(), it.next())
            else {
                return None;
            };
            if u64::from(inside) + u64::from(count) > ID_SPACE
                || u64::from(outside) + u64::from(count) > ID_SPACE
            {
                return None;
            }
            v.push((inside, outside, count));
        }
        Some(IdMap(v))
    }

    /// Host id → id inside the namespace.
    pub fn to_inside(&self, host: u32) -> Option<u32> {
        self.0.iter().find_map(|&(inside, outside, count)| {
            (host >= outside && u64::from(host) < u64::from(outside) + u64::from(count))
                .then(|| inside.checked_add(host - outside))
                .flatten()
        })
    }
}

/// A line of the container's `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// Finds `uid` in passwd text. Lines that do not parse are skipped; fields
/// with control characters are refused (they end up in the environment).
pub fn passwd_lookup(text: &[u8], uid: u32) -> Option<PasswdEntry> {
    for line in text.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if line.starts_with('#') || line.chars().any(|c| c.is_control()) {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 {
            continue;
        }
        let (Ok(u), Ok(g)) = (f[2].parse::<u32>(), f[3].parse::<u32>()) else {
            continue;
        };
        if u != uid || f[0].is_empty() {
            continue;
        }
        return Some(PasswdEntry {
            name: f[0].to_owned(),
            uid: u,
            gid: g,
            home: f[5].to_owned(),
            shell: f[6].to_owned(),
        });
    }
    None
}

/// One cgroup the init process is in, as a host path to its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    /// Controllers of the hierarchy ("memory", "pids", "" for v2, …).
    pub controllers: String,
    pub dir: PathBuf,
}

impl CgroupDir {
    /// Charging the session's memory to the instance is the point of
    /// joining, and on cgroup v1 the `devices` controller is what keeps the
    /// session from opening device nodes the instance may not (v2 does that
    /// with a BPF program attached to the unified cgroup): these must
    /// succeed, the others are best effort.
    pub fn is_required(&self) -> bool {
        self.controllers.is_empty() || v1_required(&self.controllers)
    }
}

/// Whether a v1 hierarchy with these controllers must be joined.
fn v1_required(controllers: &str) -> bool {
    controllers
        .split(',')
        .any(|c| c == "memory" || c == "pids" || c == "devices")
}

/// Maps `/proc/PID/cgroup` lines to directories using the mount table of
/// the reader (`/proc/self/mountinfo`): v1 hierarchies by controller list,
/// v2 (`0::/path`) by the cgroup2 mount. Lines that cannot be mapped are
/// left out (see [`cgroup_dirs_checked`] for when that is not allowed).
pub fn cgroup_dirs(proc_cgroup: &str, mountinfo: &str) -> Vec<CgroupDir> {
    map_cgroups(proc_cgroup, mountinfo).0
}

/// Like [`cgroup_dirs`], but a v1 hierarchy the session must join
/// ([`CgroupDir::is_required`]: memory, pids, devices) that cannot be
/// mapped to a directory is an error naming its controllers: leaving it
/// out would start the session outside the instance's limits. (The v2
/// line is printed even where no cgroup2 is mounted, as on v1-only hosts;
/// there, nothing is lost by leaving it out.)
pub fn cgroup_dirs_checked(proc_cgroup: &str, mountinfo: &str) -> Result<Vec<CgroupDir>, String> {
    let (dirs, unmapped) = map_cgroups(proc_cgroup, mountinfo);
    match unmapped.into_iter().find(|c| v1_required(c)) {
        Some(c) => Err(c),
        None => Ok(dirs),
    }
}

/// The mapped directories, and the controller lists of lines that could
/// not be mapped.
fn map_cgroups(proc_cgroup: &str, mountinfo: &str) -> (Vec<CgroupDir>, Vec<String>) {
    let mounts = parse_cgroup_mounts(mountinfo);
    let mut out = Vec::new();
    let mut unmapped = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        match map_cgroup_line(&mounts, id, ctrls, path) {
            Some(dir) => out.push(CgroupDir {
                controllers: ctrls.to_owned(),
                dir,
            }),
            None => unmapped.push(ctrls.to_owned()),
        }
    }
    (out, unmapped)
}

fn map_cgroup_line(mounts: &[CgroupMount], id: &str, ctrls: &str, path: &str) -> Option<PathBuf> {
    if path.contains("/../") || path.ends_with("/..") || !path.starts_with('/') {
        return None;
    }
    let mount = if id == "0" && ctrls.is_empty() {
        mounts.iter().find(|m| m.v2)
    } else {
        let want: Vec<&str> = ctrls.split(',').collect();
        mounts.iter().find(|m| {
            !m.v2 && {
                let have: Vec<&str> = m.options.split(',').collect();
                want.iter().all(|w| have.contains(w))
            }
        })
    }?;
    // The mount may expose only a subtree (its root field).
    let rel = if mount.root == "/" {
        Some(path)
    } else {
        path.strip_prefix(mount.root.as_str())
            .filter(|r| r.is_empty() || r.starts_with('/'))
    }?;
    Some(Path::new(&mount.mount_point).join(rel.trim_start_matches('/')))
}

struct CgroupMount {
    root: String,
    mount_point: String,
    options: String,
    v2: bool,
}

fn parse_cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut v = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let fstype = post[0];
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        v.push(CgroupMount {
            root: unescape_mount(pre[3]),
            mount_point: unescape_mount(pre[4]),
            options: post[2].to_owned(),
            v2: fstype == "cgroup2",
        });
    }
    v
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// `RESOLVE_*` flags of openat2(2).
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// What a container file turned out to be when it is not a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
    Symlink,
    Unknown,
}

impl FileKind {
    fn of(mode: libc::mode_t) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFLNK => FileKind::Symlink,
            _ => FileKind::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Directory => "a directory",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Fifo => "a FIFO",
            FileKind::Socket => "a socket",
            FileKind::Symlink => "a symbolic link",
            FileKind::Unknown => "not a file",
        }
    }
}

/// A path that exists but is not a regular file. It was never opened for
/// reading (only as an `O_PATH` handle, which cannot act on a device or
/// wake a FIFO's writer). Where the file is one the session needs, the
/// caller refuses the session and tells the admin: the image is hostile or
/// broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRegular {
    pub path: String,
    pub kind: FileKind,
    /// A path inside the instance (else a host path).
    pub in_instance: bool,
}

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = if self.in_instance {
            " in the instance"
        } else {
            ""
        };
        write!(
            f,
            "{}{place} is not a regular file (it is {}); porthole does not open it",
            self.path,
            self.kind.as_str()
        )
    }
}

impl std::error::Error for NotRegular {}

/// Why a file could not be read. Says how the caller reacts.
#[derive(Debug)]
pub enum FileError {
    /// Missing, or unreadable (a symlink loop, a lease held on it…): the
    /// caller goes on as if the file did not exist.
    Unavailable(std::io::Error),
    /// Larger than the caller's cap: treated like unavailable.
    TooLarge,
    /// Not a regular file, and never opened: refuse (see [`NotRegular`]).
    NotRegular(NotRegular),
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Unavailable(e) => e.fmt(f),
            FileError::TooLarge => f.write_str("file too large"),
            FileError::NotRegular(n) => n.fmt(f),
        }
    }
}

impl std::error::Error for FileError {}

/// openat2(2) of `path` relative to `dirfd` with `how.flags = flags`.
fn openat2(
    dirfd: RawFd,
    path: impl AsRef<std::ffi::OsStr>,
    flags: i32,
    resolve: u64,
) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = CString::new(path.as_ref().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: openat2 reads `how` (size given) and the NUL-terminated path;
    // both outlive the call. The returned fd is owned by the OwnedFd below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            cpath.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat2 and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens `path` inside the tree of `root` (a directory fd) as an `O_PATH`
/// handle with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, so absolute
/// symlinks and `..` stay inside the container. `flags` may add
/// `O_DIRECTORY` or `O_NOFOLLOW`; the handle is always `O_PATH`, which
/// cannot read, write or act on what it names (a device's open routine
/// never runs, a FIFO's writer is not woken): fstat it, or read a regular
/// file through [`read_in_root`].
pub fn open_in_root(root: &OwnedFd, path: &str, flags: i32) -> std::io::Result<File> {
    let flags = (flags & (libc::O_DIRECTORY | libc::O_NOFOLLOW)) | libc::O_PATH;
    let fd = openat2(
        root.as_raw_fd(),
        path,
        flags,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )?;
    Ok(File::from(fd))
}

/// Opens a regular file for reading without ever opening anything else:
/// `O_PATH` first, fstat, and only a regular file is reopened (through
/// `/proc/self/fd`, which reopens exactly the inode already checked, so a
/// rename in between cannot swap in a device). `O_NONBLOCK` on the reopen
/// keeps a write lease a tenant holds on the file from stalling us.
fn open_regular(handle: OwnedFd, shown: &str, in_instance: bool) -> Result<File, FileError> {
    use std::os::unix::fs::MetadataExt;
    let handle = File::from(handle);
    let meta = handle.metadata().map_err(FileError::Unavailable)?;
    let mode = meta.mode() as libc::mode_t;
    if mode & libc::S_IFMT != libc::S_IFREG {
        return Err(FileError::NotRegular(NotRegular {
            path: shown.to_owned(),
            kind: FileKind::of(mode),
            in_instance,
        }));
    }
    let reopened = openat2(
        libc::AT_FDCWD,
        format!("/proc/self/fd/{}", handle.as_raw_fd()),
        libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK,
        0,
    )
    .map(File::from)
    .map_err(FileError::Unavailable)?;
    let again = reopened.metadata().map_err(FileError::Unavailable)?;
    if again.dev() != meta.dev() || again.ino() != meta.ino() || !again.is_file() {
        // Cannot happen through the magic link; refuse rather than trust it.
        return Err(FileError::Unavailable(std::io::Error::from_raw_os_error(
            libc::ESTALE,
        )));
    }
    Ok(reopened)
}

/// Reads a regular file inside the container, at most `max` bytes. Any
/// other kind of file is never opened ([`FileError::NotRegular`]).
pub fn read_in_root(root: &OwnedFd, path: &str, max: u64) -> Result<Vec<u8>, FileError> {
    let handle = open_in_root(root, path, 0).map_err(FileError::Unavailable)?;
    let f = open_regular(handle.into(), path, true)?;
    read_capped(f, max)
}

/// Opens a regular host file for reading with the same never-open-anything-
/// else rule. A symlink as the last component is not followed: it comes
/// back as [`FileError::NotRegular`] of kind [`FileKind::Symlink`].
pub fn open_host_regular(path: &Path) -> Result<File, FileError> {
    let handle = openat2(libc::AT_FDCWD, path, libc::O_PATH | libc::O_NOFOLLOW, 0)
        .map_err(FileError::Unavailable)?;
    open_regular(handle, &path.display().to_string(), false)
}

/// Reads a regular host file (see [`open_host_regular`]), at most `max`
/// bytes.
pub fn read_host_file(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    read_capped(open_host_regular(path)?, max)
}

/// Opens the regular file `name` in the directory `dir` (no symlinks at
/// all) for reading; its metadata comes with it for ownership checks.
pub fn open_regular_at(dir: &OwnedFd, name: &str) -> Result<File, FileError> {
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    let handle = openat2(
        dir.as_raw_fd(),
        name,
        libc::O_PATH | libc::O_NOFOLLOW,
        RESOLVE_NO_SYMLINKS,
    )
    .map_err(FileError::Unavailable)?;
    open_regular(handle, name, false)
}

/// Reads at most `max` bytes; more is an error, not a silent truncation.
fn read_capped(f: File, max: u64) -> Result<Vec<u8>, FileError> {
    let mut buf = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(FileError::Unavailable)?;
    if buf.len() as u64 > max {
        return Err(FileError::TooLarge);
    }
    Ok(buf)
}

/// The container user's passwd entry, read through the pinned root.
/// `Ok(None)` when there is no usable passwd file or no entry for `uid`
/// (the session goes on without one); `Err` when `/etc/passwd` is a
/// device, FIFO or socket, which is refused.
pub fn container_user(root: &OwnedFd, uid: u32) -> Result<Option<PasswdEntry>, NotRegular> {
    match read_in_root(root, "/etc/passwd", MAX_PASSWD_BYTES) {
        Ok(text) => Ok(passwd_lookup(&text, uid)),
        Err(FileError::NotRegular(n)) => Err(n),
        Err(FileError::Unavailable(_) | FileError::TooLarge) => Ok(None),
    }
}

/// Whether `shell` names an executable regular file inside the container
/// and is not one of the "no login" programs.
pub fn usable_shell(root: &OwnedFd, shell: &str) -> bool {
    if !shell.starts_with('/') {
        return false;
    }
    let base = shell.rsplit('/').next().unwrap_or("");
    if matches!(base, "nologin" | "false" | "") {
        return false;
    }
    match open_in_root(root, shell, libc::O_PATH) {
        Ok(f) => f
            .metadata()
            .map(|m| m.is_file() && exec_bits(&m))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn exec_bits(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

/// Environment entries (`KEY=value`) from the OCI bundle's config.json
/// `process.env`. Entries with NULs or without `=` are dropped.
pub fn env_from_oci_config(bytes: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let env = v.get("process")?.get("env")?.as_array()?;
    Some(
        env.iter()
            .filter_map(|e| e.as_str())
            .filter(|e| valid_env_entry(e))
            .map(str::to_owned)
            .collect(),
    )
}

/// Environment entries from a NUL-separated `/proc/PID/environ`.
pub fn env_from_environ(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&b| b == 0)
        .filter_map(|e| std::str::from_utf8(e).ok())
        .filter(|e| valid_env_entry(e))
        .map(str::to_owned)
        .collect()
}

fn valid_env_entry(e: &str) -> bool {
    match e.split_once('=') {
        Some((k, _)) => !k.is_empty() && !e.contains('\0'),
        None => false,
    }
}

/// The container's environment: its bundle's OCI config when there is a
/// trusted one (what the platform configured; read once per session by
/// `confine::read_trusted_config`), else what its init process holds.
pub fn container_env(bundle_config: Option<&[u8]>, pid: i32) -> Vec<String> {
    if let Some(env) = bundle_config.and_then(env_from_oci_config) {
        return env;
    }
    read_host_file(Path::new(&format!("/proc/{pid}/environ")), MAX_ENV_BYTES)
        .map(|b| env_from_environ(&b))
        .unwrap_or_default()
}

/// TERM from the client, only when it is a plausible terminfo name.
pub fn validated_term(term: Option<&str>) -> Option<String> {
    let t = term?;
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    ok.then(|| t.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsleep\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n\
Groups:\t10 1000 \nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
CapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";

    #[test]
    fn status_parsing() {
        let c = parse_status(STATUS).unwrap();
        assert_eq!((c.uid, c.gid), (1000, 1000));
        assert_eq!(c.groups, vec![10, 1000]);
        assert_eq!(c.cap_bnd, 0xa80425fb);
        assert!(c.no_new_privs);
        assert!(
            parse_status("Uid:\t0\n").is_none(),
            "incomplete status must fail closed"
        );
        let me = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(parse_status(&me).is_some());
    }

    #[test]
    fn id_maps_translate() {
        let m = IdMap::parse("         0     100000      65536\n").unwrap();
        assert_eq!(m.to_inside(101000), Some(1000));
        assert_eq!(m.to_inside(5), None);
        let ident = IdMap::parse("0 0 4294967295").unwrap();
        assert_eq!(ident.to_inside(1000), Some(1000));
        assert!(IdMap::parse("0 x 1").is_none());
    }

    #[test]
    fn passwd_lookup_skips_garbage() {
        let text = b"# comment\nroot:x:0:0:root:/root:/bin/sh\nbroken\n\
evil:x:1000:1000::/home/ev\x1bil:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n";
        let e = passwd_lookup(text, 1000).unwrap();
        assert_eq!(e.name, "app");
        assert_eq!(e.home, "/home/app");
        assert_eq!(passwd_lookup(text, 0).unwrap().shell, "/bin/sh");
        assert!(passwd_lookup(text, 7).is_none());
        assert!(passwd_lookup(b"\xff\xfe:x:5:5::/:/bin/sh\n", 5).is_none());
    }

    #[test]
    fn cgroups_v1_and_v2() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
31 30 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
33 30 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let proc_cg = "4:memory:/a/t1\n2:cpu,cpuacct:/t1\n0::/t1\n9:name=systemd:/t1\n";
        let dirs = cgroup_dirs(proc_cg, mountinfo);
        assert_eq!(dirs.len(), 3);
        assert_eq!(dirs[0].dir, Path::new("/sys/fs/cgroup/memory/a/t1"));
        assert!(dirs[0].is_required());
        assert_eq!(dirs[1].dir, Path::new("/sys/fs/cgroup/cpu,cpuacct/t1"));
        assert!(!dirs[1].is_required());
        assert_eq!(dirs[2].dir, Path::new("/sys/fs/cgroup/unified/t1"));
        assert!(dirs[2].is_required());
        assert!(cgroup_dirs("4:memory:/../../etc\n", mountinfo).is_empty());
        // A mount exposing a subtree.
        let sub = "31 30 0:27 /a /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let d = cgroup_dirs("4:memory:/a/t1\n", sub);
        assert_eq!(d[0].dir, Path::new("/sys/fs/cgroup/memory/t1"));
    }

    #[test]
    fn environment_sources() {
        let cfg = br#"{"process":{"env":["PATH=/bin","DATABASE_URL=postgres://x","bad","=x"]}}"#;
        assert_eq!(
            env_from_oci_config(cfg).unwrap(),
            vec!["PATH=/bin", "DATABASE_URL=postgres://x"]
        );
        assert!(env_from_oci_config(b"{}").is_none());
        assert_eq!(env_from_environ(b"A=1\0B=2\0junk\0"), vec!["A=1", "B=2"]);
    }

    #[test]
    fn term_validation() {
        assert_eq!(
            validated_term(Some("xterm-256color")).as_deref(),
            Some("xterm-256color")
        );
        assert!(validated_term(Some("xterm\x1b]0;pwned\x07")).is_none());
        assert!(validated_term(Some("() { :; }; echo")).is_none());
        assert!(validated_term(Some("")).is_none());
        assert!(validated_term(None).is_none());
    }

    #[test]
    fn open_in_root_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "app:x:5:5::/h:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("etc/link")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", dir.path().join("etc/up"))
            .unwrap();
        let root: OwnedFd = File::open(dir.path()).unwrap().into();
        assert_eq!(container_user(&root, 5).unwrap().unwrap().name, "app");
        // Both symlinks resolve inside the temp root, where no /etc/hostname exists.
        assert!(read_in_root(&root, "/etc/link", 100).is_err());
        assert!(read_in_root(&root, "/etc/up", 100).is_err());
        assert!(!usable_shell(&root, "/bin/sh"));
        assert!(!usable_shell(&root, "/usr/sbin/nologin"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/busybox"), "").unwrap();
        std::fs::set_permissions(
            dir.path().join("bin/busybox"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("busybox", dir.path().join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", dir.path().join("bin/ash")).unwrap();
        std::fs::write(dir.path().join("bin/data"), "").unwrap();
        assert!(
            usable_shell(&root, "/bin/sh"),
            "relative symlink inside the root"
        );
        assert!(
            usable_shell(&root, "/bin/ash"),
            "absolute symlink resolved in the root"
        );
        assert!(!usable_shell(&root, "/bin/data"), "not executable");
        assert!(!usable_shell(&root, "bin/sh"), "relative path");
    }

    #[test]
    fn special_files_are_never_opened() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let passwd = dir.path().join("etc/passwd");
        nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let root: OwnedFd = File::open(dir.path()).unwrap().into();
        // A FIFO: refused without blocking (and without opening it: an
        // open for reading would complete this non-blocking writer's open).
        let expected = NotRegular {
            path: "/etc/passwd".into(),
            kind: FileKind::Fifo,
            in_instance: true,
        };
        assert_eq!(container_user(&root, 5), Err(expected.clone()));
        let writer = std::fs::File::options()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&passwd);
        assert_eq!(
            writer.unwrap_err().raw_os_error(),
            Some(libc::ENXIO),
            "no reader may hold the FIFO open"
        );
        assert_eq!(
            expected.to_string(),
            "/etc/passwd in the instance is not a regular file (it is a FIFO); porthole does not open it"
        );
        // A directory, and a symlink to the FIFO (resolved in the root).
        assert!(matches!(
            read_in_root(&root, "/etc", 10),
            Err(FileError::NotRegular(NotRegular {
                kind: FileKind::Directory,
                ..
            }))
        ));
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/link")).unwrap();
        assert!(matches!(
            read_in_root(&root, "/etc/link", 10),
            Err(FileError::NotRegular(NotRegular {
                kind: FileKind::Fifo,
                ..
            }))
        ));
        // A character device (needs CAP_MKNOD): /dev/null's numbers.
        let dev = dir.path().join("etc/dev");
        if nix::sys::stat::mknod(
            &dev,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            nix::sys::stat::makedev(1, 3),
        )
        .is_ok()
        {
            assert!(matches!(
                read_in_root(&root, "/etc/dev", 10),
                Err(FileError::NotRegular(NotRegular {
                    kind: FileKind::CharDevice,
                    ..
                }))
            ));
        }
        // Host files read as root follow the same rule.
        assert!(matches!(
            read_host_file(&passwd, 10),
            Err(FileError::NotRegular(NotRegular {
                kind: FileKind::Fifo,
                ..
            }))
        ));
        // Missing and oversized are "unavailable", not refusals.
        assert!(container_user(&root, 5).is_err());
        std::fs::remove_file(&passwd).unwrap();
        assert_eq!(container_user(&root, 5), Ok(None));
        std::fs::write(&passwd, "app:x:5:5::/h:/bin/sh\n").unwrap();
        assert!(matches!(
            read_in_root(&root, "/etc/passwd", 3),
            Err(FileError::TooLarge)
        ));
        assert_eq!(read_in_root(&root, "/etc/passwd", 100).unwrap().len(), 22);
        // open_in_root hands out O_PATH handles only, whatever is asked.
        let f = open_in_root(&root, "/etc/passwd", libc::O_RDWR).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            (&f).read(&mut buf).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }

    #[test]
    fn required_v1_cgroups_must_be_mounted() {
        let mountinfo = "\
31 30 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
32 30 0:28 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices\n";
        let proc_cg = "5:devices:/t1\n4:memory:/t1\n3:cpu:/t1\n0::/t1\n";
        // cpu (best effort) and v2 (not mounted on this v1 host) may be left out.
        let dirs = cgroup_dirs_checked(proc_cg, mountinfo).unwrap();
        assert_eq!(dirs.len(), 2);
        assert!(dirs[0].is_required(), "devices is required on v1");
        assert_eq!(dirs[0].dir, Path::new("/sys/fs/cgroup/devices/t1"));
        // The devices hierarchy not mounted: an error naming it.
        let no_devices = "31 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            cgroup_dirs_checked(proc_cg, no_devices),
            Err("devices".to_string())
        );
        assert_eq!(cgroup_dirs(proc_cg, no_devices).len(), 1);
        // A path that cannot be mapped (escaping the mount) is refused too.
        assert_eq!(
            cgroup_dirs_checked("4:memory:/../x\n", mountinfo),
            Err("memory".to_string())
        );
    }

    /// Fuzzing finding (fuzz/regressions/container): a uid_map line whose
    /// range runs past 2^32 on the inside made `to_inside` overflow (a panic
    /// in debug builds, a wrapped id such as 0 in release builds).
    #[test]
    fn idmap_refuses_ranges_past_the_id_space() {
        assert_eq!(IdMap::parse("4294967295 0 2\n"), None, "inside + count");
        assert_eq!(IdMap::parse("0 4294967295 5\n"), None, "outside + count");
        assert_eq!(
            IdMap::parse("0 100000 65536\n4294901760 200000 65537\n"),
            None,
            "one bad line refuses the map"
        );
        let edge = IdMap::parse("4294967294 10 2\n").unwrap();
        assert_eq!(edge.to_inside(11), Some(u32::MAX));
        assert_eq!(edge.to_inside(12), None);
    }
}
