//! Running from a sealed, in-memory copy of ourselves.
//!
//! Why this exists (the runc CVE-2019-5736 class): a process that execs a
//! program inside a container is, until the exec succeeds, still the host
//! executable. If the image makes that program a script starting with
//! `#!/proc/self/exe`, the kernel resolves the interpreter while we are
//! still us and re-runs *the host's setuid `porthole-shell`* inside the
//! container as the container's root, with the image's own ELF interpreter
//! and (AT_SECURE being 0 for that exec) its `LD_PRELOAD`. That code can
//! open `/proc/self/exe` and write to the host file once it is not busy.
//!
//! So, like runc, the session shell re-executes itself from a memfd copy
//! sealed against every change before it does anything else: from then on
//! `/proc/self/exe` of the supervisor and of every process it forks into an
//! instance is that memfd, which nobody (root included) can write, grow or
//! shrink. This is the one mechanism through which porthole runs anything
//! inside an instance; [`is_sealed_self`] is checked again before entering.
//!
//! What it trusts: the kernel's memfd seals. It costs one copy of the
//! binary per session (see BENCHMARKS.md, "entering").

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

/// Every seal: no write (also through existing mappings), no size change,
/// no removal of seals.
const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
/// `MFD_EXEC` (Linux 6.3): ask for an executable memfd explicitly, so a
/// host with `vm.memfd_noexec = 1` still lets us run from it.
const MFD_EXEC: libc::c_uint = 0x0010;
/// The memfd's name, as `/proc/PID/exe` shows it (`/memfd:porthole-shell`).
const MEMFD_NAME: &CStr = c"porthole-shell";
/// Set by the re-exec to the path we were started from (the value of
/// `std::env::current_exe` before the copy). Any value the caller passed is
/// removed first, so after the re-exec the variable is always ours.
pub const ORIGIN_ENV: &str = "PORTHOLE_SHELL_ORIGIN";

/// Why the sealed copy could not be made. The session is refused: running
/// on from the host file would reopen the hole.
#[derive(Debug)]
pub enum SealError {
    /// A step failed (the message names it): a host problem for the admin.
    Step(&'static str, std::io::Error),
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealError::Step(what, e) => write!(f, "cannot run from a sealed copy ({what}: {e})"),
        }
    }
}

impl std::error::Error for SealError {}

fn step(what: &'static str) -> impl FnOnce(std::io::Error) -> SealError {
    move |e| SealError::Step(what, e)
}

/// True when `/proc/self/exe` is a memfd carrying every seal in [`SEALS`].
/// A regular file answers `EINVAL` to `F_GET_SEALS`: false.
pub fn is_sealed_self() -> bool {
    let Ok(exe) = File::open("/proc/self/exe") else {
        return false;
    };
    // SAFETY: fcntl on an fd we own, integer arguments only.
    let seals = unsafe { libc::fcntl(exe.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & SEALS == SEALS
}

fn memfd(name: &CStr) -> std::io::Result<OwnedFd> {
    let mut last = std::io::Error::from_raw_os_error(libc::EINVAL);
    for flags in [
        libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | MFD_EXEC,
        // Kernels before 6.3 do not know MFD_EXEC (EINVAL): every memfd is
        // executable there.
        libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
    ] {
        // SAFETY: the name is NUL-terminated and outlives the call.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: memfd_create just returned this fd; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        last = std::io::Error::last_os_error();
    }
    Err(last)
}

/// Copies the running executable into a sealed memfd.
pub fn sealed_copy() -> Result<OwnedFd, SealError> {
    let mut src = File::open("/proc/self/exe").map_err(step("open /proc/self/exe"))?;
    sealed_copy_of(&mut src, MEMFD_NAME)
}

/// Copies `src` (an executable the caller opened and checked) into a
/// memfd named `name`, sealed like our own copy. The session shell runs
/// porthole-sftp from one of these inside an instance (issue 17).
pub fn sealed_copy_of(src: &mut File, name: &CStr) -> Result<OwnedFd, SealError> {
    let fd = memfd(name).map_err(step("memfd_create"))?;
    let mut dst = File::from(fd);
    // std::io::copy uses copy_file_range/sendfile where it can.
    std::io::copy(src, &mut dst).map_err(step("copying the executable"))?;
    dst.flush().map_err(step("copying the executable"))?;
    // SAFETY: fcntl with integer arguments on an fd we own.
    if unsafe { libc::fcntl(dst.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } != 0 {
        return Err(SealError::Step(
            "sealing the copy",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(OwnedFd::from(dst))
}

/// Makes sure we run from a sealed copy: returns `Ok(())` when we already
/// do, otherwise re-executes this program from one with the same arguments
/// and environment (plus [`ORIGIN_ENV`]) and does not return on success.
///
/// Credentials: the copy is not setuid, so exec keeps the effective uid
/// (root) and the real uid (the session account); the kernel still marks
/// the exec AT_SECURE (euid differs from the real uid), so the dynamic
/// loader ignores `LD_*` as it did for the setuid file.
pub fn ensure_sealed() -> Result<(), SealError> {
    if is_sealed_self() {
        return Ok(());
    }
    let origin = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let copy = sealed_copy()?;
    // Bytes, not strings: arguments and environment pass through unchanged.
    let cstr = |b: Vec<u8>| CString::new(b).ok();
    let argv: Vec<CString> = std::env::args_os()
        .filter_map(|a| cstr(a.into_vec()))
        .collect();
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != ORIGIN_ENV)
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            cstr(kv)
        })
        .collect();
    envp.extend(cstr(format!("{ORIGIN_ENV}={origin}").into_bytes()));
    let argv_p: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_p: Vec<*const libc::c_char> = envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: argv/envp are NULL-terminated arrays of live C strings; the
    // memfd is close-on-exec, which fexecve handles for ELF programs.
    unsafe { libc::fexecve(copy.as_raw_fd(), argv_p.as_ptr(), envp_p.as_ptr()) };
    Err(SealError::Step("fexecve", std::io::Error::last_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_copy_cannot_be_written_or_resized() {
        let copy = File::from(sealed_copy().unwrap());
        let me = std::fs::read("/proc/self/exe").unwrap();
        let len = copy.metadata().unwrap().len();
        assert_eq!(len, me.len() as u64);
        // Writing through the fd and through a fresh open both fail.
        assert!((&copy).write_all(b"x").is_err());
        let path = format!("/proc/self/fd/{}", copy.as_raw_fd());
        let reopened = std::fs::OpenOptions::new().write(true).open(&path);
        if let Ok(mut f) = reopened {
            assert!(f.write_all(b"x").is_err());
        }
        assert!(copy.set_len(1).is_err());
        // SAFETY: fcntl with integer arguments on a live fd.
        let seals = unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & SEALS, SEALS);
    }

    #[test]
    fn the_test_binary_is_not_sealed() {
        assert!(!is_sealed_self());
    }
}
