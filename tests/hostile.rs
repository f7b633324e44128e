#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 7: the catalogue of named hostile cases. porthole-shell is setuid
//! root on multi-tenant hosts and the keys hook decides who gets in, so each
//! case here is an input an attacker (a tenant, a developer at the bastion,
//! a broken control plane, a damaged host) can put in front of them. Every
//! test asserts four things: the clear refusal (the user's sentence, or for
//! keys-hook refusals, which the user only sees as sshd's denial, the
//! admin's decision event and its reason), the admin syslog event, that
//! nothing escaped (no host file touched or shown, nothing ran outside the
//! container) and that nothing was lost (the cache still holds the last good
//! answer, a later normal login still works).
//!
//! Everything runs against the real parts of tests/common (sshd in a private
//! mount namespace, the ssh client, the HTTP control plane, runc busybox
//! containers); the setuid shell is also run the way a local attacker with
//! the session uid would run it, with the hostile environment.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SVC: &str = "srv-web1";
const INSTANCE: &str = "srv-web1-aaaaa";
const OWNER: &str = "alice@example.com";
const WAIT: Duration = Duration::from_secs(10);

/// A bastion with `srv-web1` (paid web service) listing one key of alice.
struct Bastion {
    host: TestHost,
    key: ClientKey,
}

fn bastion_with(opts: TestHostOpts) -> Bastion {
    let host = TestHost::start(opts);
    let key = host.key(KeyKind::Ed25519);
    host.control_plane()
        .set_body(SVC, &web_service(SVC, &[KeySpec::new(&key, OWNER)]));
    Bastion { host, key }
}

/// The shipped setup: ForceCommand porthole-shell.
fn bastion() -> Bastion {
    bastion_with(TestHostOpts::default())
}

/// Authentication only (ForceCommand echoes `porthole-auth-ok $USER`),
/// 1 s budget, answers fresh for 1 s so a later login asks again.
fn probe_bastion() -> Bastion {
    bastion_with(probe_opts())
}

fn probe_opts() -> TestHostOpts {
    TestHostOpts::auth_probe()
        .timeout_ms(1000)
        .set("cache.fresh_secs", 1)
}

/// The bastion plus a running instance `srv-web1-aaaaa` (user `app`), with
/// the cache warmed by one normal login that worked.
fn shell_world() -> (Bastion, Instance) {
    shell_world_with(InstanceOpts::default().app_user())
}

fn shell_world_with(opts: InstanceOpts) -> (Bastion, Instance) {
    let b = bastion();
    let i = Instance::start(&b.host, SVC, "aaaaa", opts);
    b.assert_session_works(INSTANCE);
    (b, i)
}

impl Bastion {
    fn ssh(&self, user: &str, args: &[&str]) -> SshRun {
        self.host.ssh(user, &self.key, args)
    }

    /// A later normal login still works (nothing was lost).
    fn assert_login_works(&self) {
        match self.host.mode() {
            SessionMode::AuthProbe => {
                let r = self.ssh(SVC, &[]);
                assert!(
                    r.success() && r.stdout_str().contains(AUTH_PROBE_OK),
                    "a normal login should still work:\n{}",
                    r.describe()
                );
            }
            SessionMode::PortholeShell => self.assert_session_works(INSTANCE),
        }
    }

    /// `ssh srv-web1-aaaaa hostname` lands in the container.
    fn assert_session_works(&self, login: &str) {
        let r = self.ssh(login, &["hostname"]);
        assert!(
            r.success() && r.stdout_str().trim() == login,
            "a normal session should work:\n{}",
            r.describe()
        );
    }

    fn cache_file(&self, service: &str) -> PathBuf {
        self.host.cache_dir().join(format!("{service}.json"))
    }

    fn cache_bytes(&self) -> Vec<u8> {
        fs::read(self.cache_file(SVC)).expect("cache entry of srv-web1")
    }

    /// Runs the installed keys hook for `user` offering `key`, as sshd does.
    fn keys_hook(&self, user: &str, key: &ClientKey) -> util::Timed {
        self.host
            .run_keys_hook(&[user, &key.fingerprint, &key.key_type, &key.base64])
    }

    /// An auth-info file as sshd writes it (`publickey <type> <base64>`),
    /// owned by the session uid, 0600.
    fn auth_info(&self, key: &ClientKey, name: &str) -> PathBuf {
        let dir = self.auth_dir();
        let p = dir.join(name);
        let s = self.host.ids().session;
        util::write_file(
            &p,
            format!("publickey {} {}\n", key.key_type, key.base64),
            0o600,
            s,
            s,
        );
        p
    }

    fn auth_dir(&self) -> PathBuf {
        let dir = self.host.dir().join("authinfo");
        if !dir.is_dir() {
            let s = self.host.ids().session;
            util::mkdir(&dir, 0o755, s, s);
        }
        dir
    }

    /// A world-writable scratch directory for markers a hostile library or
    /// program would leave behind.
    fn marks(&self) -> PathBuf {
        let dir = self.host.dir().join("marks");
        if !dir.is_dir() {
            util::mkdir(&dir, 0o1777, 0, 0);
        }
        dir
    }

    /// Runs `args` as the session account inside the bastion's namespace
    /// with exactly `env` (a local attacker who has that uid).
    fn as_session_user(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let uid = format!("--reuid={}", self.host.ids().session);
        let gid = format!("--regid={}", self.host.ids().session);
        let mut all: Vec<String> = vec![
            "setpriv".into(),
            uid,
            gid,
            "--clear-groups".into(),
            "env".into(),
            "-i".into(),
        ];
        all.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.host.in_ns(&refs)
    }

    /// The installed setuid shell run by the session uid, as sshd would for
    /// `USER=<user>` with a valid auth-info file, plus the hostile `extra`
    /// variables (later ones win).
    fn local_shell(&self, user: &str, extra: &[(&str, &str)], args: &[&str]) -> Output {
        let auth = self.auth_info(&self.key, "good");
        let auth = auth.to_str().unwrap();
        let mut env = vec![
            ("USER", user),
            ("SSH_USER_AUTH", auth),
            ("SSH_CONNECTION", "127.0.0.9 50000 127.0.0.1 22"),
        ];
        env.extend_from_slice(extra);
        let bin = self.host.bin_dir().join("porthole-shell");
        let mut all = vec![bin.to_str().unwrap()];
        all.extend_from_slice(args);
        self.as_session_user(&env, &all)
    }

    fn rejected(&self, reason: &str) -> LogEvent {
        self.host.expect_event(
            &format!("session.rejected {reason}"),
            |e| e.name() == "session.rejected" && e.str("reason") == Some(reason),
            WAIT,
        )
    }

    fn decision(&self, what: &str, pred: impl Fn(&LogEvent) -> bool) -> LogEvent {
        self.host
            .expect_event(what, |e| e.name() == "keys.decision" && pred(e), WAIT)
    }

    fn session_starts(&self) -> usize {
        self.host
            .events()
            .iter()
            .filter(|e| e.name() == "session.start")
            .count()
    }
}

fn out_str(o: &Output) -> (String, String) {
    (util::lossy(&o.stdout), util::lossy(&o.stderr))
}

/// A refusal by the shell: exit 1, `sentence` on stderr, the matching
/// `session.rejected` event carrying the same sentence.
fn assert_shell_refused(b: &Bastion, o: &Output, reason: &str, sentence: &str) -> LogEvent {
    let (out, err) = out_str(o);
    assert_eq!(o.status.code(), Some(1), "stdout {out}\nstderr {err}");
    assert!(
        err.contains(sentence),
        "wanted {sentence:?} on stderr:\n{err}"
    );
    let e = b.rejected(reason);
    assert!(
        e.str("message").unwrap_or("").contains(sentence),
        "{}",
        e.raw
    );
    e
}

/// The instance's rootfs has no file `rel` (a command that must not have
/// run would have created it).
fn assert_not_created(path: &Path) {
    assert!(
        fs::symlink_metadata(path).is_err(),
        "{} exists: something ran that must not have",
        path.display()
    );
}

/// Kills a host process started by a test, also when the test fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A root-owned runtime state `srv-web1-hhhhh` in the test's runc root
/// whose init is the host process `pid` (started at `start`): what a
/// recycled pid or a forged state looks like. Removed when dropped.
fn plant_state_naming(b: &Bastion, pid: i32, start: u64) -> Planted {
    let fake = b.host.runc_root().join("srv-web1-hhhhh");
    let planted = Planted(fake.clone());
    util::mkdir(&fake, 0o700, 0, 0);
    let state = json!({"id": "srv-web1-hhhhh", "init_process_pid": pid, "init_process_start": start,
        "config": {"labels": ["io.porthole.service=srv-web1", "io.porthole.instance=hhhhh"]}});
    util::write_file(&fake.join("state.json"), state.to_string(), 0o600, 0, 0);
    planted
}

/// Removes a path a test planted (fake runtime state), also on failure,
/// before the harness sweeps the runc root.
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_file(&self.0);
    }
}

// ----- names ---------------------------------------------------------------------

/// How far a hostile name can travel through the real ssh client.
#[derive(PartialEq)]
enum ViaSsh {
    /// sshd must log `Invalid user <name>` (NSS said no).
    InvalidUser,
    /// The login must fail (sshd may shorten or refuse the name earlier).
    Denied,
}

/// A name outside the grammar is refused by sshd (NSS), by the keys hook
/// and by the setuid shell, no request reaches the control plane, no cache
/// file is created for it, and the next normal login works.
fn name_is_refused_everywhere(name: &str, via: ViaSsh) {
    let b = probe_bastion();
    b.host
        .control_plane()
        .set_body(name, &web_service(name, &[KeySpec::new(&b.key, OWNER)]));
    let r = b.ssh(name, &[]);
    assert!(
        !r.success() && !r.stdout_str().contains(AUTH_PROBE_OK),
        "{name:?} got in:\n{}",
        r.describe()
    );
    if via == ViaSsh::InvalidUser {
        assert!(
            b.host
                .wait_sshd_log(&format!("Invalid user {name} from"), WAIT),
            "sshd did not refuse {name:?} as an invalid user:\n{}",
            b.host.sshd_log()
        );
    }
    // The keys hook as sshd would run it for that name.
    let hook = b.keys_hook(name, &b.key);
    assert!(
        hook.output.stdout.is_empty(),
        "keys hook printed lines for {name:?}"
    );
    let e = b.decision(&format!("keys.decision for {name:?}"), |e| {
        e.str("user") == Some(name)
    });
    assert_eq!(e.str("outcome"), Some("refused"));
    assert_eq!(e.str("reason"), Some("not a service or instance name"));
    // The setuid shell with USER set to it.
    let o = b.local_shell(name, &[], &["-c", "id"]);
    let e = assert_shell_refused(&b, &o, "bad_name", "is not a service or instance name");
    assert_eq!(e.str("user"), Some(name));
    // Nothing escaped: no request, no cache entry, every log line one event.
    assert_eq!(b.host.control_plane().total_requests(), 0);
    let entries: Vec<_> = fs::read_dir(b.host.cache_dir()).unwrap().collect();
    assert!(entries.is_empty(), "cache files created: {entries:?}");
    for e in b.host.events() {
        assert!(!e.raw.trim_end().contains('\n'), "forged line: {}", e.raw);
    }
    b.assert_login_works();
}

#[test]
fn name_with_dot_dot_path_traversal() {
    // (sshd logs it as "srv-..": only the refusal is checked through ssh.)
    name_is_refused_everywhere("srv-../..", ViaSsh::Denied);
}

#[test]
fn name_in_uppercase() {
    name_is_refused_everywhere("SRV-WEB1", ViaSsh::InvalidUser);
}

#[test]
fn name_with_unicode_look_alikes() {
    // Cyrillic "е" (U+0435) in place of the Latin "e".
    // (sshd logs the name octal-escaped, so only the refusal is checked.)
    name_is_refused_everywhere("srv-w\u{0435}b1", ViaSsh::Denied);
}

#[test]
fn name_of_4_kib() {
    let name = format!("srv-{}", "a".repeat(4092));
    name_is_refused_everywhere(&name, ViaSsh::Denied);
}

#[test]
fn name_with_newline() {
    name_is_refused_everywhere("srv-web1\nsrv-web2", ViaSsh::Denied);
}

#[test]
fn name_srv_dash_alone() {
    name_is_refused_everywhere("srv-", ViaSsh::InvalidUser);
}

#[test]
fn name_with_slug_of_the_wrong_length() {
    name_is_refused_everywhere("srv-web1-aaaa", ViaSsh::InvalidUser);
    name_is_refused_everywhere("srv-web1-aaaaaa", ViaSsh::InvalidUser);
}

#[test]
fn name_with_nul_byte() {
    // No argv or environment string can carry a NUL (execve ends strings
    // there, and sshd rejects user names with one on the wire), so the NUL
    // case is the parsers the NSS module and both hooks share: a NUL at any
    // position of a valid name makes it not ours.
    use porthole::names::{is_ours, split_name, ServiceId, Target};
    for valid in ["srv-web1", "srv-web1-aaaaa"] {
        assert!(is_ours(valid.as_bytes()) && Target::parse(valid).is_some());
        for at in 0..=valid.len() {
            let mut bytes = valid.as_bytes().to_vec();
            bytes.insert(at, 0);
            assert!(!is_ours(&bytes), "{bytes:?}");
            assert!(split_name(&bytes).is_none(), "{bytes:?}");
            let s = String::from_utf8(bytes).unwrap();
            assert!(Target::parse(&s).is_none() && ServiceId::parse(&s).is_none());
        }
    }
    // The nearest a caller gets through execve is a control character:
    // the real shell refuses it like any name outside the grammar.
    let b = probe_bastion();
    b.keys_hook(SVC, &b.key);
    let o = b.local_shell("srv-web1\u{1}x", &[], &[]);
    assert_shell_refused(&b, &o, "bad_name", "is not a service or instance name");
    b.assert_login_works();
}

// ----- environment handed to the setuid shell ---------------------------------

/// Compiles `src` (C) into `out` with `cc`.
fn cc(src: &str, out: &Path, args: &[&str]) {
    let c = out.with_extension("c");
    fs::write(&c, src).unwrap();
    util::run_ok(Command::new("cc").args(args).arg("-o").arg(out).arg(&c));
    util::set_owner_mode(out, 0o755, 0, 0);
}

/// A shared library whose constructor appends "loaded" to `marker`.
fn hostile_library(out: &Path, marker: &Path, extra_c: &str, link: &[&str]) {
    let src = format!(
        "#include <fcntl.h>\n#include <unistd.h>\n#include <stdlib.h>\n\
         __attribute__((constructor)) static void hostile(void) {{\n\
           int fd = open(\"{}\", O_WRONLY | O_CREAT | O_APPEND, 0666);\n\
           if (fd >= 0) {{ write(fd, \"loaded\\n\", 7); close(fd); }}\n\
         }}\n{extra_c}\n",
        marker.display()
    );
    let mut args = vec!["-shared", "-fPIC"];
    args.extend_from_slice(link);
    cc(&src, out, &args);
}

/// `var=<dir or lib>` makes a normal program load the hostile library (the
/// control), but not the setuid shell, which still runs the session.
fn assert_library_not_loaded(b: &Bastion, var: &str, value: &str, control: &[&str]) {
    let marker = b.marks().join("loaded");
    let o = b.as_session_user(&[(var, value)], control);
    assert!(
        marker.exists(),
        "control: {var} did not load the library into {control:?}: {:?}",
        out_str(&o)
    );
    fs::remove_file(&marker).unwrap();
    let o = b.local_shell(INSTANCE, &[(var, value)], &["-c", "echo inside; env"]);
    let (out, err) = out_str(&o);
    assert!(o.status.success(), "stdout {out}\nstderr {err}");
    assert!(out.starts_with("inside\n"), "{out}");
    assert!(!out.contains(var), "{var} reached the session:\n{out}");
    assert!(
        !marker.exists(),
        "the setuid shell loaded the {var} library"
    );
    let e = b.host.expect_event(
        "session.start of the local run",
        |e| e.name() == "session.start" && e.str("client") == Some("127.0.0.9"),
        WAIT,
    );
    assert_eq!(e.str("owner"), Some(OWNER));
}

#[test]
fn env_ld_preload() {
    let (b, _i) = shell_world();
    let dir = b.marks();
    let lib = dir.join("hostile.so");
    hostile_library(&lib, &dir.join("loaded"), "", &[]);
    assert_library_not_loaded(&b, "LD_PRELOAD", lib.to_str().unwrap(), &["/bin/true"]);
    b.assert_login_works();
}

#[test]
fn env_ld_library_path() {
    let (b, _i) = shell_world();
    // A libgcc_s.so.1 (which both binaries need) with the unwinder's
    // symbols as stubs and a constructor: any program that honours
    // LD_LIBRARY_PATH loads it.
    let dir = b.host.dir().join("evil-libs");
    util::mkdir(&dir, 0o755, 0, 0);
    let map = dir.join("v.map");
    fs::write(
        &map,
        "GCC_3.0 { global: _Unwind_DeleteException; _Unwind_GetDataRelBase; _Unwind_GetIP; \
         _Unwind_GetLanguageSpecificData; _Unwind_GetRegionStart; _Unwind_GetTextRelBase; \
         _Unwind_RaiseException; _Unwind_Resume; _Unwind_SetGR; _Unwind_SetIP; };\n\
         GCC_3.3 { global: _Unwind_Backtrace; _Unwind_GetCFA; _Unwind_FindEnclosingFunction; } GCC_3.0;\n\
         GCC_4.2.0 { global: _Unwind_GetIPInfo; } GCC_3.3;\n",
    )
    .unwrap();
    let stubs: String = [
        "_Unwind_Backtrace",
        "_Unwind_DeleteException",
        "_Unwind_GetDataRelBase",
        "_Unwind_GetIP",
        "_Unwind_GetIPInfo",
        "_Unwind_GetLanguageSpecificData",
        "_Unwind_GetRegionStart",
        "_Unwind_GetTextRelBase",
        "_Unwind_RaiseException",
        "_Unwind_Resume",
        "_Unwind_SetGR",
        "_Unwind_SetIP",
        "_Unwind_GetCFA",
        "_Unwind_FindEnclosingFunction",
    ]
    .iter()
    .map(|s| format!("void {s}(void) {{ abort(); }}\n"))
    .collect();
    let version_script = format!("-Wl,--version-script={}", map.display());
    hostile_library(
        &dir.join("libgcc_s.so.1"),
        &b.marks().join("loaded"),
        &stubs,
        &["-Wl,-soname,libgcc_s.so.1", &version_script],
    );
    let keys = b.host.bin_dir().join("porthole-keys");
    assert_library_not_loaded(
        &b,
        "LD_LIBRARY_PATH",
        dir.to_str().unwrap(),
        &[keys.to_str().unwrap(), "not-a-name"],
    );
    b.assert_login_works();
}

#[test]
fn env_hostile_path() {
    let (b, _i) = shell_world();
    // Every program a careless shell might look up through PATH.
    let evil = b.host.dir().join("evil-bin");
    util::mkdir(&evil, 0o755, 0, 0);
    let marker = b.marks().join("ran-from-path");
    for prog in [
        "sh",
        "bash",
        "busybox",
        "runc",
        "nsenter",
        "env",
        "id",
        "getent",
        "cat",
        "hostname",
        "echo",
        "ls",
        "true",
        "sftp-server",
    ] {
        util::write_file(
            &evil.join(prog),
            format!("#!/bin/sh\necho {prog} >> {}\n", marker.display()),
            0o755,
            0,
            0,
        );
    }
    let path = evil.to_str().unwrap();
    let o = b.local_shell(
        INSTANCE,
        &[("PATH", path)],
        &["-c", "hostname; echo \"PATH=$PATH\""],
    );
    let (out, err) = out_str(&o);
    assert!(o.status.success(), "stdout {out}\nstderr {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], INSTANCE, "{out}");
    assert_eq!(
        lines[1], "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "the session got the caller's PATH"
    );
    assert_not_created(&marker);
    b.host.expect_event(
        "session.start of the local run",
        |e| e.name() == "session.start" && e.str("client") == Some("127.0.0.9"),
        WAIT,
    );
    b.assert_login_works();
}

/// `SSH_USER_AUTH` naming a hostile file: refused with `why`, no session,
/// no command ran, nothing of the file shown, and the real file still works.
fn hostile_auth_info(b: &Bastion, i: &Instance, path: &Path, why: &str) {
    let escaped = i.rootfs().join("tmp/escaped");
    let started = Instant::now();
    let before = b.session_starts();
    let o = b.local_shell(
        INSTANCE,
        &[("SSH_USER_AUTH", path.to_str().unwrap())],
        &["-c", "touch /tmp/escaped"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the shell hung on {}",
        path.display()
    );
    let e = assert_shell_refused(b, &o, "auth_info", "cannot verify the login key");
    let (_, err) = out_str(&o);
    assert!(err.contains(why), "wanted {why:?}:\n{err}");
    assert!(!err.contains("SECRET"), "file content shown:\n{err}");
    assert!(!e.raw.contains("SECRET"), "file content logged: {}", e.raw);
    assert_not_created(&escaped);
    assert_eq!(b.session_starts(), before, "a session started");
    let ok = b.local_shell(INSTANCE, &[], &["-c", "echo still-ok"]);
    assert_eq!(out_str(&ok).0, "still-ok\n", "{:?}", out_str(&ok));
}

#[test]
fn env_ssh_user_auth_symlink() {
    let (b, i) = shell_world();
    let good = b.auth_info(&b.key, "target");
    let link = b.auth_dir().join("link");
    symlink(&good, &link).unwrap();
    hostile_auth_info(&b, &i, &link, "symbolic links");
}

#[test]
fn env_ssh_user_auth_fifo() {
    let (b, i) = shell_world();
    let fifo = b.auth_dir().join("fifo");
    util::run_ok(Command::new("mkfifo").arg(&fifo));
    let s = b.host.ids().session;
    util::set_owner_mode(&fifo, 0o600, s, s);
    hostile_auth_info(&b, &i, &fifo, "not a regular file");
}

#[test]
fn env_ssh_user_auth_char_device() {
    // Issue 12: the setuid shell used to open the file before checking its
    // type, so a local user with the session uid could make host root open
    // any device node. /dev/null's numbers here; the inotify watch proves
    // it is never opened (see etc_passwd_is_a_character_device).
    let (b, i) = shell_world();
    let dev = b.auth_dir().join("dev");
    nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let s = b.host.ids().session;
    util::set_owner_mode(&dev, 0o600, s, s);
    let watch = OpenWatch::new(&dev);
    hostile_auth_info(&b, &i, &dev, "not a regular file");
    assert!(!watch.opened(), "porthole-shell opened the device node");
    drop(fs::File::open(&dev).unwrap());
    assert!(
        watch.opened(),
        "the watch does not see opens: it proves nothing"
    );
}

#[test]
fn env_ssh_user_auth_huge_file() {
    let (b, i) = shell_world();
    let huge = b.auth_info(&b.key, "huge");
    let mut text = fs::read_to_string(&huge).unwrap();
    text.push_str(&"x".repeat(8 << 20));
    fs::write(&huge, text).unwrap();
    hostile_auth_info(&b, &i, &huge, "too large");
}

#[test]
fn env_ssh_user_auth_another_uids_file() {
    let (b, i) = shell_world();
    // Another account's file naming the right key…
    let plain = b.host.ids().plain;
    let theirs = b.auth_info(&b.key, "theirs");
    util::set_owner_mode(&theirs, 0o644, plain, plain);
    hostile_auth_info(&b, &i, &theirs, "belongs to another user");
    // …and a root-only secret the setuid shell could read but must not show.
    let secret = b.auth_dir().join("root-secret");
    util::write_file(
        &secret,
        format!("SECRET\npublickey {} {}\n", b.key.key_type, b.key.base64),
        0o600,
        0,
        0,
    );
    hostile_auth_info(&b, &i, &secret, "belongs to another user");
}

#[test]
fn env_ssh_original_command_with_newlines() {
    let (b, _i) = shell_world();
    // Through the real client: the lines run inside, in the container, and
    // the audit event keeps them in one escaped field (no forged log line).
    let cmd = "echo one\nhostname\n{\"event\":\"session.start\",\"owner\":\"forged\"}";
    let r = b.ssh(INSTANCE, &[cmd]);
    let out = r.stdout_str();
    assert!(
        out.starts_with(&format!("one\n{INSTANCE}\n")),
        "{}",
        r.describe()
    );
    let starts: Vec<LogEvent> = b
        .host
        .events()
        .into_iter()
        .filter(|e| e.name() == "session.start")
        .collect();
    let e = starts
        .iter()
        .find(|e| e.str("command") == Some(cmd))
        .unwrap_or_else(|| panic!("no session.start with the command: {starts:?}"));
    assert_eq!(e.str("owner"), Some(OWNER));
    assert!(starts.iter().all(|e| e.str("owner") == Some(OWNER)));
    for e in b.host.events() {
        assert!(!e.raw.trim_end().contains('\n'), "raw newline: {}", e.raw);
    }
    b.assert_login_works();
}

#[test]
fn env_ssh_original_command_with_nul() {
    let (b, i) = shell_world();
    // execve carries C strings: whatever follows a NUL in a variable never
    // reaches the shell. A caller that tries anyway runs only the part
    // before the NUL, inside the container.
    let auth = b.auth_info(&b.key, "good");
    let prog = b.marks().join("exec-with-nul");
    let shell = b.host.bin_dir().join("porthole-shell");
    cc(
        &format!(
            "#include <unistd.h>\nint main(void) {{\n\
               char *argv[] = {{\"porthole-shell\", 0}};\n\
               char *envp[] = {{\"USER={INSTANCE}\", \"SSH_USER_AUTH={}\",\n\
                 \"SSH_ORIGINAL_COMMAND=echo before\\0; touch /tmp/after-nul\", 0}};\n\
               execve(\"{}\", argv, envp);\n  return 127;\n}}\n",
            auth.display(),
            shell.display()
        ),
        &prog,
        &[],
    );
    let o = b.as_session_user(&[], &[prog.to_str().unwrap()]);
    let (out, err) = out_str(&o);
    assert!(o.status.success(), "stdout {out}\nstderr {err}");
    assert_eq!(out, "before\n");
    assert_not_created(&i.rootfs().join("tmp/after-nul"));
    b.host.expect_event(
        "session.start with the part before the NUL",
        |e| e.name() == "session.start" && e.str("command") == Some("echo before"),
        WAIT,
    );
    b.assert_login_works();
}

/// The client's TERM (sshd passes it from the pty request) is replaced by
/// a safe default when it is not a terminfo name.
fn hostile_term(term: &str) {
    let (b, i) = shell_world();
    let mut c = b
        .host
        .ssh_cmd(INSTANCE, &b.key)
        .tty(true)
        .args(&["printf '<%s>' \"$TERM\"; hostname"])
        .command();
    c.env("TERM", term);
    let t = util::run_with_timeout(&mut c, None, Duration::from_secs(30));
    let out = util::lossy(&t.output.stdout);
    assert!(t.output.status.success(), "{out}");
    assert!(out.contains(&format!("<xterm>{INSTANCE}")), "{out:?}");
    assert!(
        !out.contains('\u{1b}'),
        "escape reached the session: {out:?}"
    );
    assert_not_created(&i.rootfs().join("tmp/shellshock"));
    let e = b.host.expect_event(
        "session.start with a tty",
        |e| e.name() == "session.start" && e.get("tty") == Some(&json!(true)),
        WAIT,
    );
    assert!(!e.raw.contains('\u{1b}'));
    // The local attacker without a tty: no TERM at all in the session.
    let o = b.local_shell(INSTANCE, &[("TERM", term)], &["-c", "env"]);
    let (out, _) = out_str(&o);
    assert!(o.status.success() && !out.contains("TERM="), "{out}");
    b.assert_login_works();
}

#[test]
fn env_term_with_escape_sequences() {
    hostile_term("\u{1b}]0;pwned\u{7}\u{1b}[2J");
}

#[test]
fn env_term_with_function_definition() {
    hostile_term("() { :; }; touch /tmp/shellshock");
}

// ----- control plane ----------------------------------------------------------------

/// After fresh_secs, a later login asks the control plane again.
fn past_fresh() {
    std::thread::sleep(Duration::from_millis(2100));
}

/// The control plane answers `reply` (hostile): a login whose answer is
/// cached is served from the stale cache, the cache keeps the good answer,
/// and a service without a cached answer is refused with `why` logged.
fn hostile_answer(opts: TestHostOpts, reply: impl Fn() -> Reply, why: &str) {
    let b = bastion_with(opts);
    b.assert_login_works();
    let good = b.cache_bytes();
    past_fresh();
    b.host.control_plane().set_reply(SVC, reply());
    b.assert_login_works();
    b.decision("stale-cache decision", |e| {
        e.str("service") == Some(SVC)
            && e.str("source") == Some("stale-cache")
            && e.str("outcome") == Some("accepted")
    });
    let err = b.host.expect_event(
        "keys.control_plane_error",
        |e| e.name() == "keys.control_plane_error",
        WAIT,
    );
    assert!(err.str("error").unwrap().contains(why), "{}", err.raw);
    assert_eq!(b.cache_bytes(), good, "the cache lost its good answer");
    // No cached answer: refused, and the reason is in the decision.
    let cold = "srv-cold1";
    b.host.control_plane().set_reply(cold, reply());
    let r = b.ssh(cold, &[]);
    assert!(r.denied(), "{}", r.describe());
    let e = b.decision("refusal of the cold service", |e| {
        e.str("service") == Some(cold)
    });
    assert_eq!(e.str("outcome"), Some("refused"));
    assert!(e.str("reason").unwrap().contains(why), "{}", e.raw);
    assert!(!b.cache_file(cold).exists(), "a hostile answer was cached");
}

#[test]
fn control_plane_body_beyond_the_size_cap() {
    hostile_answer(
        probe_opts().set("control_plane.max_body_bytes", 4096),
        || {
            let mut body = web_service(SVC, &[]);
            body["padding"] = json!("x".repeat(64 * 1024));
            Reply::json(&body)
        },
        "larger than 4096 bytes",
    );
}

#[test]
fn control_plane_slow_drip() {
    hostile_answer(
        probe_opts(),
        || Reply::json(&web_service(SVC, &[])).drip(8, Duration::from_millis(300)),
        "control plane unavailable",
    );
}

#[test]
fn control_plane_invalid_utf8() {
    hostile_answer(
        probe_opts(),
        || {
            let mut body = br#"{"service":{"id":"srv-web1","type":"web_service","plan":"starter"},"keys":[{"public_key":"x","owner":""#.to_vec();
            body.extend_from_slice(b"\xff\xfe\xc3");
            body.extend_from_slice(br#""}]}"#);
            Reply::raw(200, body)
        },
        "malformed control-plane answer",
    );
}

#[test]
fn control_plane_wrong_json_types_in_the_document() {
    hostile_answer(
        probe_opts(),
        || Reply::json(&json!({"service": {"id": SVC, "type": 7}, "keys": {"a": 1}})),
        "malformed control-plane answer",
    );
}

/// The control plane lists `hostile` (a key entry) before bob's good key:
/// the hostile one is skipped with `why`, prints nothing, and bob still
/// gets in.
fn hostile_key_entry(hostile: Value, why: &str) -> Bastion {
    let b = probe_bastion();
    let bob = b.host.new_key(KeyKind::Ed25519, "bob");
    let body = json!({
        "service": {"id": SVC, "type": "web_service", "plan": "starter"},
        "keys": [hostile, KeySpec::new(&bob, "bob@example.com").to_json()],
    });
    b.host.control_plane().set_body(SVC, &body);
    let r = b.ssh(SVC, &[]);
    assert!(r.denied(), "{}", r.describe());
    let skipped = b.host.expect_event(
        "keys.skipped",
        |e| e.name() == "keys.skipped" && e.u64("index") == Some(0),
        WAIT,
    );
    assert!(
        skipped.str("reason").unwrap().contains(why),
        "{}",
        skipped.raw
    );
    let hook = b.keys_hook(SVC, &b.key);
    assert!(
        hook.output.stdout.is_empty(),
        "lines printed for the hostile entry: {}",
        util::lossy(&hook.output.stdout)
    );
    let r = b.host.ssh(SVC, &bob, &[]);
    assert!(
        r.success() && r.stdout_str().contains(AUTH_PROBE_OK),
        "{}",
        r.describe()
    );
    b.decision("bob accepted", |e| {
        e.str("owner") == Some("bob@example.com") && e.str("outcome") == Some("accepted")
    });
    b
}

#[test]
fn public_key_smuggling_a_command_option() {
    let key = probe_bastion_key_line();
    hostile_key_entry(
        json!({"public_key": format!("command=\"touch /tmp/pwned\" {key}"), "owner": "mallory"}),
        "options before the key type",
    );
}

#[test]
fn public_key_smuggling_a_newline() {
    let key = probe_bastion_key_line();
    hostile_key_entry(
        json!({"public_key": format!("{key} x\ncommand=\"touch /tmp/pwned\" {key}"), "owner": "mallory"}),
        "line break",
    );
}

/// A valid ed25519 public key line: it parses, so only the smuggled text
/// can be why its entry is skipped.
fn probe_bastion_key_line() -> String {
    fake_ed25519(7)
}

/// A syntactically valid ed25519 public key derived from `seed`.
fn fake_ed25519(seed: u32) -> String {
    use ssh_key::public::{Ed25519PublicKey, KeyData};
    let mut bytes = [0u8; 32];
    for (n, b) in bytes.iter_mut().enumerate() {
        *b = (seed.wrapping_mul(2654435761).rotate_left(n as u32) & 0xff) as u8 ^ n as u8;
    }
    ssh_key::PublicKey::new(KeyData::Ed25519(Ed25519PublicKey(bytes)), "")
        .to_openssh()
        .unwrap()
}

#[test]
fn key_owner_smuggling_a_newline() {
    let b = probe_bastion();
    let owner = "alice\nrestrict ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE mallory";
    b.host
        .control_plane()
        .set_body(SVC, &web_service(SVC, &[KeySpec::new(&b.key, owner)]));
    let hook = b.keys_hook(SVC, &b.key);
    let out = util::lossy(&hook.output.stdout);
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert!(out.starts_with("restrict,pty ssh-ed25519 "), "{out:?}");
    assert!(
        !out.contains(" mallory") && out.contains("alice_restrict"),
        "{out:?}"
    );
    b.decision("decision with the raw owner kept in one field", |e| {
        e.str("owner") == Some(owner)
    });
    b.assert_login_works();
}

#[test]
fn ten_thousand_keys() {
    let b = bastion_with(TestHostOpts::auth_probe().timeout_ms(5000));
    let mut keys: Vec<Value> = (0..10_000)
        .map(|n| json!({"public_key": fake_ed25519(n), "owner": format!("user{n}@example.com")}))
        .collect();
    keys.push(KeySpec::new(&b.key, OWNER).to_json());
    let body =
        json!({"service": {"id": SVC, "type": "web_service", "plan": "starter"}, "keys": keys});
    b.host.control_plane().set_body(SVC, &body);
    let started = Instant::now();
    b.assert_login_works();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "login took {:?}",
        started.elapsed()
    );
    // The hook prints only the offered key's line, not 10 001 lines.
    let hook = b.keys_hook(SVC, &b.key);
    assert_eq!(util::lossy(&hook.output.stdout).lines().count(), 1);
    let e = b.decision("accepted among 10 001 keys", |e| {
        e.str("owner") == Some(OWNER) && e.str("outcome") == Some("accepted")
    });
    assert_eq!(e.u64("lines"), Some(1));
    let other = b.host.new_key(KeyKind::Ed25519, "stranger");
    assert!(b.host.ssh(SVC, &other, &[]).denied());
}

#[test]
fn duplicate_keys() {
    // Regression: a key listed twice is decided by its first listing alone,
    // by the hook and the session alike; a later listing can neither widen
    // access nor name another owner.
    let b = bastion();
    let _i = Instance::start(&b.host, SVC, "aaaaa", InstanceOpts::default().app_user());
    let listings = |first: Value| {
        json!({
            "service": {"id": SVC, "type": "web_service", "plan": "starter"},
            "keys": [
                first,
                KeySpec::new(&b.key, OWNER).to_json(),
                KeySpec::new(&b.key, "bob@example.com").to_json(),
            ],
        })
    };
    // A malformed first listing (bad from= pattern) decides: no line at all.
    b.host.control_plane().set_body(
        SVC,
        &listings(json!({"public_key": b.key.public_line, "owner": "mallory@example.com", "from": ["bad pattern!"]})),
    );
    let hook = b.keys_hook(SVC, &b.key);
    let out = util::lossy(&hook.output.stdout);
    assert_eq!(out.trim(), "", "the first listing decides: {out}");
    for index in [1, 2] {
        let e = b.host.expect_event(
            "keys.skipped duplicate",
            |e| e.name() == "keys.skipped" && e.u64("index") == Some(index),
            WAIT,
        );
        assert!(e.str("reason").unwrap().contains("entry 0"), "{}", e.raw);
    }
    // A usable first listing: one line, its owner owns the session.
    b.host
        .control_plane()
        .set_body(SVC, &listings(KeySpec::new(&b.key, OWNER).to_json()));
    fs::remove_file(b.cache_file(SVC)).ok();
    let hook = b.keys_hook(SVC, &b.key);
    let out = util::lossy(&hook.output.stdout);
    assert_eq!(out.lines().count(), 1, "one line per offered key: {out}");
    assert!(out.trim_end().ends_with(OWNER), "{out}");
    b.assert_session_works(INSTANCE);
    let start = b
        .host
        .expect_event("session.start", |e| e.name() == "session.start", WAIT);
    assert_eq!(start.str("owner"), Some(OWNER), "{}", start.raw);
    assert!(
        !b.host
            .events()
            .iter()
            .any(|e| e.str("owner") == Some("mallory@example.com") && e.name() != "keys.skipped"),
        "the malformed listing never owns anything"
    );
}

#[test]
fn expired_key() {
    let b = bastion();
    let bob = b.host.new_key(KeyKind::Ed25519, "bob");
    b.host.control_plane().set_body(
        SVC,
        &web_service(
            SVC,
            &[
                KeySpec::new(&b.key, OWNER).expires_at("2001-01-01T00:00:00Z"),
                KeySpec::new(&bob, "bob@example.com"),
            ],
        ),
    );
    let r = b.ssh(INSTANCE, &["true"]);
    assert!(r.denied(), "{}", r.describe());
    let skipped = b.host.expect_event(
        "keys.skipped expired",
        |e| e.name() == "keys.skipped" && e.u64("index") == Some(0),
        WAIT,
    );
    assert!(skipped
        .str("reason")
        .unwrap()
        .contains("key expired at 2001-01-01"));
    // Past sshd: the shell itself finds the key no longer allowed in the
    // cached answer, even when handed an auth-info file naming it.
    let o = b.local_shell(INSTANCE, &[], &["-c", "true"]);
    assert_shell_refused(
        &b,
        &o,
        "key_not_listed",
        "the key you logged in with is not (or no longer) allowed for srv-web1",
    );
    assert_eq!(b.session_starts(), 0);
    // Bob's key still decides normally (nothing lost).
    let r = b.host.ssh(INSTANCE, &bob, &["true"]);
    assert!(
        r.stderr_str()
            .contains("srv-web1 has no running instance on this host"),
        "{}",
        r.describe()
    );
}

#[test]
fn future_dated_keys() {
    let b = probe_bastion();
    let far = b.host.new_key(KeyKind::Ed25519, "far");
    b.host.control_plane().set_body(
        SVC,
        &web_service(
            SVC,
            &[
                // Beyond any date sshd can express: skipped, not "no expiry".
                KeySpec::new(&far, "far@example.com").expires_at("99999-01-01T00:00:00Z"),
                KeySpec::new(&b.key, OWNER).expires_at("2999-01-01T00:00:00Z"),
            ],
        ),
    );
    b.assert_login_works();
    let hook = b.keys_hook(SVC, &b.key);
    let out = util::lossy(&hook.output.stdout);
    assert!(
        out.starts_with("restrict,pty,expiry-time=\"29990101000000Z\" "),
        "{out}"
    );
    let r = b.host.ssh(SVC, &far, &[]);
    assert!(r.denied(), "{}", r.describe());
    let skipped = b.host.expect_event(
        "keys.skipped bad expiry",
        |e| e.name() == "keys.skipped" && e.u64("index") == Some(0),
        WAIT,
    );
    assert!(
        skipped
            .str("reason")
            .unwrap()
            .contains("not an RFC 3339 time"),
        "{}",
        skipped.raw
    );
}

#[test]
fn wrong_json_types_in_one_key() {
    let b = probe_bastion();
    let bob = b.host.new_key(KeyKind::Ed25519, "bob");
    let body = json!({
        "service": {"id": SVC, "type": "web_service", "plan": "starter"},
        "keys": [
            {"public_key": 42, "owner": OWNER},
            {"public_key": b.key.public_line, "owner": ["alice"]},
            {"public_key": b.key.public_line, "owner": OWNER, "from": "127.0.0.1"},
            {"public_key": b.key.public_line, "owner": OWNER, "expires_at": 4102444800u64},
            "ssh-ed25519 AAAA",
            KeySpec::new(&bob, "bob@example.com").to_json(),
        ],
    });
    b.host.control_plane().set_body(SVC, &body);
    let r = b.ssh(SVC, &[]);
    assert!(r.denied(), "{}", r.describe());
    for index in 0..5u64 {
        let e = b.host.expect_event(
            &format!("keys.skipped #{index}"),
            |e| e.name() == "keys.skipped" && e.u64("index") == Some(index),
            WAIT,
        );
        assert!(
            e.str("reason").unwrap().contains("invalid type"),
            "{}",
            e.raw
        );
    }
    let r = b.host.ssh(SVC, &bob, &[]);
    assert!(
        r.success() && r.stdout_str().contains(AUTH_PROBE_OK),
        "{}",
        r.describe()
    );
}

// ----- container ---------------------------------------------------------------------

#[test]
fn init_pid_reused_between_resolve_and_entry() {
    use porthole::session::enter::{pin, EnterError};
    use porthole::session::runtime::process_start_time;
    let (b, i) = shell_world();
    let pid = i.init_pid();
    let start = process_start_time(pid).unwrap();
    // The pid now names a different process (another start time).
    assert!(matches!(pin(pid, start + 1), Err(EnterError::Vanished)));
    assert!(matches!(
        pin(pid, start.saturating_sub(1)),
        Err(EnterError::Vanished)
    ));
    assert!(pin(pid, start).is_ok(), "control: the real init pins");
    // The recycled pid is a process of the host, with the right start time
    // (a forged or stale state file): refused, never entered.
    let host_proc = Reaped(Command::new("sleep").arg("1000").spawn().unwrap());
    let hp = host_proc.0.id() as i32;
    let hs = process_start_time(hp).unwrap();
    match pin(hp, hs) {
        Err(EnterError::Host(m)) => {
            assert!(m.contains("shares the host's mount namespace"), "{m}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("pinned a host process as an instance"),
    }
    b.assert_login_works();
}

#[test]
fn init_pid_reused_by_a_host_process_end_to_end() {
    // Regression: a runtime state naming a live host process (recycled init
    // pid) must not be entered: that would run the session on the host.
    let b = bastion();
    let _real = Instance::start(&b.host, SVC, "aaaaa", InstanceOpts::default().app_user());
    b.assert_session_works(INSTANCE);
    let sshd = b.host.sshd_pid().to_string();
    // A process in porthole-shell's own mount namespace (nsenter execs it).
    let host_proc = Reaped(
        Command::new("nsenter")
            .args(["-t", &sshd, "-m", "--", "sleep", "1000"])
            .spawn()
            .unwrap(),
    );
    let hp = host_proc.0.id() as i32;
    let start = util::wait_for(WAIT, || {
        let s = porthole::session::runtime::process_start_time(hp)?;
        let comm = fs::read_to_string(format!("/proc/{hp}/comm")).ok()?;
        (comm.trim() == "sleep").then_some(s)
    })
    .expect("host sleep started");
    let _planted = plant_state_naming(&b, hp, start);
    let escaped = b.host.dir().join("escaped");
    let r = b.ssh(
        "srv-web1-hhhhh",
        &[&format!("touch {}; hostname", escaped.display())],
    );
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    let sentence = format!(
        "cannot enter the instance: process {hp} is not in a container (it shares the host's mount namespace)"
    );
    assert!(r.stderr_str().contains(&sentence), "{}", r.describe());
    let e = b.rejected("enter_failed");
    assert_eq!(e.str("message"), Some(sentence.as_str()));
    assert_not_created(&escaped);
    b.assert_login_works();
}

#[test]
fn container_dies_between_resolve_and_setns() {
    use porthole::session::enter::{pidfd_alive, pin, EnterError};
    let (b, i) = shell_world();
    let pid = i.init_pid();
    let start = porthole::session::runtime::process_start_time(pid).unwrap();
    let pinned = pin(pid, start).expect("pin the live init");
    assert!(pidfd_alive(&pinned.pidfd));
    i.kill();
    // Everything read through the pin now says "vanished", and so does a
    // new pin of the same pid: the entry stops with the user's sentence.
    // (Until its parent reaps it the init is a zombie: wait for that.)
    assert!(
        util::wait_for(WAIT, || (!pidfd_alive(&pinned.pidfd)).then_some(())).is_some(),
        "the killed init is still alive"
    );
    assert!(matches!(
        pinned.read_proc("status"),
        Err(EnterError::Vanished)
    ));
    let again = pin(pid, start);
    assert!(matches!(again, Err(EnterError::Vanished)));
    assert_eq!(
        again.err().unwrap().to_string(),
        "the instance stopped while connecting"
    );
    // End to end: the stopped instance is not chosen; the user is told.
    let r = b.ssh(INSTANCE, &["true"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr_str()
            .contains("instance srv-web1-aaaaa is not running"),
        "{}",
        r.describe()
    );
    b.rejected("no_instance");
    // Nothing lost: another instance of the service still works.
    let _other = Instance::start(&b.host, SVC, "bbbbb", InstanceOpts::default().app_user());
    b.assert_session_works("srv-web1-bbbbb");
}

/// A host directory with a marker file a session must never see.
fn host_secret_dir(b: &Bastion) -> PathBuf {
    let d = b.host.dir().join("host-secret");
    util::mkdir(&d, 0o755, 0, 0);
    util::write_file(
        &d.join("passwd"),
        "app:x:1000:1000:HOSTLEAK:/hostleak-home:/bin/sh\nroot:x:0:0:HOSTLEAK:/hostleak:/bin/sh\n",
        0o644,
        0,
        0,
    );
    util::write_file(&d.join("HOSTLEAK-file"), "HOSTLEAK\n", 0o644, 0, 0);
    d
}

/// The session runs in the container as uid 1000 with HOME / and says
/// the user has no passwd entry; nothing of the host shows.
fn session_without_passwd_entry(b: &Bastion) {
    let r = b.ssh(INSTANCE, &["hostname; id -u; echo \"HOME=$HOME\"; pwd"]);
    assert!(r.success(), "{}", r.describe());
    assert_eq!(
        r.stdout_str(),
        format!("{INSTANCE}\n1000\nHOME=/\n/\n"),
        "{}",
        r.describe()
    );
    assert!(
        r.stderr_str()
            .contains("uid 1000 has no entry in the instance's /etc/passwd"),
        "{}",
        r.describe()
    );
    assert!(!r.stdout_str().contains("HOSTLEAK") && !r.stderr_str().contains("HOSTLEAK"));
    let e = b.host.expect_event(
        "session.start as uid 1000",
        |e| e.name() == "session.start" && e.u64("uid") == Some(1000),
        WAIT,
    );
    assert!(!e.raw.contains("HOSTLEAK"));
}

#[test]
fn etc_passwd_symlinked_to_a_host_file() {
    let (b, i) = shell_world();
    let secret = host_secret_dir(&b).join("passwd");
    let passwd = i.rootfs().join("etc/passwd");
    // Absolute, and relative with enough ".." to leave any root.
    for target in [
        secret.clone(),
        PathBuf::from(format!("../../../../../../../../..{}", secret.display())),
    ] {
        let _ = fs::remove_file(&passwd);
        symlink(&target, &passwd).unwrap();
        session_without_passwd_entry(&b);
    }
}

#[test]
fn etc_passwd_missing() {
    let (b, i) = shell_world();
    host_secret_dir(&b);
    fs::remove_file(i.rootfs().join("etc/passwd")).unwrap();
    session_without_passwd_entry(&b);
}

#[test]
fn home_symlinked_out_of_the_container() {
    let (b, i) = shell_world();
    let secret = host_secret_dir(&b);
    let home = i.rootfs().join("home/app");
    fs::remove_dir_all(&home).unwrap();
    symlink(&secret, &home).unwrap();
    let r = b.ssh(INSTANCE, &["pwd; ls; hostname"]);
    assert!(r.success(), "{}", r.describe());
    assert!(!r.stdout_str().contains("HOSTLEAK"), "{}", r.describe());
    assert!(r.stdout_str().starts_with("/\n"), "{}", r.describe());
    assert!(r.stdout_str().ends_with(&format!("{INSTANCE}\n")));
    assert!(
        r.stderr_str()
            .contains("home directory /home/app is not usable; starting in /"),
        "{}",
        r.describe()
    );
    b.host.expect_event(
        "session.start",
        |e| e.name() == "session.start" && e.str("instance") == Some(INSTANCE),
        WAIT,
    );
    // A relative escape resolves inside the container too.
    fs::remove_file(&home).unwrap();
    symlink(format!("../../../../../../..{}", secret.display()), &home).unwrap();
    let r = b.ssh(INSTANCE, &["pwd; ls"]);
    assert!(
        r.success() && !r.stdout_str().contains("HOSTLEAK"),
        "{}",
        r.describe()
    );
}

#[test]
fn no_bin_sh_in_the_container() {
    let (b, i) = shell_world();
    let sh = i.rootfs().join("bin/sh");
    fs::remove_file(&sh).unwrap();
    let r = b.ssh(INSTANCE, &["touch /tmp/ran"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    let sentence = "instance srv-web1-aaaaa has no usable shell (/bin/sh is missing)";
    assert!(r.stderr_str().contains(sentence), "{}", r.describe());
    let e = b.rejected("no_shell");
    assert_eq!(e.str("message"), Some(sentence));
    assert_not_created(&i.rootfs().join("tmp/ran"));
    symlink("busybox", &sh).unwrap();
    b.assert_login_works();
}

// ----- host state --------------------------------------------------------------------

#[test]
fn corrupt_runtime_state_json() {
    let (b, _i) = shell_world();
    let root = b.host.runc_root();
    let real_state = root.join("srv-web1-aaaaa/state.json");
    let mut planted = Vec::new();
    for (slug, content) in [
        ("bbbbb", b"{not json".to_vec()),
        ("ccccc", vec![0xff; 64]),
        (
            "ddddd",
            br#"{"id":"srv-web1-ddddd","init_process_pid":"1"}"#.to_vec(),
        ),
        (
            "eeeee",
            br#"{"id":"srv-web1-eeeee","init_process_pid":1,"init_process_start":0}"#.to_vec(),
        ),
    ] {
        let d = root.join(format!("srv-web1-{slug}"));
        planted.push(Planted(d.clone()));
        util::mkdir(&d, 0o700, 0, 0);
        util::write_file(&d.join("state.json"), content, 0o600, 0, 0);
    }
    // A state file that is a symlink to the real one (not followed).
    let f = root.join("srv-web1-fffff");
    planted.push(Planted(f.clone()));
    util::mkdir(&f, 0o700, 0, 0);
    symlink(&real_state, f.join("state.json")).unwrap();
    for _ in 0..3 {
        b.assert_session_works_as(SVC, INSTANCE);
    }
    for slug in ["bbbbb", "ccccc", "ddddd", "eeeee", "fffff"] {
        let r = b.ssh(&format!("srv-web1-{slug}"), &["true"]);
        assert_eq!(r.code(), Some(1), "{}", r.describe());
        assert!(
            r.stderr_str().contains(&format!(
                "instance srv-web1-{slug} is not running; running instances: srv-web1-aaaaa"
            )),
            "{}",
            r.describe()
        );
    }
    b.rejected("no_instance");
}

impl Bastion {
    /// `ssh <login> hostname` prints `expect`.
    fn assert_session_works_as(&self, login: &str, expect: &str) {
        let r = self.ssh(login, &["hostname"]);
        assert!(
            r.success() && r.stdout_str().trim() == expect,
            "{}",
            r.describe()
        );
    }
}

#[test]
fn missing_runtime_root() {
    let (b, i) = shell_world();
    let missing = b.host.dir().join("no-such-runtime-root");
    b.host
        .set_config("runtime.roots", json!([missing.display().to_string()]));
    let r = b.ssh(INSTANCE, &["touch /tmp/ran"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    let sentence = format!(
        "no container runtime state found (looked in {})",
        missing.display()
    );
    assert!(r.stderr_str().contains(&sentence), "{}", r.describe());
    let e = b.rejected("no_runtime");
    assert_eq!(e.str("owner"), Some(OWNER));
    assert_not_created(&i.rootfs().join("tmp/ran"));
    assert!(!missing.exists(), "the shell created the runtime root");
    b.host.set_config(
        "runtime.roots",
        json!([b.host.runc_root().display().to_string()]),
    );
    b.assert_login_works();
}

#[test]
fn unreadable_cache_file() {
    let b = probe_bastion();
    b.assert_login_works();
    let cache = b.cache_file(SVC);
    let p = b.host.ids().porthole;
    util::set_owner_mode(&cache, 0o000, p, p);
    past_fresh();
    // The hook cannot read it: logged, asked the control plane, decided.
    b.assert_login_works();
    let e = b
        .host
        .expect_event("keys.cache_error", |e| e.name() == "keys.cache_error", WAIT);
    assert!(
        e.str("error").unwrap().contains("Permission denied"),
        "{}",
        e.raw
    );
    b.decision("fresh decision from the control plane", |e| {
        e.str("source") == Some("api") && e.str("outcome") == Some("accepted")
    });
    // The good answer was written back, readable again.
    let m = fs::metadata(&cache).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid()), (0o600, p));
    let v: Value = serde_json::from_slice(&fs::read(&cache).unwrap()).unwrap();
    assert_eq!(v["status"], "found");
    // With the control plane down and the file unreadable: refused, clearly.
    util::set_owner_mode(&cache, 0o000, p, p);
    b.host.control_plane().stop();
    past_fresh();
    let r = b.ssh(SVC, &[]);
    assert!(r.denied(), "{}", r.describe());
    b.decision("refusal without a usable cache", |e| {
        e.str("outcome") == Some("refused") && e.str("source") == Some("none")
    });
}

#[test]
fn corrupt_cache_file() {
    let b = probe_bastion();
    b.assert_login_works();
    let cache = b.cache_file(SVC);
    let p = b.host.ids().porthole;
    util::write_file(
        &cache,
        b"{\"version\":1,\"fetched_at\":\x00garbage",
        0o644,
        p,
        p,
    );
    // The setuid shell refuses with a sentence rather than guessing.
    let o = b.local_shell(SVC, &[], &["-c", "true"]);
    assert_shell_refused(
        &b,
        &o,
        "cache",
        "cannot read the authorization record of srv-web1",
    );
    let (_, err) = out_str(&o);
    assert!(err.contains("is corrupt"), "{err}");
    // The hook treats it as a miss, asks, and repairs the entry.
    b.assert_login_works();
    let e = b.host.expect_event(
        "keys.cache_error corrupt",
        |e| e.name() == "keys.cache_error",
        WAIT,
    );
    assert!(e.str("error").unwrap().contains("is corrupt"), "{}", e.raw);
    let v: Value = serde_json::from_slice(&fs::read(&cache).unwrap()).unwrap();
    assert_eq!(v["status"], "found");
    assert_eq!(v["body"]["service"]["id"], SVC);
}

#[test]
fn cache_on_a_full_filesystem() {
    let b = probe_bastion();
    b.assert_login_works();
    let good = b.cache_bytes();
    let cache = b.host.cache_dir();
    let cache_s = cache.to_str().unwrap();
    // Full in both senses (no block, no inode: not even the hook's lock
    // file can be created), and only inside the bastion's private mount
    // namespace, never the host's.
    assert_ne!(
        util::mnt_ns(b.host.sshd_pid()),
        util::mnt_ns(std::process::id())
    );
    let p = b.host.ids().porthole;
    let script = format!(
        "set -e; cp -a {c}/{SVC}.json /run/saved.json; \
         mount -n -t tmpfs -o size=64k,nr_inodes=32,mode=0755,uid={p},gid={p} tmpfs {c}; \
         cp -a /run/saved.json {c}/{SVC}.json; \
         dd if=/dev/zero of={c}/fill bs=4k 2>/dev/null || true; \
         i=0; while [ $i -lt 64 ] && touch {c}/inode$i 2>/dev/null; do i=$((i+1)); done; \
         ! touch {c}/probe 2>/dev/null; df {c}",
        c = cache_s
    );
    let o = b.host.in_ns(&["sh", "-c", &script]);
    assert!(o.status.success(), "{:?}", out_str(&o));
    let in_ns_cache = || {
        b.host
            .in_ns(&["cat", &format!("{cache_s}/{SVC}.json")])
            .stdout
    };
    assert_eq!(in_ns_cache(), good);
    // The control plane now also lists bob: the hook must decide with the
    // fresh answer although it cannot store it…
    let bob = b.host.new_key(KeyKind::Ed25519, "bob");
    b.host.control_plane().set_body(
        SVC,
        &web_service(
            SVC,
            &[
                KeySpec::new(&b.key, OWNER),
                KeySpec::new(&bob, "bob@example.com"),
            ],
        ),
    );
    past_fresh();
    let r = b.host.ssh(SVC, &bob, &[]);
    assert!(
        r.success() && r.stdout_str().contains(AUTH_PROBE_OK),
        "{}",
        r.describe()
    );
    let e = b.host.expect_event(
        "keys.cache_error no space",
        |e| e.name() == "keys.cache_error",
        WAIT,
    );
    assert!(
        e.str("error").unwrap().contains("No space left"),
        "{}",
        e.raw
    );
    // …and the old entry is intact, still serving when the plane is down.
    assert_eq!(in_ns_cache(), good, "the old cache entry was damaged");
    b.host.control_plane().stop();
    past_fresh();
    b.assert_login_works();
    b.decision("stale cache served from the full filesystem", |e| {
        e.str("source") == Some("stale-cache") && e.str("owner") == Some(OWNER)
    });
    assert!(
        b.host.ssh(SVC, &bob, &[]).denied(),
        "bob is not in the old answer"
    );
    // No temporary file left behind in the full cache directory.
    let ls = b.host.in_ns(&["ls", "-A", cache_s]);
    let names = out_str(&ls).0;
    assert!(
        names.contains("srv-web1.json") && !names.contains(".tmp"),
        "{names}"
    );
}

#[test]
fn cgroup_write_refused() {
    let (b, i) = shell_world();
    assert_ne!(
        util::mnt_ns(b.host.sshd_pid()),
        util::mnt_ns(std::process::id())
    );
    // Read-only cgroup mounts in the bastion's namespace only.
    let remount = |mode: &str| {
        let o = b.host.in_ns(&[
            "sh",
            "-c",
            &format!(
                "set -e; for m in $(findmnt -rn -t cgroup,cgroup2 -o TARGET); do \
                 mount -n -o remount,bind,{mode} \"$m\"; done"
            ),
        ]);
        assert!(o.status.success(), "{:?}", out_str(&o));
    };
    remount("ro");
    let before = b.session_starts();
    let r = b.ssh(INSTANCE, &["touch /tmp/ran"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr_str().contains("cannot enter the instance: cgroup")
            && r.stderr_str().contains("Read-only file system"),
        "{}",
        r.describe()
    );
    let e = b.rejected("enter_failed");
    assert!(e.str("message").unwrap().contains("Read-only file system"));
    assert_not_created(&i.rootfs().join("tmp/ran"));
    assert_eq!(b.session_starts(), before);
    remount("rw");
    b.assert_login_works();
}

// ----- findings of this catalogue (regressions) ---------------------------------------

#[test]
fn tenant_bundle_annotation_cannot_choose_the_environment() {
    // A tenant-set annotation `bundle=` comes before runc's own label: the
    // session must take its environment from the real bundle, never from a
    // config.json the tenant points at (another container's, a host file).
    let b = bastion();
    let fake = b.host.dir().join("fake-bundle");
    util::mkdir(&fake, 0o755, 0, 0);
    util::write_file(
        &fake.join("config.json"),
        json!({"process": {"env": ["HOST_SECRET=leaked", "PATH=/evil"]}}).to_string(),
        0o644,
        0,
        0,
    );
    let i = Instance::start(
        &b.host,
        SVC,
        "aaaaa",
        InstanceOpts::default()
            .app_user()
            .annotation("bundle", fake.to_str().unwrap())
            .env("APP_OWN=yes"),
    );
    let state: Value = serde_json::from_slice(
        &fs::read(b.host.runc_root().join(i.id()).join("state.json")).unwrap(),
    )
    .unwrap();
    let labels: Vec<&str> = state["config"]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|l| l.starts_with("bundle="))
        .collect();
    assert_eq!(
        labels.len(),
        2,
        "the hostile label did not reach runc: {labels:?}"
    );
    let r = b.ssh(INSTANCE, &["env"]);
    assert!(r.success(), "{}", r.describe());
    let out = r.stdout_str();
    assert!(
        !out.contains("HOST_SECRET") && !out.contains("/evil"),
        "{out}"
    );
    assert!(out.contains("APP_OWN=yes"), "{out}");
    b.host.expect_event(
        "session.start",
        |e| e.name() == "session.start" && e.str("instance") == Some(INSTANCE),
        WAIT,
    );
}

#[test]
fn unknown_keys_user_is_refused() {
    // Regression: without the keys user's uid the shell cannot tell a cache
    // file the hook wrote from one anybody wrote; it must refuse, not skip
    // the owner check.
    let (b, i) = shell_world();
    let plain = b.host.ids().plain;
    let cache = b.cache_file(SVC);
    let good = b.cache_bytes();
    // A forged answer (plain user's file) that would let any key in.
    util::set_owner_mode(&cache, 0o644, plain, plain);
    b.host.set_config("session.keys_user", "no-such-keys-user");
    let r = b.ssh(INSTANCE, &["touch /tmp/ran"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    let sentence = "the keys user no-such-keys-user does not exist";
    assert!(r.stderr_str().contains(sentence), "{}", r.describe());
    let e = b.rejected("setup");
    assert!(e.str("message").unwrap().contains(sentence));
    assert_not_created(&i.rootfs().join("tmp/ran"));
    b.host.set_config("session.keys_user", "porthole");
    let p = b.host.ids().porthole;
    util::set_owner_mode(&cache, 0o644, p, p);
    assert_eq!(b.cache_bytes(), good);
    b.assert_login_works();
}

// ----- issue 12: who may claim an instance, what host root opens ---------------------

/// Restores a path's owner and mode when dropped, also when the test fails
/// (so the harness's runc teardown and the next assertions see a sane tree).
struct RestoreMode {
    path: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
}

impl RestoreMode {
    fn of(path: &Path) -> RestoreMode {
        let m = fs::symlink_metadata(path).unwrap();
        RestoreMode {
            path: path.to_owned(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        }
    }
}

impl Drop for RestoreMode {
    fn drop(&mut self) {
        util::set_owner_mode(&self.path, self.mode, self.uid, self.gid);
    }
}

/// Runs `login` with a command that would leave `/tmp/ran` in the rootfs
/// it ran in, and checks the conflict refusal: exit 1, the sentence on
/// stderr and in `session.rejected`, nothing ran in either container.
fn assert_conflict_refused(b: &Bastion, login: &str, sentence: &str, rootfs: &[PathBuf]) {
    let r = b.ssh(login, &["touch /tmp/ran; hostname"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(r.stderr_str().contains(sentence), "{}", r.describe());
    let e = b.host.expect_event(
        "session.rejected instance_conflict",
        |e| {
            e.is(
                "session.rejected",
                &[("reason", "instance_conflict"), ("user", login)],
            )
        },
        WAIT,
    );
    assert!(e.str("message").unwrap().contains(sentence), "{}", e.raw);
    for r in rootfs {
        assert_not_created(&r.join("tmp/ran"));
    }
}

/// The admin's `instance.conflict` event names both claimants and how each
/// claims the instance.
fn assert_conflict_event(b: &Bastion, instance: &str, claimants: &[(&str, &str)]) {
    let e = b.host.expect_event(
        "instance.conflict",
        |e| e.is("instance.conflict", &[("instance", instance)]),
        WAIT,
    );
    assert_eq!(e.severity, 3, "a conflict is logged as an error: {}", e.raw);
    let got: Vec<(String, String)> = e
        .get("containers")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no containers in {}", e.raw))
        .iter()
        .map(|c| {
            (
                c["container"].as_str().unwrap_or("").to_owned(),
                c["claim"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = claimants
        .iter()
        .map(|(i, c)| (i.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want, "{}", e.raw);
    let root = b.host.runc_root().display().to_string();
    assert!(
        e.get("containers")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .all(|c| c["runtime_root"] == root.as_str()),
        "{}",
        e.raw
    );
}

/// The genuine `srv-web1-aaaaa` and an impostor claiming the same instance
/// (`genuine_by`: how the genuine one claims it, "annotation" or
/// "container id"; the impostor always uses the annotation, which a tenant
/// can often set). Both by slug and at random the instance is refused with
/// a sentence naming both containers and a loud admin event; once another
/// instance runs, random logins go there and never to the conflicted one;
/// removing the impostor gives the instance back.
fn instance_claimed_twice(genuine_by: &str, impostor_id: &str) {
    let b = bastion();
    let genuine_opts = match genuine_by {
        "annotation" => InstanceOpts::default().app_user(),
        _ => InstanceOpts::default().app_user().no_annotations(),
    };
    let genuine = Instance::start(&b.host, SVC, "aaaaa", genuine_opts);
    b.assert_session_works(INSTANCE);
    // Same service and slug by annotation, under another container id.
    let impostor = Instance::start(
        &b.host,
        SVC,
        "aaaaa",
        InstanceOpts::default().app_user().id(impostor_id),
    );
    let mut ids = [
        (genuine.id().to_owned(), genuine_by),
        (impostor_id.to_owned(), "annotation"),
    ];
    // Claimants are named in the order the scan finds them: by id.
    ids.sort();
    let sentence = format!(
        "instance {INSTANCE} is claimed by two containers ({}, {}); refusing to choose — ask the platform admins",
        ids[0].0, ids[1].0
    );
    let rootfs = [genuine.rootfs(), impostor.rootfs()];
    let claimants: Vec<(&str, &str)> = ids.iter().map(|(i, c)| (i.as_str(), *c)).collect();

    // By slug.
    assert_conflict_refused(&b, INSTANCE, &sentence, &rootfs);
    assert_conflict_event(&b, INSTANCE, &claimants);
    // At random, with every instance of the service conflicted.
    assert_conflict_refused(&b, SVC, &sentence, &rootfs);

    // Another, unconflicted instance: random logins only ever land there.
    let _other = Instance::start(&b.host, SVC, "bbbbb", InstanceOpts::default().app_user());
    for _ in 0..6 {
        b.assert_session_works_as(SVC, "srv-web1-bbbbb");
    }
    assert_conflict_refused(&b, INSTANCE, &sentence, &rootfs);
    let conflicts = b
        .host
        .events()
        .iter()
        .filter(|e| e.is("instance.conflict", &[("instance", INSTANCE)]))
        .count();
    assert!(
        conflicts >= 9,
        "every login of the service reports the conflict (got {conflicts})"
    );

    // Nothing lost: without the impostor the instance is entered again.
    impostor.delete();
    b.assert_session_works(INSTANCE);
}

#[test]
fn instance_claimed_by_annotation_and_by_container_id() {
    // The impostor's id sorts after the genuine one.
    instance_claimed_twice("container id", "zz-impostor");
}

#[test]
fn instance_claimed_by_an_impostor_whose_id_sorts_first() {
    // Before the fix the first claimant by sort order won, silently: an
    // impostor with an id sorting before `srv-web1-aaaaa` got the sessions.
    instance_claimed_twice("container id", "0-impostor");
}

#[test]
fn instance_claimed_by_two_annotations() {
    instance_claimed_twice("annotation", "0-impostor");
}

#[test]
fn runtime_root_not_root_owned_is_ignored() {
    let (b, i) = shell_world();
    let root = b.host.runc_root();
    let _restore = RestoreMode::of(&root);
    let plain = b.host.ids().plain;
    for (mode, uid, why) in [
        (0o700, plain, format!("is owned by uid {plain}, not root")),
        (
            0o777,
            0,
            "is writable by group or others (mode 0777)".to_owned(),
        ),
        (
            0o730,
            0,
            "is writable by group or others (mode 0730)".to_owned(),
        ),
    ] {
        util::set_owner_mode(&root, mode, uid, 0);
        let r = b.ssh(INSTANCE, &["touch /tmp/ran"]);
        assert_eq!(r.code(), Some(1), "{}", r.describe());
        let sentence = format!(
            "the container runtime state on this host ({}) failed its ownership checks; the platform admins have been notified",
            root.display()
        );
        assert!(r.stderr_str().contains(&sentence), "{}", r.describe());
        b.host.expect_event(
            "session.rejected untrusted_runtime",
            |e| {
                e.is("session.rejected", &[("reason", "untrusted_runtime")])
                    && e.str("message") == Some(sentence.as_str())
            },
            WAIT,
        );
        let e = b.host.expect_event(
            &format!("runtime.untrusted {why}"),
            |e| e.is("runtime.untrusted", &[("why", &why)]),
            WAIT,
        );
        assert_eq!(e.str("path"), Some(root.to_str().unwrap()), "{}", e.raw);
        assert_eq!(e.severity, 3, "{}", e.raw);
        assert_not_created(&i.rootfs().join("tmp/ran"));
    }
    util::set_owner_mode(&root, 0o700, 0, 0);
    b.assert_login_works();
}

#[test]
fn container_dir_or_state_file_not_root_owned_is_ignored() {
    let (b, a) = shell_world();
    let _other = Instance::start(&b.host, SVC, "bbbbb", InstanceOpts::default().app_user());
    let dir = b.host.runc_root().join(a.id());
    let state = dir.join("state.json");
    let _restore_dir = RestoreMode::of(&dir);
    let _restore_state = RestoreMode::of(&state);
    let plain = b.host.ids().plain;
    let file_mode = fs::metadata(&state).unwrap().mode() & 0o7777;
    let dir_mode = fs::metadata(&dir).unwrap().mode() & 0o7777;
    for (path, mode, uid, why) in [
        (
            &state,
            file_mode,
            plain,
            format!("is owned by uid {plain}, not root"),
        ),
        (
            &state,
            0o666,
            0,
            "is writable by group or others (mode 0666)".to_owned(),
        ),
        (
            &dir,
            0o777,
            0,
            "is writable by group or others (mode 0777)".to_owned(),
        ),
        (
            &dir,
            dir_mode,
            plain,
            format!("is owned by uid {plain}, not root"),
        ),
    ] {
        let restore = RestoreMode::of(path);
        util::set_owner_mode(path, mode, uid, 0);
        // The container is not there for porthole: not by slug, not at random.
        let r = b.ssh(INSTANCE, &["touch /tmp/ran"]);
        assert_eq!(r.code(), Some(1), "{}", r.describe());
        assert!(
            r.stderr_str().contains(
                "instance srv-web1-aaaaa is not running; running instances: srv-web1-bbbbb"
            ),
            "{}",
            r.describe()
        );
        let e = b.host.expect_event(
            &format!("runtime.untrusted {} {why}", path.display()),
            |e| {
                e.is(
                    "runtime.untrusted",
                    &[("path", path.to_str().unwrap()), ("why", &why)],
                )
            },
            WAIT,
        );
        assert!(
            e.str("message")
                .unwrap()
                .contains("its containers are ignored"),
            "{}",
            e.raw
        );
        for _ in 0..3 {
            b.assert_session_works_as(SVC, "srv-web1-bbbbb");
        }
        assert_not_created(&a.rootfs().join("tmp/ran"));
        drop(restore);
    }
    b.assert_session_works(INSTANCE);
}

/// `/etc/passwd` in the image replaced by `node` (created by `make`); the
/// session is refused with the sentence, the admin told, nothing ran.
fn passwd_special_file_refused(b: &Bastion, i: &Instance, kind: &str) {
    let r = b.ssh(INSTANCE, &["touch /tmp/ran"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    let sentence = format!(
        "/etc/passwd in the instance is not a regular file (it is {kind}); porthole does not open it"
    );
    assert!(r.stderr_str().contains(&sentence), "{}", r.describe());
    let e = b.rejected("container_file");
    assert_eq!(e.str("message"), Some(sentence.as_str()));
    let e = b.host.expect_event(
        "instance.untrusted_file",
        |e| e.is("instance.untrusted_file", &[("instance", INSTANCE)]),
        WAIT,
    );
    assert_eq!(e.str("container"), Some(i.id()));
    assert_eq!(e.str("message"), Some(sentence.as_str()));
    assert_not_created(&i.rootfs().join("tmp/ran"));
}

#[test]
fn etc_passwd_is_a_fifo() {
    let (b, i) = shell_world();
    let passwd = i.rootfs().join("etc/passwd");
    let good = fs::read(&passwd).unwrap();
    fs::remove_file(&passwd).unwrap();
    nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    // A writer blocks in open(O_WRONLY) until some process opens the FIFO
    // for reading (O_NONBLOCK or not), then reports it: the probe for
    // "porthole opened the FIFO".
    let opened = b.marks().join("fifo-opened");
    let writer = Reaped(
        Command::new("sh")
            .arg("-c")
            .arg("exec 3>\"$1\"; echo opened > \"$2\"")
            .arg("sh")
            .arg(&passwd)
            .arg(&opened)
            .spawn()
            .unwrap(),
    );
    passwd_special_file_refused(&b, &i, "a FIFO");
    // Also through the setuid shell run directly (no sshd in between).
    let o = b.local_shell(INSTANCE, &[], &[]);
    assert_shell_refused(
        &b,
        &o,
        "container_file",
        "/etc/passwd in the instance is not a regular file",
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_not_created(&opened);
    let mut writer = writer;
    assert!(
        writer.0.try_wait().unwrap().is_none(),
        "the writer must still be blocked in open"
    );
    // Control: a reader's open is what the probe reports.
    let reader = fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&passwd)
        .unwrap();
    assert!(
        util::wait_for(WAIT, || opened.exists().then_some(())).is_some(),
        "the probe did not see a reader: it proves nothing"
    );
    drop(reader);
    drop(writer);
    fs::remove_file(&passwd).unwrap();
    util::write_file(&passwd, &good, 0o644, 0, 0);
    b.assert_login_works();
}

/// An inotify watch for IN_OPEN on one path.
struct OpenWatch(std::os::fd::OwnedFd);

impl OpenWatch {
    fn new(path: &Path) -> OpenWatch {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: no pointers; the returned fd is checked and then owned.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: c is NUL-terminated and outlives the call.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_OPEN) };
        assert!(wd >= 0, "{}", std::io::Error::last_os_error());
        OpenWatch(fd)
    }

    /// Whether any IN_OPEN was reported since the last call.
    fn opened(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 4096];
        // SAFETY: buf is writable for its length; the fd is ours.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        n > 0
    }
}

#[test]
fn etc_passwd_is_a_character_device() {
    let (b, i) = shell_world();
    let passwd = i.rootfs().join("etc/passwd");
    let good = fs::read(&passwd).unwrap();
    fs::remove_file(&passwd).unwrap();
    // /dev/null's numbers: harmless if the test ever fails, and its open
    // always succeeds, so any open of the node would be reported below.
    nix::sys::stat::mknod(
        &passwd,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    // What is proven: fsnotify reports IN_OPEN on the node's inode for every
    // successful open of it, through any mount namespace or path (the
    // session shell reaches it through /proc/PID/root), after the driver's
    // open routine ran; an O_PATH handle, which runs no open routine, is
    // not reported (Linux ≥ 6.5). So no event = the device was never opened.
    let watch = OpenWatch::new(&passwd);
    passwd_special_file_refused(&b, &i, "a character device");
    assert!(!watch.opened(), "porthole-shell opened the device node");
    // Control: an open of the node is seen.
    drop(fs::File::open(&passwd).unwrap());
    assert!(
        watch.opened(),
        "the watch does not see opens: it proves nothing"
    );
    fs::remove_file(&passwd).unwrap();
    util::write_file(&passwd, &good, 0o644, 0, 0);
    b.assert_login_works();
}

#[test]
fn init_in_the_host_pid_namespace_is_refused() {
    use porthole::session::enter::{pin, EnterError};
    let b = bastion();
    let _real = Instance::start(&b.host, SVC, "aaaaa", InstanceOpts::default().app_user());
    b.assert_session_works(INSTANCE);
    // A process with a mount namespace of its own but the host's pid
    // namespace (as a container started with the host's pids would be).
    let host_proc = Reaped(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sleep", "1000"])
            .spawn()
            .unwrap(),
    );
    let hp = host_proc.0.id() as i32;
    let start = util::wait_for(WAIT, || {
        let s = porthole::session::runtime::process_start_time(hp)?;
        let comm = fs::read_to_string(format!("/proc/{hp}/comm")).ok()?;
        (comm.trim() == "sleep").then_some(s)
    })
    .expect("unshared sleep started");
    assert_ne!(util::mnt_ns(hp as u32), util::mnt_ns(std::process::id()));
    let sentence =
        format!("process {hp} is not in a container (it shares the host's pid namespace)");
    match pin(hp, start) {
        Err(EnterError::Host(m)) => assert_eq!(m, sentence),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("pinned a process in the host pid namespace"),
    }
    // End to end, through a (root-owned) runtime state naming it.
    let _planted = plant_state_naming(&b, hp, start);
    let escaped = b.host.dir().join("escaped-pidns");
    let r = b.ssh(
        "srv-web1-hhhhh",
        &[&format!("touch {}; hostname", escaped.display())],
    );
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    let full = format!("cannot enter the instance: {sentence}");
    assert!(r.stderr_str().contains(&full), "{}", r.describe());
    let e = b.rejected("enter_failed");
    assert_eq!(e.str("message"), Some(full.as_str()));
    assert_not_created(&escaped);
    b.assert_login_works();
}

#[test]
fn cgroup_v1_devices_join_is_required() {
    let (b, i) = shell_world();
    let Some(devices) = i.cgroup("devices") else {
        eprintln!("skipped: this host has no cgroup v1 devices hierarchy");
        return;
    };
    // The session is in the instance's devices cgroup (joined, not skipped).
    let r = b.ssh(INSTANCE, &["cat /proc/self/cgroup"]);
    assert!(r.success(), "{}", r.describe());
    let path = r
        .stdout_str()
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls
                .split(',')
                .any(|c| c == "devices")
                .then(|| path.to_owned())
        })
        .expect("a devices line in the session's /proc/self/cgroup");
    // Inside the instance's cgroup namespace its own cgroup reads "/" (one
    // outside it would read "/.."…); without one, the host path.
    assert!(path == "/" || path == devices, "{path} vs {devices}");
    // The devices hierarchy, and only it, read-only in the bastion's
    // namespace: joining it fails, and that refuses the session.
    let remount = |mode: &str| {
        let o = b.host.in_ns(&[
            "sh",
            "-c",
            &format!(
                "set -e; for m in $(findmnt -rn -t cgroup -O devices -o TARGET); do \
                 mount -n -o remount,bind,{mode} \"$m\"; done"
            ),
        ]);
        assert!(o.status.success(), "{:?}", out_str(&o));
    };
    remount("ro");
    let before = b.session_starts();
    let r = b.ssh(INSTANCE, &["touch /tmp/ran"]);
    remount("rw");
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr_str()
            .contains("cannot enter the instance: cgroup /sys/fs/cgroup/devices")
            && r.stderr_str().contains("Read-only file system"),
        "{}",
        r.describe()
    );
    let e = b.rejected("enter_failed");
    assert!(e.str("message").unwrap().contains("devices"), "{}", e.raw);
    assert_not_created(&i.rootfs().join("tmp/ran"));
    assert_eq!(b.session_starts(), before);
    b.assert_login_works();
}

/// Issue 14 (placement is the authority): where the control plane lists a
/// service's instances, a local container of the service it does not list
/// — an impostor on a slug nobody else uses — is never entered: refused by
/// slug with a sentence naming the listed ones, never chosen at random.
#[test]
fn instance_not_listed_by_the_control_plane_is_never_entered() {
    let b = bastion();
    let _listed = Instance::start(&b.host, SVC, "aaaaa", InstanceOpts::default().app_user());
    let _impostor = Instance::start(
        &b.host,
        SVC,
        "zzzzz",
        InstanceOpts::default().app_user().id("impostor-1"),
    );
    // Without placement both are this service's instances (Part 1).
    let r = b.ssh(&format!("{SVC}-zzzzz"), &["hostname"]);
    assert_eq!(
        r.stdout_str().trim(),
        format!("{SVC}-zzzzz"),
        "{}",
        r.describe()
    );
    let mut body = web_service(SVC, &[KeySpec::new(&b.key, OWNER)]);
    body["instances"] = serde_json::json!([{"slug": "aaaaa", "host": "127.0.0.1", "port": 22}]);
    b.host.control_plane().set_body(SVC, &body);
    b.host.set_config("cache.fresh_secs", 0);
    let r = b.ssh(&format!("{SVC}-zzzzz"), &["touch /tmp/entered; hostname"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr_str().contains(&format!(
            "instance {SVC}-zzzzz runs on this host but the platform does not list it for {SVC}; refusing to enter it (listed: {SVC}-aaaaa)"
        )),
        "{}",
        r.describe()
    );
    assert!(!_impostor.rootfs().join("tmp/entered").exists());
    for _ in 0..6 {
        let r = b.ssh(SVC, &["hostname"]);
        assert_eq!(
            r.stdout_str().trim(),
            format!("{SVC}-aaaaa"),
            "{}",
            r.describe()
        );
    }
}

// ----- porthole-web (issue 15) -------------------------------------------

/// Every bad ticket kind: the refusal page with its sentence, the admin's
/// `web.rejected` event with its reason, and no session anywhere; a good
/// ticket still opens the page afterwards.
#[test]
fn web_ticket_expired_replayed_tampered_unsigned_wrong_service_or_key() {
    use base64::Engine;
    use common::web::{node, place, WebShell, SERVICE};
    use porthole::web::ticket::{Claims, Signer};
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let host = node();
    place(&host, &["aaaaa"]);
    let web = WebShell::start(&host);
    let now = u64::try_from(porthole::time::now_unix()).unwrap();
    let claims = |service: &str, iat: u64, exp: u64| Claims {
        service: service.into(),
        instance: None,
        owner: OWNER.into(),
        iat,
        exp,
        jti: porthole::web::ticket::random_hex(16).unwrap(),
    };
    let other_key = web.dir.join("other.key");
    let st = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&other_key)
        .status()
        .unwrap();
    assert!(st.success());
    let other = Signer::load(&other_key).unwrap();
    let good = web.sign(&claims(SERVICE, now, now + 30));
    let parts: Vec<&str> = good.split('.').collect();
    let mut forged = claims(SERVICE, now, now + 30);
    forged.owner = "root@platform".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_value(&forged).unwrap()),
        parts[2]
    );
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        parts[1]
    );
    let used = web.ticket(None);
    assert_eq!(web.page(SERVICE, &used).0, 200);
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "expired",
            web.sign(&claims(SERVICE, now - 120, now - 61)),
            "expired",
            "has expired",
        ),
        ("replayed", used, "replayed", "was used already"),
        (
            "tampered",
            tampered,
            "bad_signature",
            "does not carry the dashboard",
        ),
        ("alg none", unsigned, "unsigned", "is not signed"),
        (
            "wrong service",
            web.sign(&claims("srv-other", now, now + 30)),
            "wrong_service",
            "is for srv-other, not srv-web1",
        ),
        (
            "wrong key",
            other.sign(&claims(SERVICE, now, now + 30)).unwrap(),
            "bad_signature",
            "does not carry",
        ),
        (
            "lifetime over 60 s",
            web.sign(&claims(SERVICE, now, now + 3600)),
            "lifetime_too_long",
            "more than 60 seconds",
        ),
        (
            "garbage",
            "not.a.ticket".into(),
            "malformed",
            "not a valid ticket",
        ),
    ];
    for (name, ticket, reason, sentence) in cases {
        let (st, body) = web.page(SERVICE, &ticket);
        assert_eq!(st, 403, "{name}: {body}");
        assert!(body.contains(sentence), "{name}: {body}");
        assert!(
            !body.contains("\"page\":"),
            "{name}: a refused page carries a grant"
        );
        host.expect_event(
            name,
            |e| e.is("web.rejected", &[("reason", reason), ("service", SERVICE)]),
            WAIT,
        );
    }
    // No ticket at all.
    let r = reqwest::blocking::get(web.url(&format!("/shell/{SERVICE}"))).unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(host
        .events()
        .iter()
        .all(|e| e.name() != "session.start" && e.name() != "web.session.start"));
    // A service without a shell gets the platform's sentence on the page,
    // as over ssh.
    host.control_plane().set_body(
        "srv-site1",
        &v1_body("srv-site1", "static_site", "starter", &[]),
    );
    let (st, body) = web.page("srv-site1", &web.sign(&claims("srv-site1", now, now + 30)));
    assert_eq!(st, 403, "{body}");
    assert!(
        body.contains("static sites have no running instance"),
        "{body}"
    );
    host.expect_event(
        "static site",
        |e| {
            e.is(
                "web.rejected",
                &[("reason", "no_shell"), ("service", "srv-site1")],
            )
        },
        WAIT,
    );
    // A cron job's page offers its temporary instance (issue 16: the
    // reserved slug, started by the node for the terminal).
    host.control_plane().set_body(
        "srv-cron1",
        &v1_body("srv-cron1", "cron_job", "starter", &[]),
    );
    let (st, body) = web.page("srv-cron1", &web.sign(&claims("srv-cron1", now, now + 30)));
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("fresh"), "{body}");
    // Nothing lost: a good ticket opens the page.
    assert_eq!(web.page(SERVICE, &good).0, 200);
}

/// The websocket's hostile inputs: a forged page grant, an instance that is
/// not a slug, an oversized frame, bad resize values and text that is not
/// the protocol. Each closes with its code and no session (or ends the one
/// it arrived in, on the node too); a normal session works afterwards.
#[test]
fn web_socket_forged_grant_oversized_frame_and_bad_resizes() {
    use common::web::{node, place, runtime, Term, WebShell, SERVICE};
    let host = node();
    let _i = Instance::start(&host, SERVICE, "aaaaa", InstanceOpts::default());
    place(&host, &["aaaaa"]);
    let web = WebShell::start(&host);
    let rt = runtime();
    let t = Duration::from_secs(20);
    // Pages are opened over blocking HTTP, outside the runtime.
    let mut grants: Vec<String> = (0..7).map(|_| web.grant(None)).collect();
    let pinned = web.grant(Some("aaaaa"));
    rt.block_on(async {
        for (name, url, reason) in [
            (
                "another instance than the ticket's",
                web.ws_url(&pinned, "bbbbb", 80, 24),
                "instance_not_in_ticket",
            ),
            (
                "forged grant",
                web.ws_url("0123456789abcdef0123456789abcdef", "", 80, 24),
                "page_grant",
            ),
            (
                "instance not a slug",
                web.ws_url(&grants.pop().unwrap(), "..%2Fx", 80, 24),
                "bad_instance",
            ),
        ] {
            let mut term = Term::open(&url).await;
            let (code, _) = term.closed(t).await;
            assert_eq!(code, 4403, "{name}");
            host.expect_event(name, |e| e.is("web.rejected", &[("reason", reason)]), WAIT);
        }
        let big = vec![b'x'; 70 * 1024];
        for (name, send, want) in [
            ("oversized frame", None, 1009),
            (
                "resize cols 0",
                Some(r#"{"type":"resize","cols":0,"rows":24}"#),
                1007,
            ),
            (
                "resize cols 70000",
                Some(r#"{"type":"resize","cols":70000,"rows":24}"#),
                1007,
            ),
            (
                "resize rows as text",
                Some(r#"{"type":"resize","cols":80,"rows":"24;reboot"}"#),
                1007,
            ),
            ("text not json", Some("stty size\r"), 1007),
        ] {
            let mut term = Term::open(&web.ws_url(&grants.pop().unwrap(), "aaaaa", 80, 24)).await;
            term.send(b"echo rea''dy\r").await;
            assert!(
                term.until(t, |s| s.contains("ready")).await,
                "{name}: {}",
                term.screen
            );
            match send {
                Some(text) => term.send_text(text).await,
                None => term.send(&big).await,
            }
            let (code, _) = term.closed(t).await;
            assert_eq!(code, want, "{name}");
            host.expect_event(
                name,
                |e| e.name() == "web.session.end" && e.u64("code") == Some(u64::from(want)),
                WAIT,
            );
        }
        // Nothing lost: a normal session still works.
        let mut term = Term::open(&web.ws_url(&grants.pop().unwrap(), "aaaaa", 80, 24)).await;
        term.send(b"echo fi''ne; exit\r").await;
        assert!(
            term.until(t, |s| s.contains("fine")).await,
            "{}",
            term.screen
        );
        assert_eq!(term.closed(t).await.0, 1000);
    });
    // Every session the node started also ended there.
    let ended = || {
        host.events()
            .iter()
            .filter(|e| e.name() == "session.end")
            .count()
    };
    assert!(
        util::wait_for(WAIT, || (ended() >= 6).then_some(())).is_some(),
        "{}",
        host.log_lines().join("\n")
    );
}

// ----- certificates at a node (issue 14) ------------------------------------------

/// The shell world with the node's side of the fleet enabled: sshd trusts
/// a user CA for srv-* (the drop-in's line) and porthole.toml names it.
/// Returns the CA's private key for the test to sign with.
fn cert_world() -> (Bastion, Instance, ssh_key::PrivateKey, PathBuf) {
    let (mut b, i) = shell_world();
    let ca_path = b.host.dir().join("keys/user_ca");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ca", "-f"])
        .arg(&ca_path)
        .status()
        .unwrap();
    assert!(st.success());
    fs::copy(
        ca_path.with_extension("pub"),
        b.host.dir().join("etc/porthole/user_ca.pub"),
    )
    .unwrap();
    let drop_in = b.host.dir().join("etc/ssh/sshd_config.d/10-porthole.conf");
    let text = fs::read_to_string(&drop_in).unwrap();
    fs::write(
        &drop_in,
        text.replace("\t#TrustedUserCAKeys", "\tTrustedUserCAKeys"),
    )
    .unwrap();
    b.host
        .set_config("fleet.trusted_user_ca", "/etc/porthole/user_ca.pub");
    b.host.restart_sshd();
    let ca = porthole::fleet::cert::load_ca_key(&ca_path).unwrap();
    (b, i, ca, ca_path)
}

/// A certificate for `login` minted like a front door does, written next
/// to the test's keys; returns (key, certificate) paths.
fn hop_files(
    b: &Bastion,
    ca: &ssh_key::PrivateKey,
    login: &str,
    owner: &str,
    fp: &str,
    via: &str,
    stem: &str,
) -> (PathBuf, PathBuf) {
    use porthole::fleet::cert;
    let id = cert::HopIdentity {
        owner: owner.into(),
        fingerprint: fp.into(),
        session_id: "0011223344556677".into(),
        via: via.into(),
    };
    let now = u64::try_from(porthole::time::now_unix()).unwrap();
    let m = cert::mint(
        ca,
        &cert::HopRequest {
            login,
            identity: &id,
            source_address: &[],
        },
        now,
    )
    .unwrap();
    let dir = b.host.dir().join("hops");
    fs::create_dir_all(&dir).unwrap();
    m.write_files(&dir, stem).unwrap()
}

fn cert_ssh(b: &Bastion, login: &str, key: &Path, cert: &Path, args: &[&str]) -> SshRun {
    SshCmd::new(b.host.port(), login, key)
        .option(&format!("CertificateFile={}", cert.display()))
        .args(args)
        .run()
}

#[test]
fn certificate_with_a_key_id_that_is_not_portholes_grammar() {
    let (b, i, _ca, ca_path) = cert_world();
    // Signed by the trusted CA with ssh-keygen (the CA key used for
    // something else, or a hand-made certificate): sshd accepts it, the
    // session shell does not believe a word of it.
    let dir = b.host.dir().join("hops");
    fs::create_dir_all(&dir).unwrap();
    let key = dir.join("handmade");
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca_path)
        .args(["-I", "owner=root fp=x", "-n", INSTANCE, "-V", "-1m:+5m"])
        .arg(key.with_extension("pub"))
        .status()
        .unwrap()
        .success());
    let cert = dir.join("handmade-cert.pub");
    let r = cert_ssh(&b, INSTANCE, &key, &cert, &["touch /tmp/entered"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr_str()
            .contains("this host does not accept the certificate")
            && r.stderr_str().contains("is not porthole's"),
        "{}",
        r.describe()
    );
    let e = b.rejected("certificate");
    assert_eq!(
        e.severity, 4,
        "a warning: the CA signs something porthole did not"
    );
    assert!(!i.rootfs().join("tmp/entered").exists());
}

#[test]
fn certificate_owner_with_terminal_escapes_is_kept_exact_and_shown_escaped() {
    let (b, _i, ca, _) = cert_world();
    let owner = "mallory\u{1b}]0;pwned\u{7}\n\"root\"@example.com";
    let (k, c) = hop_files(&b, &ca, INSTANCE, owner, &b.key.fingerprint, "fd-1", "esc");
    let mut child = SshCmd::new(b.host.port(), INSTANCE, &k)
        .option(&format!("CertificateFile={}", c.display()))
        .args(&["sleep 30"])
        .spawn();
    let start = b.host.expect_event(
        "session.start",
        |e| e.name() == "session.start" && e.str("via") == Some("fd-1"),
        WAIT,
    );
    assert_eq!(start.str("owner"), Some(owner), "exact in the JSON event");
    let out = b.host.in_ns(&[env!("CARGO_BIN_EXE_porthole"), "sessions"]);
    let text = util::lossy(&out.stdout);
    assert!(
        !text.contains('\u{1b}'),
        "raw escape on root's terminal: {text:?}"
    );
    assert!(text.contains("mallory"), "{text}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn certificate_for_a_key_the_control_plane_no_longer_lists() {
    let (b, i, ca, _) = cert_world();
    let gone = format!("SHA256:{}", "Z".repeat(43));
    let (k, c) = hop_files(&b, &ca, INSTANCE, OWNER, &gone, "fd-1", "gone");
    let r = cert_ssh(&b, INSTANCE, &k, &c, &["touch /tmp/entered"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr_str()
            .contains("not (or no longer) allowed for srv-web1"),
        "{}",
        r.describe()
    );
    b.rejected("key_not_listed");
    assert!(!i.rootfs().join("tmp/entered").exists());
    // The web shell's certificates carry no listed key (the dashboard's
    // ticket authorized them): admitted, with via = web.
    let (k, c) = hop_files(&b, &ca, INSTANCE, OWNER, &gone, "web", "web");
    let r = cert_ssh(&b, INSTANCE, &k, &c, &["hostname"]);
    assert!(r.success(), "{}", r.describe());
    assert_eq!(r.stdout_str().trim(), INSTANCE);
}

#[test]
fn certificate_at_a_node_whose_porthole_toml_trusts_no_ca() {
    let (b, i, ca, _) = cert_world();
    // sshd trusts the CA, porthole.toml does not (a half-done setup): the
    // session shell refuses rather than guess whose session it is.
    b.host.set_config("fleet.trusted_user_ca", Value::Null);
    let (k, c) = hop_files(&b, &ca, INSTANCE, OWNER, &b.key.fingerprint, "fd-1", "half");
    let r = cert_ssh(&b, INSTANCE, &k, &c, &["touch /tmp/entered"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr_str()
            .contains("it accepts no hops (fleet.trusted_user_ca is not set)"),
        "{}",
        r.describe()
    );
    b.rejected("certificate");
    assert!(!i.rootfs().join("tmp/entered").exists());
}

// ----- the picker's menu (issue 20) ------------------------------------------

/// A control plane (or a tenant who named their service) puts terminal
/// escapes in the service's name and the key's owner: the picker shows
/// them escaped in the table, the menu and the numbered list, and the
/// session that follows is ordinary.
#[test]
fn picker_service_name_and_owner_with_terminal_escapes_are_shown_escaped() {
    let (b, _i) = shell_world();
    let evil_owner = "mallory\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let evil_name = "api\u{1b}[31mRED\u{202e}txt\u{9b}";
    let mut body = web_service(SVC, &[KeySpec::new(&b.key, evil_owner)]);
    body["service"]["name"] = json!(evil_name);
    b.host.control_plane().set_body(SVC, &body);
    // Without a pty: the table.
    let r = b.host.ssh("srv", &b.key, &[]);
    assert!(r.success(), "{}", r.describe());
    let table = r.stdout_str();
    assert!(
        !table.contains('\u{1b}') && !table.contains('\u{9b}') && !table.contains('\u{202e}'),
        "{table:?}"
    );
    assert!(table.contains("mallory\\u{1b}]0;pwned\\u{7}"), "{table}");
    assert!(
        table.contains("api\\u{1b}[31mRED\\u{202e}txt\\u{9b}"),
        "{table}"
    );
    // --json: JSON's own escaping, and the text kept exact.
    let r = b.host.ssh("srv", &b.key, &["--json"]);
    assert!(!r.stdout_str().contains('\u{1b}'), "{:?}", r.stdout_str());
    let doc: Value = serde_json::from_str(&r.stdout_str()).unwrap();
    assert_eq!(doc["owner"], evil_owner);
    assert_eq!(doc["services"][0]["name"], evil_name);
    // The menu: the picker's own escapes only (none from the name).
    let mut c = b
        .host
        .ssh_cmd("srv", &b.key)
        .tty(true)
        .term("xterm")
        .spawn_pty(24, 80);
    assert!(c.wait_for("[web_service]", WAIT), "{}", c.screen());
    let screen = c.screen();
    assert!(!screen.contains("]0;pwned\u{7}"), "{screen:?}");
    assert!(!screen.contains("\u{1b}[31m"), "{screen:?}");
    assert!(screen.contains("api\\u{1b}[31mRED"), "{screen:?}");
    c.send("\r");
    assert!(c.wait_for("instances of srv-web1", WAIT), "{}", c.screen());
    c.send("\r");
    std::thread::sleep(Duration::from_millis(500));
    c.send("echo HOST=$(hostname)\n");
    assert!(
        c.wait_for(&format!("HOST={INSTANCE}"), WAIT),
        "{}",
        c.screen()
    );
    c.send("exit\n");
    c.wait(WAIT).expect("the client exits");
    // The audit keeps the owner exact in one JSON field.
    let e = b
        .host
        .expect_event("picker.chosen", |e| e.name() == "picker.chosen", WAIT);
    assert_eq!(e.str("owner"), Some(evil_owner));
    assert_eq!(e.str("service"), Some(SVC), "any instance");
    assert!(!e.raw.contains('\u{1b}'));
}

// ----- issue 18: recordings, as root's replay reads them -------------------------------
//
// A recording holds what a tenant's processes printed, and the file may be
// damaged (disk full, a crash, an edit): `porthole replay` and `porthole
// sessions --history` run as root on an admin's terminal. Each case: the
// admin is told what is wrong (with the line), nothing but the
// recording is read, and nothing reaches the terminal that acts on it.

const CAST_ID: &str = "0123456789abcdef";
const CAST_HEADER: &str = r#"{"version":2,"width":80,"height":24,"timestamp":1700000000,"porthole":{"session_id":"0123456789abcdef","owner":"alice@example.com","instance":"srv-web1-aaaaa","mode":"output"}}"#;

/// A root-only configuration whose recording.dir holds `<CAST_ID>.cast`
/// with `body` (unless None), and the admin CLI run against it.
struct Recordings {
    dir: tempfile::TempDir,
}

impl Recordings {
    fn with(body: Option<&[u8]>) -> Recordings {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let rec = dir.path().join("rec");
        fs::create_dir(&rec).unwrap();
        fs::set_permissions(&rec, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(
            dir.path().join("porthole.toml"),
            format!("[recording]\ndir = \"{}\"\n", rec.display()),
        )
        .unwrap();
        if let Some(b) = body {
            fs::write(rec.join(format!("{CAST_ID}.cast")), b).unwrap();
        }
        Recordings { dir }
    }

    fn rec(&self) -> PathBuf {
        self.dir.path().join("rec")
    }

    fn porthole(&self, args: &[&str]) -> (Output, String, String) {
        let o = Command::new(env!("CARGO_BIN_EXE_porthole"))
            .arg("--config")
            .arg(self.dir.path().join("porthole.toml"))
            .args(args)
            .output()
            .unwrap();
        let (out, err) = out_str(&o);
        (o, out, err)
    }

    fn replay(&self, id: &str) -> (Output, String, String) {
        self.porthole(&["replay", id, "--speed", "1000"])
    }
}

use std::os::unix::fs::PermissionsExt;

#[test]
fn replay_recording_truncated_mid_line() {
    let body = format!("{CAST_HEADER}\n[0.1, \"o\", \"before the cut\\r\\n\"]\n[0.2, \"o\", \"aft");
    let r = Recordings::with(Some(body.as_bytes()));
    let (o, out, err) = r.replay(CAST_ID);
    assert!(!o.status.success());
    assert_eq!(out, "before the cut\r\n", "what was whole is played");
    assert!(
        err.contains("line 3 is not a recording event") && err.contains("cut short"),
        "{err}"
    );
    // The history still lists it, as unfinished.
    let (o, out, _) = r.porthole(&["sessions", "--history"]);
    assert!(o.status.success());
    let row = out.lines().find(|l| l.starts_with(CAST_ID)).unwrap();
    assert!(
        row.contains("unfinished") && row.contains("alice@example.com"),
        "{row}"
    );
}

#[test]
fn replay_recording_that_is_not_json() {
    let r = Recordings::with(Some(b"<html><body>502 Bad Gateway</body></html>\n"));
    let (o, out, err) = r.replay(CAST_ID);
    assert!(!o.status.success());
    assert!(out.is_empty(), "{out:?}");
    assert!(err.contains("not an asciicast v2 recording"), "{err}");
    let (o, out, _) = r.porthole(&["sessions", "--history"]);
    assert!(o.status.success());
    assert!(!out.contains(CAST_ID), "left out of the history: {out}");
}

#[test]
fn replay_recording_with_a_huge_line() {
    let mut body = format!("{CAST_HEADER}\n[0.1, \"o\", \"").into_bytes();
    body.extend(std::iter::repeat(b'A').take(64 * 1024 * 1024));
    body.extend_from_slice(b"\"]\n");
    let r = Recordings::with(Some(&body));
    let t = Instant::now();
    let (o, out, err) = r.replay(CAST_ID);
    assert!(!o.status.success());
    assert!(out.is_empty(), "nothing of the line is played");
    assert!(err.contains("line 2 is longer than 1048576 bytes"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stops at the cap, not the end"
    );
}

#[test]
fn replay_recording_with_terminal_answerback_and_title_sequences() {
    // Cursor and attribute reports a terminal answers as if typed, a title,
    // a clipboard write, a DCS request, an 8-bit CSI: all dropped; colours stay.
    let data = "\u{1b}[31mred\u{1b}[0m \u{1b}[6n\u{1b}[c\u{1b}[21t\u{1b}]0;pwned\u{7}\u{1b}]52;c;cm0gLXJmIH4K\u{1b}\\\u{1b}P$q\"p\u{1b}\\\u{9b}6n!";
    let body = format!(
        "{CAST_HEADER}\n[0.1, \"o\", {}]\n",
        serde_json::Value::String(data.into())
    );
    let r = Recordings::with(Some(body.as_bytes()));
    let (o, out, err) = r.replay(CAST_ID);
    assert!(o.status.success(), "{err}");
    assert_eq!(out, "\u{1b}[31mred\u{1b}[0m 6n!");
}

#[test]
fn replay_session_id_with_path_traversal() {
    let r = Recordings::with(None);
    for id in [
        "../../../etc/shadow",
        "0123456789abcdef/../x",
        "0123456789ABCDEG",
        "",
    ] {
        let (o, out, err) = r.replay(id);
        assert!(!o.status.success(), "{id}");
        assert!(out.is_empty());
        assert!(err.contains("is not a session id"), "{id}: {err}");
    }
}

#[test]
fn replay_recording_planted_as_a_symlink() {
    let r = Recordings::with(None);
    symlink("/etc/shadow", r.rec().join(format!("{CAST_ID}.cast"))).unwrap();
    let (o, out, err) = r.replay(CAST_ID);
    assert!(!o.status.success());
    assert!(out.is_empty() && !err.contains("root:"), "{out}{err}");
    assert!(
        err.contains("cannot read") && err.contains("symbolic links"),
        "{err}"
    );
}

#[test]
fn history_with_escape_sequences_in_the_header() {
    let header = CAST_HEADER.replace("alice@example.com", "alice\\u001b]0;pwned\\u0007");
    let body = format!(
        "{header}\n[0.5, \"m\", \"porthole.end {{\\\"reason\\\":\\\"exit\\\\u001b[2J\\\"}}\"]\n"
    );
    let r = Recordings::with(Some(body.as_bytes()));
    let (o, out, err) = r.porthole(&["sessions", "--history"]);
    assert!(o.status.success(), "{err}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(
        out.contains("alice\\e]0;pwned\\x07") && out.contains("exit\\e[2J"),
        "{out}"
    );
}

// ----- hostile SFTP packets (issue 17) ------------------------------------------
//
// porthole-sftp runs inside the instance as its user, so what a hostile
// client can reach is only what that user can; still, every malformed input
// gets a clean SFTP status (never a crash, a hang or a huge allocation), and
// the session and the instance stay usable.

fn sftp_packet(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

const SFTP_INIT: [u8; 5] = [1, 0, 0, 0, 3];

/// The (type, request id, status code) of each reply packet; the status
/// code only for SSH_FXP_STATUS.
fn sftp_replies(mut b: &[u8]) -> Vec<(u8, u32, Option<u32>)> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let len = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        let body = &b[4..4 + len];
        let word = |o: usize| u32::from_be_bytes(body[o..o + 4].try_into().unwrap());
        let (ty, id) = (body[0], if body.len() >= 5 { word(1) } else { 0 });
        out.push((ty, id, (ty == 101).then(|| word(5))));
        b = &b[4 + len..];
    }
    out
}

/// Sends `bytes` on the sftp subsystem of the instance; the raw replies.
fn raw_sftp(b: &Bastion, bytes: Vec<u8>) -> SshRun {
    b.host
        .ssh_cmd(INSTANCE, &b.key)
        .flags(&["-s"])
        .arg("sftp")
        .stdin(bytes)
        .run()
}

/// The normal session after a hostile one: sftp still works, and the
/// session that received the hostile packets ended and was audited.
fn assert_sftp_still_works(b: &Bastion, i: &Instance) {
    let mut input = sftp_packet(&SFTP_INIT);
    let mut rp = vec![16, 0, 0, 0, 9, 0, 0, 0, 1];
    rp.push(b'.');
    input.extend(sftp_packet(&rp));
    let r = raw_sftp(b, input);
    let replies = sftp_replies(&r.output.stdout);
    assert_eq!(
        replies.get(1).map(|r| (r.0, r.1)),
        Some((104, 9)),
        "{}",
        r.describe()
    );
    assert!(i.status().as_deref() == Some("running"));
    b.host.expect_event(
        "session.end of the sftp sessions",
        |e| e.name() == "session.end",
        WAIT,
    );
}

#[test]
fn sftp_packet_with_a_huge_length() {
    let (b, i) = shell_world();
    let mut input = sftp_packet(&SFTP_INIT);
    // 4 GiB announced: refused before anything is allocated for it.
    input.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    input.extend_from_slice(&[3; 64]);
    let r = raw_sftp(&b, input);
    let replies = sftp_replies(&r.output.stdout);
    assert_eq!(replies[0].0, 2, "VERSION first: {}", r.describe());
    // SSH_FX_BAD_MESSAGE (5), then the server ends the session.
    assert_eq!(replies.get(1), Some(&(101, 0, Some(5))), "{}", r.describe());
    assert!(!r.timed_out);
    assert_sftp_still_works(&b, &i);
}

#[test]
fn sftp_packet_of_zero_length() {
    let (b, i) = shell_world();
    let mut input = sftp_packet(&SFTP_INIT);
    input.extend_from_slice(&[0, 0, 0, 0]);
    let r = raw_sftp(&b, input);
    let replies = sftp_replies(&r.output.stdout);
    assert_eq!(replies.get(1), Some(&(101, 0, Some(5))), "{}", r.describe());
    assert_sftp_still_works(&b, &i);
}

#[test]
fn sftp_packet_with_a_malformed_body() {
    let (b, i) = shell_world();
    let mut input = sftp_packet(&SFTP_INIT);
    // OPEN id 6 whose file name claims 4 GiB inside a 10-byte packet.
    input.extend(sftp_packet(&[3, 0, 0, 0, 6, 0xff, 0xff, 0xff, 0xf0, b'a']));
    // A WRITE id 7 to a handle that was never opened.
    let mut w = vec![6, 0, 0, 0, 7, 0, 0, 0, 2, b'4', b'2'];
    w.extend_from_slice(&[0; 8]);
    w.extend_from_slice(&[0, 0, 0, 1, b'x']);
    input.extend(sftp_packet(&w));
    // A valid STAT id 8 afterwards is still answered.
    input.extend(sftp_packet(&[17, 0, 0, 0, 8, 0, 0, 0, 1, b'/']));
    let r = raw_sftp(&b, input);
    let replies = sftp_replies(&r.output.stdout);
    assert_eq!(replies.get(1), Some(&(101, 6, Some(5))), "{}", r.describe());
    assert_eq!(replies.get(2), Some(&(101, 7, Some(4))), "{}", r.describe());
    assert_eq!(
        replies.get(3).map(|r| (r.0, r.1)),
        Some((105, 8)),
        "{}",
        r.describe()
    );
    assert!(r.success(), "{}", r.describe());
    assert_sftp_still_works(&b, &i);
}

#[test]
fn sftp_packet_of_an_unknown_type() {
    let (b, i) = shell_world();
    let mut input = sftp_packet(&SFTP_INIT);
    input.extend(sftp_packet(&[99, 0, 0, 0, 5, 1, 2, 3]));
    // An unknown extension, too.
    let mut ext = vec![200, 0, 0, 0, 6, 0, 0, 0, 12];
    ext.extend_from_slice(b"evil@example");
    input.extend(sftp_packet(&ext));
    let r = raw_sftp(&b, input);
    let replies = sftp_replies(&r.output.stdout);
    // SSH_FX_OP_UNSUPPORTED (8) for both, and the session ends cleanly.
    assert_eq!(replies.get(1), Some(&(101, 5, Some(8))), "{}", r.describe());
    assert_eq!(replies.get(2), Some(&(101, 6, Some(8))), "{}", r.describe());
    assert!(r.success(), "{}", r.describe());
    assert_sftp_still_works(&b, &i);
}

// ----- issue 16: the platform's temporary-instance answers ----------------

const CRON: &str = "srv-cron1";

/// A bastion whose control plane lists alice's key for the cron job
/// `srv-cron1` and answers its `POST …/temporary-instances` with `reply`.
fn temporary_bastion(reply: Reply) -> Bastion {
    let b = bastion();
    b.host.control_plane().set_body(
        CRON,
        &v1_body(CRON, "cron_job", "starter", &[KeySpec::new(&b.key, OWNER)]),
    );
    b.host.control_plane().set_temporary_create(CRON, reply);
    b
}

/// The login is refused with `needle`, a `session.rejected` event with
/// reason `temporary`, and nothing was entered or hopped to.
fn temporary_refused(b: &Bastion, needle: &str) -> String {
    let r = b.ssh(CRON, &["echo ENTERED"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(!r.stdout_str().contains("ENTERED"), "{}", r.describe());
    assert!(
        r.stderr_str().contains(needle),
        "wanted {needle:?}: {}",
        r.describe()
    );
    b.host.expect_event(
        "temporary rejection",
        |e| e.is("session.rejected", &[("reason", "temporary")]),
        WAIT,
    );
    assert!(
        !b.host.events().iter().any(|e| e.name() == "session.start"),
        "a session started"
    );
    r.stderr_str()
}

#[test]
fn temporary_answer_with_a_slug_outside_the_grammar() {
    let b = temporary_bastion(Reply::raw(201, r#"{"slug":"../../etc","host":null}"#));
    let err = temporary_refused(&b, "is not usable");
    assert!(!err.contains("../../etc"), "{err}");
}

#[test]
fn temporary_answer_with_the_reserved_slug() {
    let b = temporary_bastion(Reply::raw(201, r#"{"slug":"fresh"}"#));
    temporary_refused(&b, "is not usable");
}

#[test]
fn temporary_answer_beyond_the_size_cap() {
    let huge = format!(r#"{{"slug":"abcde","pad":"{}"}}"#, "x".repeat(200 * 1024));
    let b = temporary_bastion(Reply::raw(201, huge));
    temporary_refused(&b, "larger than");
}

#[test]
fn temporary_answer_with_a_host_ssh_would_read_as_an_option() {
    let canary = "/tmp/porthole-temporary-host-canary";
    let _ = fs::remove_file(canary);
    let b = temporary_bastion(Reply::raw(
        201,
        json!({"slug": "abcde", "host": format!("-oProxyCommand=touch {canary}")}).to_string(),
    ));
    temporary_refused(&b, "is not usable");
    assert!(!Path::new(canary).exists(), "the host became an ssh option");
}

#[test]
fn temporary_answer_naming_another_host_at_a_node() {
    let b = temporary_bastion(Reply::raw(
        201,
        r#"{"slug":"abcde","host":"node-9.oregon.internal"}"#,
    ));
    let r = b.ssh(CRON, &["echo ENTERED"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(
        r.stderr_str().contains(
            "the platform started srv-cron1-abcde on node-9.oregon.internal, not on this host"
        ),
        "{}",
        r.describe()
    );
    b.host.expect_event(
        "elsewhere",
        |e| e.is("session.rejected", &[("reason", "elsewhere")]),
        WAIT,
    );
    // What the platform started for nothing is given back at once.
    let deleted = util::wait_for(WAIT, || {
        b.host
            .control_plane()
            .temporary_requests()
            .iter()
            .any(|(m, p, _)| m == "DELETE" && p.ends_with("/temporary-instances/abcde"))
            .then_some(())
    });
    assert!(
        deleted.is_some(),
        "{:?}",
        b.host.control_plane().temporary_requests()
    );
}

#[test]
fn container_claiming_the_reserved_temporary_slug_is_no_instance() {
    let b = bastion();
    // A tenant names a container after the temporary spelling.
    let _i = Instance::start(&b.host, SVC, "fresh", InstanceOpts::default().app_user());
    let r = b.ssh(SVC, &["echo ENTERED"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(!r.stdout_str().contains("ENTERED"));
    assert!(
        r.stderr_str()
            .contains("srv-web1 has no running instance on this host"),
        "{}",
        r.describe()
    );
    b.host.expect_event(
        "no instance",
        |e| e.is("session.rejected", &[("reason", "no_instance")]),
        WAIT,
    );
    // `srv-web1-fresh` asks the platform for a temporary instance instead
    // (this one has none to give): the tenant's container is not entered.
    let r = b.ssh("srv-web1-fresh", &["echo ENTERED"]);
    assert_eq!(r.code(), Some(1), "{}", r.describe());
    assert!(!r.stdout_str().contains("ENTERED"));
    assert!(
        r.stderr_str()
            .contains("the platform refused a temporary instance"),
        "{}",
        r.describe()
    );
}
