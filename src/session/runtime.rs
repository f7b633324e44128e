//! Finding a service's running instances in OCI runtime state.
//!
//! runc, and containerd and Docker which drive runc, keep one
//! `<root>/<container-id>/state.json` per container. We read those files
//! instead of running `runc list`: no child process, no PATH, and it works
//! for every root the admin configured. Everything in them is treated as
//! hostile (tenants' deploys choose annotations and ids), so a container
//! counts only when its init process is alive and is the same process the
//! state describes (start time), and names are checked against our grammar.
//!
//! Two more rules keep one tenant from receiving another's sessions. The
//! state is believed only where root alone could have written it: the
//! configured root, each container directory and each `state.json` must be
//! root-owned and not group/other-writable (opened without following
//! symlinks, checked with fstat); anything else is reported as untrusted
//! and skipped. And an instance claimed by more than one container (by
//! annotation, by the `<service>-<slug>` id, or both) is never entered:
//! which one is genuine cannot be told from here, so it is refused and
//! reported, never settled by sort order.

use crate::names::{is_instance_slug, ServiceId};
use crate::session::container::{open_regular_at, FileError};
use serde::Deserialize;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MAX_STATE_BYTES: u64 = 8 * 1024 * 1024;
const MAX_ID_LEN: usize = 1024;

/// A running instance of a service on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The runtime's container id.
    pub container_id: String,
    pub service: ServiceId,
    pub slug: String,
    /// Host pid of the container's init process.
    pub init_pid: i32,
    /// Its start time in clock ticks after boot (field 22 of /proc/PID/stat).
    pub init_start: u64,
    /// The OCI bundle directory, when the runtime recorded it.
    pub bundle: Option<PathBuf>,
    /// Where the bundle's confinement (seccomp profile) is read from: the
    /// runtime's own bundle and the rootfs its config.json must name. For
    /// runc and containerd the rootfs is inside the bundle; for Docker it
    /// is elsewhere, so the binding is checked against the config itself.
    pub confinement_source: Option<(PathBuf, PathBuf)>,
    /// The runtime root the state was found in.
    pub runtime_root: PathBuf,
    /// How the container claims the instance.
    pub claim: Claim,
    /// It carries the temporary annotation ([`TEMPORARY_ANNOTATION`]): a
    /// temporary instance, never a random choice (src/session/temporary.rs).
    pub temporary: bool,
}

/// The annotation that marks a temporary instance (any value; porthole's
/// local provider writes `local`). Such an instance belongs to the one
/// session it was started for: it is never chosen at random.
pub const TEMPORARY_ANNOTATION: &str = "io.porthole.temporary";

/// How a container says which instance it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The service annotation (slug from the instance annotation or id).
    Annotation,
    /// Only the `<service-id>-<slug>` container-id convention.
    ContainerId,
}

impl Claim {
    pub fn as_str(self) -> &'static str {
        match self {
            Claim::Annotation => "annotation",
            Claim::ContainerId => "container id",
        }
    }
}

impl Instance {
    /// `srv-abc123-d4e5f`.
    pub fn name(&self) -> String {
        self.service.instance_name(&self.slug)
    }
}

/// What a resolve failed on; every variant is a message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// No running instance of the service on this host.
    NoneRunning { service: String },
    /// The asked slug is not running; lists those that are.
    SlugNotRunning {
        service: String,
        slug: String,
        running: Vec<String>,
    },
    /// The slug exists but belongs to a different service.
    OtherService { service: String, slug: String },
    /// No configured runtime root could be read (admin problem).
    NoRuntime { roots: Vec<PathBuf> },
    /// Runtime roots exist but none passed the ownership checks (admin
    /// problem; the details went to the admin as `runtime.untrusted`).
    UntrustedRuntime { untrusted: Vec<Untrusted> },
    /// More than one container claims the instance(s): refuse, the admin
    /// must settle it (reported as `instance.conflict`).
    Conflicted { conflicts: Vec<Conflict> },
    /// The random source failed (should not happen; fail closed).
    Random(String),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::NoneRunning { service } => {
                write!(f, "{service} has no running instance on this host")
            }
            ResolveError::SlugNotRunning {
                service,
                slug,
                running,
            } => {
                write!(f, "instance {service}-{slug} is not running")?;
                if running.is_empty() {
                    write!(f, "; {service} has no running instance on this host")
                } else {
                    write!(f, "; running instances: {}", running.join(", "))
                }
            }
            ResolveError::OtherService { service, slug } => {
                write!(f, "{slug} is not an instance of {service}")
            }
            ResolveError::NoRuntime { roots } => {
                let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
                write!(
                    f,
                    "no container runtime state found (looked in {})",
                    list.join(", ")
                )
            }
            ResolveError::UntrustedRuntime { untrusted } => {
                let list: Vec<String> = untrusted
                    .iter()
                    .map(|u| u.path.display().to_string())
                    .collect();
                write!(
                    f,
                    "the container runtime state on this host ({}) failed its ownership checks; the platform admins have been notified",
                    list.join(", ")
                )
            }
            ResolveError::Conflicted { conflicts } => {
                let all: Vec<String> = conflicts.iter().map(Conflict::to_string).collect();
                f.write_str(&all.join("; "))?;
                f.write_str(" — ask the platform admins")
            }
            ResolveError::Random(e) => write!(f, "cannot pick an instance: {e}"),
        }
    }
}

impl std::error::Error for ResolveError {}

#[derive(Deserialize)]
struct RawState {
    id: String,
    init_process_pid: i32,
    init_process_start: u64,
    #[serde(default)]
    config: RawConfig,
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    labels: Vec<String>,
    /// Absolute path of the container's root filesystem.
    #[serde(default)]
    rootfs: Option<String>,
}

/// A container as the runtime describes it, before matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub init_pid: i32,
    pub init_start: u64,
    pub labels: Vec<(String, String)>,
    /// `config.rootfs`: where the runtime mounted the root filesystem from.
    pub rootfs: Option<PathBuf>,
}

impl ContainerState {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The bundle directory, when it can be trusted: runc appends its own
    /// `bundle=<dir>` after the annotations (which a tenant may set, e.g.
    /// through Kubernetes), so only the LAST such label is the runtime's,
    /// and it must contain the container's rootfs. Otherwise None: the
    /// environment is then read from the init process instead of from a
    /// config.json the tenant could point at (another container's, a host
    /// file).
    pub fn bundle(&self) -> Option<PathBuf> {
        let (bundle, rootfs) = self.runtime_bundle()?;
        let rootfs = &rootfs;
        let inside = rootfs.starts_with(&bundle)
            && rootfs != &bundle
            && !rootfs
                .components()
                .chain(bundle.components())
                .any(|c| matches!(c, std::path::Component::ParentDir));
        inside.then_some(bundle)
    }

    /// The runtime's own bundle label (the last `bundle=`, absolute) and
    /// the rootfs of the state, without requiring one inside the other.
    pub fn runtime_bundle(&self) -> Option<(PathBuf, PathBuf)> {
        let bundle = self
            .labels
            .iter()
            .rev()
            .find(|(k, _)| k == "bundle")
            .map(|(_, v)| PathBuf::from(v))
            .filter(|p| p.is_absolute())?;
        let rootfs = self.rootfs.clone()?;
        Some((bundle, rootfs))
    }
}

/// Parses one `state.json` (runc's libcontainer format). Annotations live in
/// `config.labels` as `key=value`, next to `bundle=<dir>`.
pub fn parse_state(bytes: &[u8]) -> Option<ContainerState> {
    let raw: RawState = serde_json::from_slice(bytes).ok()?;
    if raw.init_process_pid <= 1 || !valid_container_id(&raw.id) {
        return None;
    }
    let labels = raw
        .config
        .labels
        .into_iter()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    Some(ContainerState {
        id: raw.id,
        init_pid: raw.init_process_pid,
        init_start: raw.init_process_start,
        labels,
        rootfs: raw
            .config
            .rootfs
            .map(PathBuf::from)
            .filter(|p| p.is_absolute()),
    })
}

fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-+".contains(&b))
}

/// Which service and slug a container belongs to, if any: annotations
/// first, then the `<service-id>-<slug>` container-id convention.
pub fn classify(
    c: &ContainerState,
    service_key: &str,
    instance_key: &str,
) -> Option<(ServiceId, String)> {
    if let Some(svc) = c.label(service_key) {
        let service = ServiceId::parse(svc)?;
        let slug = match c.label(instance_key) {
            Some(s) if is_instance_slug(s) => s.to_owned(),
            Some(_) => return None,
            None => {
                // Annotated service without a slug: the id may still carry it.
                let rest = c.id.strip_prefix(service.as_str())?.strip_prefix('-')?;
                if !is_instance_slug(rest) {
                    return None;
                }
                rest.to_owned()
            }
        };
        return Some((service, slug));
    }
    let (svc, slug) = c.id.rsplit_once('-')?;
    let service = ServiceId::parse(svc)?;
    is_instance_slug(slug).then(|| (service, slug.to_owned()))
}

/// Start time (clock ticks) of `pid` when it is alive and not a zombie.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_start(&stat)
}

/// Field 22 (starttime) of a /proc/PID/stat line; None for zombies.
pub fn parse_stat_start(stat: &str) -> Option<u64> {
    // The command name may contain spaces and ')': split after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // After the state come fields 4..; starttime is field 22 → index 18 here.
    fields.nth(18)?.parse().ok()
}

/// Why a runtime directory or state file with this owner and mode cannot
/// be believed, or None when only root could have written it.
pub fn untrusted_reason(uid: u32, mode: u32, want_dir: bool) -> Option<String> {
    let fmt = mode & libc::S_IFMT;
    if want_dir && fmt != libc::S_IFDIR {
        return Some("is not a directory".into());
    }
    if !want_dir && fmt != libc::S_IFREG {
        return Some("is not a regular file".into());
    }
    if uid != 0 {
        return Some(format!("is owned by uid {uid}, not root"));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "is writable by group or others (mode {:04o})",
            mode & 0o7777
        ));
    }
    None
}

/// A runtime root, container directory or state file that failed the
/// ownership checks; its containers were ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    pub path: PathBuf,
    pub why: String,
}

/// Two or more containers claiming one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub service: ServiceId,
    pub slug: String,
    /// The claimants (container id, runtime root, how it claims), in the
    /// order they were found.
    pub claimants: Vec<(String, PathBuf, Claim)>,
}

impl Conflict {
    pub fn name(&self) -> String {
        self.service.instance_name(&self.slug)
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.claimants.iter().map(|c| c.0.as_str()).collect();
        let count = match ids.len() {
            2 => "two".to_owned(),
            3 => "three".to_owned(),
            n => n.to_string(),
        };
        write!(
            f,
            "instance {} is claimed by {count} containers ({}); refusing to choose",
            self.name(),
            ids.join(", ")
        )
    }
}

/// Every (service, slug) claimed by more than one container. Pure.
pub fn conflicts(all: &[Instance]) -> Vec<Conflict> {
    let mut out: Vec<Conflict> = Vec::new();
    for (n, i) in all.iter().enumerate() {
        let key = (&i.service, i.slug.as_str());
        if all[..n]
            .iter()
            .any(|e| (&e.service, e.slug.as_str()) == key)
        {
            continue; // already counted with its first claimant
        }
        let claimants: Vec<(String, PathBuf, Claim)> = all[n..]
            .iter()
            .filter(|e| (&e.service, e.slug.as_str()) == key)
            .map(|e| (e.container_id.clone(), e.runtime_root.clone(), e.claim))
            .collect();
        if claimants.len() > 1 {
            out.push(Conflict {
                service: i.service.clone(),
                slug: i.slug.clone(),
                claimants,
            });
        }
    }
    out
}

/// What a scan of the runtime roots found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Running containers of our grammar, sorted by slug then id. Two may
    /// claim the same instance: see [`conflicts`]; [`choose`] never picks
    /// one of those.
    pub instances: Vec<Instance>,
    /// What was skipped because root alone could not have written it.
    pub untrusted: Vec<Untrusted>,
}

/// openat(2) of a directory without following a symlink in its last
/// component (O_DIRECTORY: a device or FIFO is refused before any open).
fn open_dir_nofollow(at: RawFd, path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated and outlives the call.
    let fd = unsafe {
        libc::openat(
            at,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd from openat, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A directory of the runtime state, opened and checked. `Ok(None)` when
/// it does not exist (or is a plain file in a root: not a container).
fn trusted_dir(at: RawFd, path: &Path, shown: &Path) -> Result<Option<OwnedFd>, Untrusted> {
    let untrusted = |why: String| Untrusted {
        path: shown.to_owned(),
        why,
    };
    let fd = match open_dir_nofollow(at, path) {
        Ok(fd) => fd,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                // O_DIRECTORY|O_NOFOLLOW on a symlink says ENOTDIR (or ELOOP).
                Some(libc::ENOTDIR) | Some(libc::ELOOP) if is_symlink_at(at, path) => {
                    Err(untrusted("is a symbolic link".into()))
                }
                Some(libc::ENOTDIR) => Ok(None),
                _ => Err(untrusted(format!("cannot be opened: {e}"))),
            };
        }
    };
    let meta = std::fs::File::from(
        fd.try_clone()
            .map_err(|e| untrusted(format!("cannot be opened: {e}")))?,
    )
    .metadata()
    .map_err(|e| untrusted(format!("cannot be examined: {e}")))?;
    match untrusted_reason(meta.uid(), meta.mode(), true) {
        Some(why) => Err(untrusted(why)),
        None => Ok(Some(fd)),
    }
}

/// Whether `path` (relative to `at`) is itself a symbolic link.
fn is_symlink_at(at: RawFd, path: &Path) -> bool {
    nix::sys::stat::fstatat(Some(at), path, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
        .unwrap_or(false)
}

/// One container's `state.json` read from its checked directory.
/// `Ok(None)` for a missing, unreadable or oversized file (a container
/// being created or deleted); `Err` when it is not root's.
fn read_state_file(dir: &OwnedFd, shown: &Path) -> Result<Option<Vec<u8>>, Untrusted> {
    let untrusted = |why: String| Untrusted {
        path: shown.to_owned(),
        why,
    };
    let f = match open_regular_at(dir, "state.json") {
        Ok(f) => f,
        Err(FileError::NotRegular(n)) => return Err(untrusted(format!("is {}", n.kind.as_str()))),
        Err(FileError::Unavailable(e)) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(untrusted("is a symbolic link".into()))
        }
        Err(_) => return Ok(None),
    };
    let meta = f
        .metadata()
        .map_err(|e| untrusted(format!("cannot be examined: {e}")))?;
    if let Some(why) = untrusted_reason(meta.uid(), meta.mode(), false) {
        return Err(untrusted(why));
    }
    if meta.len() > MAX_STATE_BYTES {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    if f.take(MAX_STATE_BYTES).read_to_end(&mut buf).is_err() {
        return Ok(None);
    }
    Ok(Some(buf))
}

/// Every running container of our grammar under the roots, and what was
/// skipped as untrusted. Unreadable or corrupt entries are skipped (one
/// broken container must not lock every service out); an error only when
/// no root at all could be listed.
pub fn running_instances(
    roots: &[PathBuf],
    service_key: &str,
    instance_key: &str,
) -> Result<Scan, ResolveError> {
    let mut scan = Scan::default();
    let mut any_root = false;
    for root in roots {
        let root_fd = match trusted_dir(libc::AT_FDCWD, root, root) {
            Ok(Some(fd)) => fd,
            Ok(None) if root.symlink_metadata().is_ok() => {
                scan.untrusted.push(Untrusted {
                    path: root.clone(),
                    why: "is not a directory".into(),
                });
                continue;
            }
            Ok(None) => continue,
            Err(u) => {
                scan.untrusted.push(u);
                continue;
            }
        };
        let Ok(listing) = root_fd.try_clone() else {
            continue;
        };
        let Ok(mut dir) = nix::dir::Dir::from(listing) else {
            continue;
        };
        any_root = true;
        let mut names: Vec<String> = dir
            .iter()
            .flatten()
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
            .filter(|n| valid_container_id(n))
            .collect();
        names.sort();
        for name in names {
            let shown = root.join(&name);
            let cdir = match trusted_dir(root_fd.as_raw_fd(), Path::new(&name), &shown) {
                Ok(Some(fd)) => fd,
                Ok(None) => continue,
                Err(u) => {
                    scan.untrusted.push(u);
                    continue;
                }
            };
            let bytes = match read_state_file(&cdir, &shown.join("state.json")) {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(u) => {
                    scan.untrusted.push(u);
                    continue;
                }
            };
            let Some(state) = parse_state(&bytes) else {
                continue;
            };
            if state.id != name {
                continue;
            }
            let Some((service, slug)) = classify(&state, service_key, instance_key) else {
                continue;
            };
            if process_start_time(state.init_pid) != Some(state.init_start) {
                continue;
            }
            let claim = if state.label(service_key).is_some() {
                Claim::Annotation
            } else {
                Claim::ContainerId
            };
            let bundle = state.bundle();
            let confinement_source = state.runtime_bundle();
            let temporary = state.label(TEMPORARY_ANNOTATION).is_some();
            scan.instances.push(Instance {
                container_id: state.id,
                service,
                slug,
                init_pid: state.init_pid,
                init_start: state.init_start,
                bundle,
                confinement_source,
                runtime_root: root.clone(),
                claim,
                temporary,
            });
        }
    }
    if !any_root {
        // Only roots can have been found untrusted when none was listed.
        return Err(if !scan.untrusted.is_empty() {
            ResolveError::UntrustedRuntime {
                untrusted: scan.untrusted,
            }
        } else {
            ResolveError::NoRuntime {
                roots: roots.to_vec(),
            }
        });
    }
    scan.instances.sort_by(|a, b| {
        a.slug
            .cmp(&b.slug)
            .then(a.container_id.cmp(&b.container_id))
    });
    Ok(scan)
}

/// Picks the instance for a login: the given slug, or a uniformly random
/// running instance of the service. An instance claimed by more than one
/// container is never picked: asked for by slug, it is refused
/// ([`ResolveError::Conflicted`]); at random, it is left out, and when
/// nothing else is left the login is refused the same way.
pub fn choose(
    all: Vec<Instance>,
    service: &ServiceId,
    slug: Option<&str>,
) -> Result<Instance, ResolveError> {
    let (mine, others): (Vec<Instance>, Vec<Instance>) =
        all.into_iter().partition(|i| &i.service == service);
    let conflicted = conflicts(&mine);
    let is_conflicted = |i: &Instance| conflicted.iter().any(|c| c.slug == i.slug);
    match slug {
        Some(slug) => {
            if let Some(c) = conflicted.iter().find(|c| c.slug == slug) {
                return Err(ResolveError::Conflicted {
                    conflicts: vec![c.clone()],
                });
            }
            if let Some(i) = mine.iter().find(|i| i.slug == slug) {
                return Ok(i.clone());
            }
            if others.iter().any(|i| i.slug == slug) {
                return Err(ResolveError::OtherService {
                    service: service.to_string(),
                    slug: slug.to_owned(),
                });
            }
            let mut running: Vec<String> = mine.iter().map(Instance::name).collect();
            running.dedup();
            Err(ResolveError::SlugNotRunning {
                service: service.to_string(),
                slug: slug.to_owned(),
                running,
            })
        }
        None => {
            // A temporary instance belongs to the session it was started
            // for: never a random choice.
            let candidates: Vec<Instance> = mine
                .iter()
                .filter(|i| !is_conflicted(i) && !i.temporary)
                .cloned()
                .collect();
            if candidates.is_empty() {
                if !conflicted.is_empty() {
                    return Err(ResolveError::Conflicted {
                        conflicts: conflicted,
                    });
                }
                return Err(ResolveError::NoneRunning {
                    service: service.to_string(),
                });
            }
            let idx = random_below(candidates.len()).map_err(ResolveError::Random)?;
            candidates
                .into_iter()
                .nth(idx)
                .ok_or_else(|| ResolveError::Random("index".into()))
        }
    }
}

/// Uniform integer in 0..n from the kernel's random source (rejection
/// sampling, so no modulo bias).
fn random_below(n: usize) -> Result<usize, String> {
    if n <= 1 {
        return Ok(0);
    }
    let n = n as u64;
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let mut buf = [0u8; 8];
        // SAFETY: buf is a valid writable buffer of the given length.
        let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got != buf.len() as isize {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let v = u64::from_ne_bytes(buf);
        if v < zone {
            return Ok((v % n) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, labels: &[&str]) -> ContainerState {
        let l: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        let json = serde_json::json!({"id": id, "init_process_pid": 4242, "init_process_start": 99,
            "config": {"labels": l}, "other": {"x": 1}});
        parse_state(json.to_string().as_bytes()).unwrap()
    }

    fn with_rootfs(labels: &[&str], rootfs: &str) -> ContainerState {
        let json = serde_json::json!({"id": "srv-a1-d4e5f", "init_process_pid": 4242,
            "init_process_start": 99, "config": {"labels": labels, "rootfs": rootfs}});
        parse_state(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn tenant_bundle_label_is_ignored() {
        // runc appends its own bundle= after the annotations: the last wins.
        let s = with_rootfs(
            &["bundle=/evil", "io.porthole.service=srv-a1", "bundle=/b"],
            "/b/rootfs",
        );
        assert_eq!(s.bundle(), Some(PathBuf::from("/b")));
        // The rootfs must be inside the bundle, else no bundle at all.
        for rootfs in ["/other/rootfs", "/b", "/b/../etc", "relative/rootfs"] {
            assert_eq!(
                with_rootfs(&["bundle=/b"], rootfs).bundle(),
                None,
                "{rootfs}"
            );
        }
        assert_eq!(with_rootfs(&["bundle=/b/.."], "/b/../x").bundle(), None);
        assert_eq!(with_rootfs(&["bundle=b"], "b/rootfs").bundle(), None);
        assert_eq!(state("srv-a1-d4e5f", &["bundle=/b"]).bundle(), None);
    }

    #[test]
    fn parses_runc_state_and_labels() {
        let s = state("srv-a1-d4e5f", &["bundle=/b", "io.porthole.service=srv-a1"]);
        assert_eq!(s.init_pid, 4242);
        assert_eq!(s.label("bundle"), Some("/b"));
        assert!(parse_state(b"{").is_none());
        assert!(
            parse_state(br#"{"id":"../x","init_process_pid":5,"init_process_start":1}"#).is_none()
        );
        assert!(
            parse_state(br#"{"id":"x","init_process_pid":1,"init_process_start":1}"#).is_none()
        );
        assert!(
            parse_state(br#"{"id":"x","init_process_pid":"5","init_process_start":1}"#).is_none()
        );
    }

    #[test]
    fn classifies_by_annotation_then_id() {
        let k = ("io.porthole.service", "io.porthole.instance");
        let by_id = state("srv-a1-d4e5f", &[]);
        assert_eq!(classify(&by_id, k.0, k.1).unwrap().1, "d4e5f");
        let by_ann = state(
            "f00ba4",
            &["io.porthole.service=srv-b2", "io.porthole.instance=zz9zz"],
        );
        let (svc, slug) = classify(&by_ann, k.0, k.1).unwrap();
        assert_eq!((svc.as_str(), slug.as_str()), ("srv-b2", "zz9zz"));
        // Annotation wins over the id.
        let both = state(
            "srv-a1-d4e5f",
            &["io.porthole.service=srv-c3", "io.porthole.instance=aaaaa"],
        );
        assert_eq!(classify(&both, k.0, k.1).unwrap().0.as_str(), "srv-c3");
        // Hostile annotations are not ours.
        assert!(classify(&state("x", &["io.porthole.service=srv-../x"]), k.0, k.1).is_none());
        assert!(classify(
            &state(
                "x",
                &["io.porthole.service=srv-a1", "io.porthole.instance=TOOLONG"]
            ),
            k.0,
            k.1
        )
        .is_none());
        assert!(classify(&state("web-1", &[]), k.0, k.1).is_none());
        assert!(classify(&state("srv-a1-d4e5", &[]), k.0, k.1).is_none());
    }

    #[test]
    fn stat_start_time_survives_hostile_comm() {
        let line = "123 (evil) Z 1 ) R 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        assert_eq!(parse_stat_start(line), Some(777));
        let zombie = "123 (x) Z 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        assert_eq!(parse_stat_start(zombie), None);
        let me = process_start_time(std::process::id() as i32);
        assert!(me.is_some());
    }

    fn inst(svc: &str, slug: &str) -> Instance {
        Instance {
            container_id: format!("{svc}-{slug}"),
            service: ServiceId::parse(svc).unwrap(),
            slug: slug.into(),
            init_pid: 2,
            init_start: 1,
            bundle: None,
            confinement_source: None,
            runtime_root: "/run/runc".into(),
            claim: Claim::ContainerId,
            temporary: false,
        }
    }

    #[test]
    fn a_temporary_instance_is_never_a_random_choice() {
        let a1 = ServiceId::parse("srv-a1").unwrap();
        let temp = Instance {
            temporary: true,
            ..inst("srv-a1", "ttttt")
        };
        for _ in 0..50 {
            let all = vec![temp.clone(), inst("srv-a1", "aaaaa")];
            assert_eq!(choose(all, &a1, None).unwrap().slug, "aaaaa");
        }
        assert_eq!(
            choose(vec![temp.clone()], &a1, None)
                .unwrap_err()
                .to_string(),
            "srv-a1 has no running instance on this host"
        );
        // By slug it is found (the shell decides who may enter it).
        assert!(choose(vec![temp], &a1, Some("ttttt")).unwrap().temporary);
    }

    #[test]
    fn choose_by_slug_and_explains_misses() {
        let all = vec![
            inst("srv-a1", "aaaaa"),
            inst("srv-a1", "bbbbb"),
            inst("srv-b2", "ccccc"),
        ];
        let a1 = ServiceId::parse("srv-a1").unwrap();
        assert_eq!(
            choose(all.clone(), &a1, Some("bbbbb")).unwrap().slug,
            "bbbbb"
        );
        let e = choose(all.clone(), &a1, Some("zzzzz")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "instance srv-a1-zzzzz is not running; running instances: srv-a1-aaaaa, srv-a1-bbbbb"
        );
        let e = choose(all.clone(), &a1, Some("ccccc")).unwrap_err();
        assert_eq!(e.to_string(), "ccccc is not an instance of srv-a1");
        let c3 = ServiceId::parse("srv-c3").unwrap();
        assert_eq!(
            choose(all, &c3, None).unwrap_err().to_string(),
            "srv-c3 has no running instance on this host"
        );
    }

    fn impostor(svc: &str, slug: &str, id: &str) -> Instance {
        Instance {
            container_id: id.into(),
            claim: Claim::Annotation,
            ..inst(svc, slug)
        }
    }

    #[test]
    fn conflicts_are_every_instance_claimed_twice() {
        let all = vec![
            inst("srv-a1", "aaaaa"),
            impostor("srv-a1", "aaaaa", "0-first-by-sort"),
            inst("srv-a1", "bbbbb"),
            inst("srv-b2", "aaaaa"),
            impostor("srv-a1", "aaaaa", "zz-third"),
        ];
        let c = conflicts(&all);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].name(), "srv-a1-aaaaa");
        let ids: Vec<&str> = c[0].claimants.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(ids, ["srv-a1-aaaaa", "0-first-by-sort", "zz-third"]);
        assert_eq!(
            c[0].to_string(),
            "instance srv-a1-aaaaa is claimed by three containers (srv-a1-aaaaa, 0-first-by-sort, zz-third); refusing to choose"
        );
        // The same slug in two services is two instances, not a conflict.
        assert!(conflicts(&[inst("srv-a1", "aaaaa"), inst("srv-b2", "aaaaa")]).is_empty());
        assert!(conflicts(&[]).is_empty());
    }

    #[test]
    fn a_conflicted_instance_is_never_chosen() {
        let a1 = ServiceId::parse("srv-a1").unwrap();
        let all = vec![
            impostor("srv-a1", "aaaaa", "0-impostor"),
            inst("srv-a1", "aaaaa"),
            inst("srv-a1", "bbbbb"),
        ];
        // By slug: refused with the sentence, whatever the sort order.
        let e = choose(all.clone(), &a1, Some("aaaaa")).unwrap_err();
        assert!(matches!(e, ResolveError::Conflicted { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "instance srv-a1-aaaaa is claimed by two containers (0-impostor, srv-a1-aaaaa); refusing to choose — ask the platform admins"
        );
        // Other instances are unaffected.
        assert_eq!(
            choose(all.clone(), &a1, Some("bbbbb")).unwrap().slug,
            "bbbbb"
        );
        // At random: only the unconflicted instance is ever picked.
        for _ in 0..100 {
            assert_eq!(choose(all.clone(), &a1, None).unwrap().slug, "bbbbb");
        }
        // All conflicted: refused, naming each conflict.
        let all = vec![
            inst("srv-a1", "aaaaa"),
            impostor("srv-a1", "aaaaa", "x1"),
            inst("srv-a1", "ccccc"),
            impostor("srv-a1", "ccccc", "x2"),
        ];
        let e = choose(all, &a1, None).unwrap_err();
        match &e {
            ResolveError::Conflicted { conflicts } => assert_eq!(conflicts.len(), 2),
            other => panic!("{other:?}"),
        }
        let text = e.to_string();
        assert!(
            text.contains("instance srv-a1-aaaaa is claimed by two containers (srv-a1-aaaaa, x1)"),
            "{text}"
        );
        assert!(
            text.contains("instance srv-a1-ccccc is claimed by two containers (srv-a1-ccccc, x2)"),
            "{text}"
        );
        // A conflict elsewhere does not refuse another service.
        let b2 = ServiceId::parse("srv-b2").unwrap();
        let all = vec![
            inst("srv-a1", "aaaaa"),
            impostor("srv-a1", "aaaaa", "x1"),
            inst("srv-b2", "aaaaa"),
        ];
        assert_eq!(choose(all, &b2, None).unwrap().container_id, "srv-b2-aaaaa");
    }

    #[test]
    fn ownership_and_mode_checks() {
        let dir = libc::S_IFDIR;
        let file = libc::S_IFREG;
        assert_eq!(untrusted_reason(0, dir | 0o700, true), None);
        assert_eq!(untrusted_reason(0, dir | 0o755, true), None);
        assert_eq!(untrusted_reason(0, dir | 0o711, true), None);
        assert_eq!(untrusted_reason(0, file | 0o600, false), None);
        assert_eq!(untrusted_reason(0, file | 0o644, false), None);
        assert_eq!(
            untrusted_reason(1000, dir | 0o700, true).as_deref(),
            Some("is owned by uid 1000, not root")
        );
        assert_eq!(
            untrusted_reason(0, dir | 0o1777, true).as_deref(),
            Some("is writable by group or others (mode 1777)")
        );
        assert_eq!(
            untrusted_reason(0, dir | 0o770, true).as_deref(),
            Some("is writable by group or others (mode 0770)")
        );
        assert_eq!(
            untrusted_reason(0, file | 0o602, false).as_deref(),
            Some("is writable by group or others (mode 0602)")
        );
        assert_eq!(
            untrusted_reason(0, file | 0o600, true).as_deref(),
            Some("is not a directory")
        );
        assert_eq!(
            untrusted_reason(0, libc::S_IFIFO | 0o600, false).as_deref(),
            Some("is not a regular file")
        );
    }

    /// The scan on a real directory tree: what root alone wrote counts,
    /// the rest is reported. Needs root (chown); skipped otherwise.
    #[test]
    fn scan_skips_and_reports_untrusted_state() {
        if nix::unistd::geteuid().as_raw() != 0 {
            eprintln!("skipped: needs root to chown");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("runc");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        let me = std::process::id() as i32;
        let start = process_start_time(me).unwrap();
        let put = |id: &str, dir_mode: u32, file_mode: u32, owner: u32| {
            let d = root.join(id);
            std::fs::create_dir(&d).unwrap();
            let json = serde_json::json!({"id": id, "init_process_pid": me,
                "init_process_start": start, "config": {"labels": []}});
            std::fs::write(d.join("state.json"), json.to_string()).unwrap();
            std::fs::set_permissions(
                d.join("state.json"),
                std::fs::Permissions::from_mode(file_mode),
            )
            .unwrap();
            std::os::unix::fs::chown(d.join("state.json"), Some(owner), Some(owner)).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(dir_mode)).unwrap();
        };
        put("srv-a1-aaaaa", 0o711, 0o600, 0);
        put("srv-a1-bbbbb", 0o777, 0o600, 0);
        put("srv-a1-ccccc", 0o711, 0o666, 0);
        put("srv-a1-ddddd", 0o711, 0o600, 1000);
        std::os::unix::fs::symlink(root.join("srv-a1-aaaaa"), root.join("srv-a1-eeeee")).unwrap();
        let roots = vec![root.clone()];
        let scan =
            running_instances(&roots, "io.porthole.service", "io.porthole.instance").unwrap();
        let names: Vec<String> = scan.instances.iter().map(Instance::name).collect();
        assert_eq!(names, ["srv-a1-aaaaa"]);
        let why: Vec<(String, &str)> = scan
            .untrusted
            .iter()
            .map(|u| {
                (
                    u.path.strip_prefix(&root).unwrap().display().to_string(),
                    u.why.as_str(),
                )
            })
            .collect();
        assert_eq!(
            why,
            [
                (
                    "srv-a1-bbbbb".to_string(),
                    "is writable by group or others (mode 0777)"
                ),
                (
                    "srv-a1-ccccc/state.json".to_string(),
                    "is writable by group or others (mode 0666)"
                ),
                (
                    "srv-a1-ddddd/state.json".to_string(),
                    "is owned by uid 1000, not root"
                ),
                ("srv-a1-eeeee".to_string(), "is a symbolic link"),
            ]
        );
        // The root itself: writable by others, or not root's → nothing in it counts.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o757)).unwrap();
        match running_instances(&roots, "io.porthole.service", "io.porthole.instance") {
            Err(ResolveError::UntrustedRuntime { untrusted }) => {
                assert_eq!(untrusted.len(), 1);
                assert_eq!(untrusted[0].path, root);
                assert_eq!(
                    untrusted[0].why,
                    "is writable by group or others (mode 0757)"
                );
            }
            other => panic!("{other:?}"),
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&root, Some(1000), None).unwrap();
        let e =
            running_instances(&roots, "io.porthole.service", "io.porthole.instance").unwrap_err();
        assert!(e.to_string().contains("failed its ownership checks"), "{e}");
        // A trusted root next to an untrusted one still counts.
        let good = tmp.path().join("good");
        std::fs::create_dir(&good).unwrap();
        let scan = running_instances(
            &[root.clone(), good],
            "io.porthole.service",
            "io.porthole.instance",
        )
        .unwrap();
        assert!(scan.instances.is_empty());
        assert_eq!(scan.untrusted[0].why, "is owned by uid 1000, not root");
        // A symlinked root is not followed.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        let e =
            running_instances(&[link], "io.porthole.service", "io.porthole.instance").unwrap_err();
        match e {
            ResolveError::UntrustedRuntime { untrusted } => {
                assert_eq!(untrusted[0].why, "is a symbolic link")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn random_choice_reaches_every_instance() {
        let all = vec![
            inst("srv-a1", "aaaaa"),
            inst("srv-a1", "bbbbb"),
            inst("srv-a1", "ccccc"),
        ];
        let a1 = ServiceId::parse("srv-a1").unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(choose(all.clone(), &a1, None).unwrap().slug);
        }
        assert_eq!(seen.len(), 3);
    }
}
