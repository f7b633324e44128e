//! libnss_porthole.so.2: makes every name of the service grammar resolve to
//! the shared session account, so that sshd accepts `ssh srv-abc123@host`
//! at all (sshd never runs AuthorizedKeysCommand for a user getpwnam does
//! not know).
//!
//! This library is loaded into sshd and into every other process on the
//! host that looks up a user, so it does the least possible: it checks the
//! name against the grammar before touching anything, reads only
//! `/etc/passwd` (never NSS itself, which would recurse), starts no thread,
//! does no network I/O, and has no panic path (the workspace denies
//! unwrap/expect/panic; slices are only taken with checked `get`).
//!
//! Where the account comes from: the `porthole-session` line of
//! `/etc/passwd` (written by the package's postinst). Its uid, gid, home
//! and shell are copied into the answer; only the name differs. There is no
//! second file to keep in sync, and an admin sees the account with
//! `getent passwd porthole-session`.
//!
//! What is answered:
//! - `getpwnam(srv-…)` and `getpwnam(srv)` (the picker's login, issue 20):
//!   the account, named as asked, password field `*`
//!   (not `x`: pam_unix would look for a shadow entry and refuse).
//! - `getpwuid`: NOTFOUND. The session uid is already answered by `files`
//!   with its one canonical name, `porthole-session`; answering it here too
//!   would only add a second, arbitrary name.
//! - groups: NOTFOUND. The session group is a real line of /etc/group;
//!   service names are not groups. `initgroups` adds nothing.
//! - enumeration: empty. Tenants are never listed.

use std::io::{BufRead, BufReader, Read};

#[path = "../../src/names.rs"]
#[allow(dead_code)]
mod names;

/// The account every service name maps to.
pub const ACCOUNT: &[u8] = b"porthole-session";
const PASSWD_PATH: &str = "/etc/passwd";
/// /etc/passwd larger than this is not read (a corrupt or hostile file).
const MAX_PASSWD_BYTES: u64 = 64 * 1024 * 1024;
const GECOS: &[u8] = b"porthole session";

/// glibc's `enum nss_status`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NssStatus {
    TryAgain = -2,
    Unavail = -1,
    NotFound = 0,
    Success = 1,
}

/// The fields of the session account we copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub home: Vec<u8>,
    pub shell: Vec<u8>,
}

/// Parses one passwd line if it is the session account's.
fn parse_account_line(line: &[u8]) -> Option<Account> {
    let mut f = line.split(|&b| b == b':');
    let name = f.next()?;
    if name != ACCOUNT {
        return None;
    }
    let _passwd = f.next()?;
    let uid = parse_id(f.next()?)?;
    let gid = parse_id(f.next()?)?;
    let _gecos = f.next()?;
    let home = f.next()?;
    let shell = f.next()?;
    if f.next().is_some() || !home.starts_with(b"/") || !shell.starts_with(b"/") {
        return None;
    }
    if home.contains(&0) || shell.contains(&0) {
        return None;
    }
    Some(Account {
        uid,
        gid,
        home: home.to_vec(),
        shell: shell.to_vec(),
    })
}

fn parse_id(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Finds the session account in a passwd file.
pub fn find_account(passwd: &std::path::Path) -> Option<Account> {
    let file = std::fs::File::open(passwd).ok()?;
    let reader = BufReader::new(file.take(MAX_PASSWD_BYTES));
    for line in reader.split(b'\n') {
        let line = line.ok()?;
        if let Some(acct) = parse_account_line(&line) {
            return Some(acct);
        }
    }
    None
}

/// Packs strings into the caller's buffer, NUL-terminated, and remembers
/// where each one starts. Fails (ERANGE) instead of writing past the end.
struct Packer {
    buf: *mut libc::c_char,
    len: usize,
    used: usize,
}

impl Packer {
    fn push(&mut self, s: &[u8]) -> Option<*mut libc::c_char> {
        let need = s.len().checked_add(1)?;
        let end = self.used.checked_add(need)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `buf` points to `len` writable bytes (caller contract of
        // the NSS entry points) and used + need <= len was just checked.
        unsafe {
            let dst = self.buf.add(self.used);
            std::ptr::copy_nonoverlapping(s.as_ptr().cast::<libc::c_char>(), dst, s.len());
            *dst.add(s.len()) = 0;
            self.used = end;
            Some(dst)
        }
    }
}

/// The lookup behind `getpwnam_r`, with the passwd path as a parameter so
/// tests can use their own file.
///
/// # Safety
/// `result` must point to a writable `struct passwd`, `buf` to `buflen`
/// writable bytes, `errnop` to a writable int; `name` must be a valid C
/// string. Null pointers are refused.
pub unsafe fn getpwnam_in(
    passwd_path: &std::path::Path,
    name: *const libc::c_char,
    result: *mut libc::passwd,
    buf: *mut libc::c_char,
    buflen: libc::size_t,
    errnop: *mut libc::c_int,
) -> NssStatus {
    if name.is_null() || result.is_null() || buf.is_null() || errnop.is_null() {
        return NssStatus::Unavail;
    }
    // SAFETY: name is non-null and NUL-terminated per the caller contract.
    let name = unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes();
    // The grammar check comes first: every other name costs nothing.
    if !names::is_login_name(name) {
        // SAFETY: errnop is non-null and writable.
        unsafe { *errnop = libc::ENOENT };
        return NssStatus::NotFound;
    }
    let Some(acct) = find_account(passwd_path) else {
        // SAFETY: as above.
        unsafe { *errnop = libc::ENOENT };
        return NssStatus::NotFound;
    };
    let mut p = Packer {
        buf,
        len: buflen,
        used: 0,
    };
    let packed = (|| {
        Some((
            p.push(name)?,
            p.push(b"*")?,
            p.push(GECOS)?,
            p.push(&acct.home)?,
            p.push(&acct.shell)?,
        ))
    })();
    let Some((pw_name, pw_passwd, pw_gecos, pw_dir, pw_shell)) = packed else {
        // SAFETY: as above. glibc retries with a larger buffer on ERANGE.
        unsafe { *errnop = libc::ERANGE };
        return NssStatus::TryAgain;
    };
    // SAFETY: result is non-null and points to a writable struct passwd;
    // the strings it points to live in the caller's buffer.
    unsafe {
        (*result).pw_name = pw_name;
        (*result).pw_passwd = pw_passwd;
        (*result).pw_uid = acct.uid;
        (*result).pw_gid = acct.gid;
        (*result).pw_gecos = pw_gecos;
        (*result).pw_dir = pw_dir;
        (*result).pw_shell = pw_shell;
    }
    NssStatus::Success
}

/// `getpwnam_r` entry point.
///
/// # Safety
/// Called by glibc with the pointers of `getpwnam_r(3)`.
#[no_mangle]
pub unsafe extern "C" fn _nss_porthole_getpwnam_r(
    name: *const libc::c_char,
    result: *mut libc::passwd,
    buf: *mut libc::c_char,
    buflen: libc::size_t,
    errnop: *mut libc::c_int,
) -> NssStatus {
    // SAFETY: the caller (glibc) upholds getpwnam_in's contract.
    unsafe {
        getpwnam_in(
            std::path::Path::new(PASSWD_PATH),
            name,
            result,
            buf,
            buflen,
            errnop,
        )
    }
}

fn not_found(errnop: *mut libc::c_int) -> NssStatus {
    if !errnop.is_null() {
        // SAFETY: non-null errno pointer from glibc.
        unsafe { *errnop = libc::ENOENT };
    }
    NssStatus::NotFound
}

/// `getpwuid_r`: the session uid has its one name from `files`.
///
/// # Safety
/// Called by glibc; only `errnop` is touched.
#[no_mangle]
pub unsafe extern "C" fn _nss_porthole_getpwuid_r(
    _uid: libc::uid_t,
    _result: *mut libc::passwd,
    _buf: *mut libc::c_char,
    _buflen: libc::size_t,
    errnop: *mut libc::c_int,
) -> NssStatus {
    not_found(errnop)
}

/// `getgrnam_r`: service names are not groups.
///
/// # Safety
/// Called by glibc; only `errnop` is touched.
#[no_mangle]
pub unsafe extern "C" fn _nss_porthole_getgrnam_r(
    _name: *const libc::c_char,
    _result: *mut libc::group,
    _buf: *mut libc::c_char,
    _buflen: libc::size_t,
    errnop: *mut libc::c_int,
) -> NssStatus {
    not_found(errnop)
}

/// `getgrgid_r`: the session group is answered by `files`.
///
/// # Safety
/// Called by glibc; only `errnop` is touched.
#[no_mangle]
pub unsafe extern "C" fn _nss_porthole_getgrgid_r(
    _gid: libc::gid_t,
    _result: *mut libc::group,
    _buf: *mut libc::c_char,
    _buflen: libc::size_t,
    errnop: *mut libc::c_int,
) -> NssStatus {
    not_found(errnop)
}

/// `initgroups_dyn`: service logins get no supplementary groups from us.
///
/// # Safety
/// Called by glibc; only `errnop` is touched.
#[no_mangle]
pub unsafe extern "C" fn _nss_porthole_initgroups_dyn(
    _user: *const libc::c_char,
    _group: libc::gid_t,
    _start: *mut libc::c_long,
    _size: *mut libc::c_long,
    _groups: *mut *mut libc::gid_t,
    _limit: libc::c_long,
    errnop: *mut libc::c_int,
) -> NssStatus {
    not_found(errnop)
}

/// Enumeration: nothing to set up.
#[no_mangle]
pub extern "C" fn _nss_porthole_setpwent(_stayopen: libc::c_int) -> NssStatus {
    NssStatus::Success
}

/// Enumeration lists no tenants.
///
/// # Safety
/// Called by glibc; only `errnop` is touched.
#[no_mangle]
pub unsafe extern "C" fn _nss_porthole_getpwent_r(
    _result: *mut libc::passwd,
    _buf: *mut libc::c_char,
    _buflen: libc::size_t,
    errnop: *mut libc::c_int,
) -> NssStatus {
    not_found(errnop)
}

#[no_mangle]
pub extern "C" fn _nss_porthole_endpwent() -> NssStatus {
    NssStatus::Success
}

#[no_mangle]
pub extern "C" fn _nss_porthole_setgrent(_stayopen: libc::c_int) -> NssStatus {
    NssStatus::Success
}

/// Group enumeration is empty too.
///
/// # Safety
/// Called by glibc; only `errnop` is touched.
#[no_mangle]
pub unsafe extern "C" fn _nss_porthole_getgrent_r(
    _result: *mut libc::group,
    _buf: *mut libc::c_char,
    _buflen: libc::size_t,
    errnop: *mut libc::c_int,
) -> NssStatus {
    not_found(errnop)
}

#[no_mangle]
pub extern "C" fn _nss_porthole_endgrent() -> NssStatus {
    NssStatus::Success
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::{CStr, CString};

    fn passwd_file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, content.as_bytes()).unwrap();
        f
    }

    const GOOD: &str = "root:x:0:0:root:/root:/bin/bash\nbroken line\n\
porthole-session:x:990:991:porthole session:/var/lib/porthole/home:/usr/lib/porthole/porthole-shell\n";

    fn lookup(
        path: &std::path::Path,
        name: &[u8],
        buflen: usize,
    ) -> (NssStatus, i32, Option<libc::passwd>, Vec<u8>) {
        let cname = CString::new(name).unwrap();
        // SAFETY: passwd is plain data (integers and pointers); all-zero is valid.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0u8; buflen.max(1)];
        let mut err = 0;
        // SAFETY: cname, pw, buf (buflen bytes) and err are live locals.
        let st = unsafe {
            getpwnam_in(
                path,
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buflen,
                &mut err,
            )
        };
        let copy = (st == NssStatus::Success).then_some(pw);
        (st, err, copy, buf)
    }

    fn s(p: *mut libc::c_char) -> String {
        // SAFETY: p points into a buffer the lookup filled with a NUL-terminated string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    #[test]
    fn service_and_instance_names_get_the_session_account() {
        let f = passwd_file(GOOD);
        for name in ["srv-abc123", "srv-abc123-d4e5f", "srv"] {
            let (st, _, pw, _buf) = lookup(f.path(), name.as_bytes(), 1024);
            assert_eq!(st, NssStatus::Success);
            let pw = pw.unwrap();
            assert_eq!(s(pw.pw_name), name);
            assert_eq!(s(pw.pw_passwd), "*");
            assert_eq!((pw.pw_uid, pw.pw_gid), (990, 991));
            assert_eq!(s(pw.pw_dir), "/var/lib/porthole/home");
            assert_eq!(s(pw.pw_shell), "/usr/lib/porthole/porthole-shell");
        }
    }

    #[test]
    fn other_names_are_not_found() {
        let f = passwd_file(GOOD);
        let long = "srv-".to_string() + &"a".repeat(4096);
        for name in [
            "root",
            "srv-",
            "srv ",
            "SRV",
            "srvx",
            "srv-../..",
            "srv-ABC",
            "srv-abc-1234",
            "porthole-session",
            long.as_str(),
            "srv-\u{0430}bc",
        ] {
            let (st, err, _, _) = lookup(f.path(), name.as_bytes(), 1024);
            assert_eq!(st, NssStatus::NotFound, "{name}");
            assert_eq!(err, libc::ENOENT);
        }
    }

    #[test]
    fn small_buffers_ask_for_a_retry() {
        let f = passwd_file(GOOD);
        let name = b"srv-abc123-d4e5f";
        let needed = name.len()
            + 1
            + 2
            + GECOS.len()
            + 1
            + "/var/lib/porthole/home".len()
            + 1
            + "/usr/lib/porthole/porthole-shell".len()
            + 1;
        for len in 0..needed {
            let (st, err, _, _) = lookup(f.path(), name, len);
            assert_eq!(
                (st, err),
                (NssStatus::TryAgain, libc::ERANGE),
                "buflen {len}"
            );
        }
        assert_eq!(lookup(f.path(), name, needed).0, NssStatus::Success);
    }

    #[test]
    fn missing_or_malformed_account_is_not_found() {
        for content in [
            "root:x:0:0:root:/root:/bin/bash\n",
            "porthole-session:x:abc:991::/h:/bin/sh\n",
            "porthole-session:x:990:991::relative:/bin/sh\n",
            "porthole-session:x:990:991::/h\n",
            "porthole-session:x:990:991::/h:/bin/sh:extra\n",
            "",
        ] {
            let f = passwd_file(content);
            assert_eq!(
                lookup(f.path(), b"srv-abc", 1024).0,
                NssStatus::NotFound,
                "{content:?}"
            );
        }
        let (st, _, _, _) = lookup(
            std::path::Path::new("/nonexistent/passwd"),
            b"srv-abc",
            1024,
        );
        assert_eq!(st, NssStatus::NotFound);
    }

    #[test]
    fn null_pointers_are_refused() {
        let mut err = 0;
        // SAFETY: the null pointers are what is tested; err is a live local.
        let st = unsafe {
            getpwnam_in(
                std::path::Path::new("/etc/passwd"),
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
                &mut err,
            )
        };
        assert_eq!(st, NssStatus::Unavail);
    }

    #[test]
    fn uid_group_and_enumeration_answer_nothing() {
        let mut err = 0;
        // SAFETY: null buffers with length 0, which these entry points never touch; err is live.
        unsafe {
            assert_eq!(
                _nss_porthole_getpwuid_r(
                    990,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                    &mut err
                ),
                NssStatus::NotFound
            );
            assert_eq!(
                _nss_porthole_getgrgid_r(
                    991,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                    &mut err
                ),
                NssStatus::NotFound
            );
            let n = CString::new("srv-abc").unwrap();
            assert_eq!(
                _nss_porthole_getgrnam_r(
                    n.as_ptr(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                    &mut err
                ),
                NssStatus::NotFound
            );
            assert_eq!(_nss_porthole_setpwent(0), NssStatus::Success);
            assert_eq!(
                _nss_porthole_getpwent_r(std::ptr::null_mut(), std::ptr::null_mut(), 0, &mut err),
                NssStatus::NotFound
            );
            assert_eq!(
                _nss_porthole_getgrent_r(std::ptr::null_mut(), std::ptr::null_mut(), 0, &mut err),
                NssStatus::NotFound
            );
        }
        assert_eq!(err, libc::ENOENT);
    }
}
