//! The session shell's side of the picker (`ssh srv@host`, issue 20).
//!
//! Steps: learn the key from sshd's auth info, read the cached list of the
//! services it may enter (written by the keys hook, trusted only when the
//! keys user's), add the running instances (placement, or the local
//! runtime scan, which needs root), and run `porthole-picker` as the
//! session account with the client's terminal. Its one answer line is
//! parsed strictly and checked again against the cache as it is now; the
//! service's own answer is brought up to date, and the login continues as
//! an ordinary login to `<service>[-<slug>]` (same authorization, limits,
//! audit, sentences, hop) — the picker decides nothing.
//!
//! The picker never holds privilege: it is exec'd after setgroups/
//! setresgid/setresuid to the session account, with a minimal environment,
//! only its stdio, the menu (fd 3, a memfd) and the choice pipe (fd 4).

use crate::config::{Config, Role};
use crate::control_plane::api::{shell_policy, ShellPolicy};
use crate::control_plane::key_services::{self, KeyService};
use crate::control_plane::keys::{find_listed_key, validate_public_key};
use crate::log::{elapsed_ms, Event, Logger, Severity};
use crate::picker::{Choice, MenuInput, MenuService, Mode};
use crate::session::shell::{
    classify_request, parse_user_auth, read_user_auth, Handover, Identity, Refusal, RefusalReason,
    Request,
};
use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

/// How the picker's part of a login ended.
#[derive(Debug)]
pub enum Picked {
    /// Continue as an ordinary login with this hand-over (its `USER` is
    /// the chosen `<service>[-<slug>]`); the identity names the developer
    /// in a refusal of that login.
    Login(Box<Handover>, Identity),
    /// Nothing to enter: a listing was printed or the menu was left.
    Done(i32),
}

/// A refusal, with who it concerns when the key is known.
pub type PickRefusal = Box<(Refusal, Option<Identity>)>;

fn fail(r: Refusal, who: Option<Identity>) -> PickRefusal {
    Box::new((r, who))
}

fn refuse(reason: RefusalReason, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
        limit: None,
    }
}

/// The key the developer logged in with, and the services it may enter.
struct Known {
    identity: Identity,
    services: Vec<KeyService>,
}

/// Runs the picker part of a `srv` login.
pub fn choose(cfg: &Config, log: &Logger, h: &Handover) -> Result<Picked, PickRefusal> {
    let started = Instant::now();
    let account = nix::unistd::User::from_name(&cfg.session.account)
        .ok()
        .flatten()
        .ok_or_else(|| {
            fail(
                refuse(
                    RefusalReason::Setup,
                    format!("the session account {} does not exist", cfg.session.account),
                ),
                None,
            )
        })?;
    let (uid, gid) = (account.uid.as_raw(), account.gid.as_raw());
    if h.real_uid != uid {
        return Err(fail(
            refuse(
                RefusalReason::WrongUid,
                format!(
                    "porthole-shell may only be run by sshd for the {} account",
                    cfg.session.account
                ),
            ),
            None,
        ));
    }
    let known = known(cfg, h, uid).map_err(|r| fail(r, None))?;
    let who = || Some(known.identity.clone());
    let mode = match classify_request(h, &cfg.session.sftp_server_paths) {
        Request::Sftp => {
            return Err(fail(
                refuse(
                    RefusalReason::Picker,
                    "the service menu has no sftp; name the service: sftp srv-<id>@host",
                ),
                who(),
            ))
        }
        Request::Exec(c) if c.trim() == "--json" => Mode::Json,
        Request::Exec(_) => Mode::Table,
        Request::Shell if !h.stdin_is_tty => Mode::Table,
        Request::Shell => match h.term.as_deref() {
            None | Some("") | Some("dumb") => Mode::Dumb,
            Some(_) => Mode::Menu,
        },
    };
    let input = menu_input(cfg, h, &known);
    let selectable = input.services.iter().filter(|s| s.selectable).count();
    let client = h
        .connection
        .as_deref()
        .and_then(|c| c.split(' ').next())
        .map(str::to_owned);
    log.emit(
        &Event::new("picker.shown", Severity::Info)
            .field("owner", known.identity.owner.as_str())
            .field("fingerprint", known.identity.fingerprint.as_str())
            .field("mode", mode.as_str())
            .field("services", input.services.len())
            .field("selectable", selectable)
            .opt("client", client.clone())
            .field("ms", elapsed_ms(started)),
    );
    let answer = run_picker(cfg, mode, &input, uid, gid).map_err(|e| {
        fail(
            refuse(
                RefusalReason::Picker,
                format!("the service menu is not available right now ({e}); the platform team has been notified"),
            ),
            who(),
        )
    })?;
    let (status, answer) = answer;
    if !mode.interactive() {
        // A listing: the picker's own exit status (it said why on stderr).
        return Ok(Picked::Done(status));
    }
    let Some(answer) = answer.filter(|a| !a.is_empty()) else {
        // q, Ctrl-C or a closed terminal: nothing chosen, nothing refused.
        return Ok(Picked::Done(0));
    };
    let choice = Choice::parse(&answer).ok_or_else(|| {
        fail(
            refuse(
                RefusalReason::Picker,
                "the service menu gave back no valid choice",
            ),
            who(),
        )
    })?;
    // Checked against the cache as it is now, not as the menu showed it.
    let offered = input
        .services
        .iter()
        .find(|s| s.id == choice.service.as_str() && s.selectable);
    let slug_offered = match (&choice.slug, offered) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(slug), Some(s)) => s.instances.contains(slug),
    };
    let now_known = known_again(cfg, &known);
    let still = now_known
        .as_ref()
        .and_then(|k| k.services.iter().find(|s| s.id == choice.service))
        .map(|s| selectable_reason(cfg, s, &known.identity, client.as_deref()))
        .is_some_and(|why| why.is_none());
    if !slug_offered || !still {
        return Err(fail(
            refuse(
                RefusalReason::KeyNotListed,
                format!(
                    "{} is no longer among the services the key you logged in with may enter",
                    choice.service
                ),
            ),
            who(),
        ));
    }
    let target = choice.target();
    let login = match &target.slug {
        Some(s) => target.service.instance_name(s),
        None => target.service.to_string(),
    };
    log.emit(
        &Event::new("picker.chosen", Severity::Info)
            .field("owner", known.identity.owner.as_str())
            .field("fingerprint", known.identity.fingerprint.as_str())
            .field("service", target.service.as_str())
            .opt(
                "instance",
                target
                    .slug
                    .as_ref()
                    .map(|s| target.service.instance_name(s)),
            )
            .field("mode", mode.as_str())
            .opt("client", client)
            .field("ms", elapsed_ms(started)),
    );
    // The ordinary login reads the service's own answer: bring it up to
    // date (the picker's login never asked for it). A failed refresh is
    // not the answer: the login reads what the cache holds next.
    let _ = crate::session::revoke::refresh_blocking(cfg, &target.service);
    Ok(Picked::Login(
        Box::new(Handover {
            user: Some(login),
            original_command: None,
            dash_c: None,
            ..h.clone()
        }),
        known.identity,
    ))
}

/// The key from the auth info and its services from the cache.
fn known(cfg: &Config, h: &Handover, session_uid: u32) -> Result<Known, Refusal> {
    let path = h.user_auth.as_deref().ok_or_else(|| {
        refuse(
            RefusalReason::AuthInfo,
            "cannot verify the login key: SSH_USER_AUTH is not set (ExposeAuthInfo yes is required)",
        )
    })?;
    let auth = read_user_auth(path, session_uid)?;
    let (key_type, b64) = parse_user_auth(&auth).ok_or_else(|| {
        refuse(
            RefusalReason::AuthInfo,
            "cannot verify the login key: no public key in the auth info",
        )
    })?;
    let key = validate_public_key(&format!("{key_type} {b64}")).map_err(|_| {
        refuse(
            RefusalReason::Picker,
            "the service menu is for your own SSH key; log in with the service's name instead",
        )
    })?;
    let keys_uid = keys_uid(cfg)?;
    let now = crate::time::now_unix();
    let cached = key_services::read_cached(&cfg.cache.dir, &key.fingerprint, Some(keys_uid), now)
        .map_err(|e| {
            refuse(
                RefusalReason::Cache,
                format!("cannot read the list of your key's services: {e}"),
            )
        })?
        .ok_or_else(|| {
            refuse(
                RefusalReason::Cache,
                "no list of your key's services on this host; try again",
            )
        })?;
    let (fetched_at, services) = cached;
    let max_age = i64::try_from(cfg.cache.stale_secs).unwrap_or(i64::MAX);
    if now.saturating_sub(fetched_at) > max_age {
        return Err(refuse(
            RefusalReason::Cache,
            "the list of your key's services is too old; try again",
        ));
    }
    let owner = services
        .iter()
        .find_map(|s| find_listed_key(&s.doc, &key.algorithm, &key.base64, now))
        .map(|(entry, _)| entry.owner.clone())
        .ok_or_else(|| {
            refuse(
                RefusalReason::KeyNotListed,
                "the key you logged in with may enter no service",
            )
        })?;
    Ok(Known {
        identity: Identity {
            owner,
            fingerprint: key.fingerprint,
            key_type: key.algorithm,
            key_base64: key.base64,
        },
        services,
    })
}

/// The list as the cache holds it now (after the menu), for the same key.
fn known_again(cfg: &Config, before: &Known) -> Option<Known> {
    let keys_uid = keys_uid(cfg).ok()?;
    let now = crate::time::now_unix();
    let (fetched_at, services) = key_services::read_cached(
        &cfg.cache.dir,
        &before.identity.fingerprint,
        Some(keys_uid),
        now,
    )
    .ok()??;
    let max_age = i64::try_from(cfg.cache.stale_secs).unwrap_or(i64::MAX);
    (now.saturating_sub(fetched_at) <= max_age).then(|| Known {
        identity: before.identity.clone(),
        services,
    })
}

fn keys_uid(cfg: &Config) -> Result<u32, Refusal> {
    nix::unistd::User::from_name(&cfg.session.keys_user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
        .ok_or_else(|| {
            refuse(
                RefusalReason::Setup,
                format!(
                    "SSH is not available on this host right now: the keys user {} does not exist; the platform team has been notified",
                    cfg.session.keys_user
                ),
            )
        })
}

/// Whether sshd's `from=` would admit `client` for these patterns, when
/// that can be decided here: every pattern a plain IP address or an
/// address/prefix network (no negation, wildcard or host name, no host
/// bits set). `None`: not decidable, so the menu does not offer it.
fn from_admits(patterns: &[String], client: Option<&str>) -> Option<bool> {
    use std::net::IpAddr;
    let ip: IpAddr = client?.parse().ok()?;
    let mut admitted = false;
    for p in patterns {
        let (addr, len) = match p.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
            None => (p.as_str(), None),
        };
        let net: IpAddr = addr.parse().ok()?;
        let (net_bits, ip_bits, width): (u128, Option<u128>, u32) = match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n).into(), Some(u32::from(i).into()), 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), Some(u128::from(i)), 128),
            (IpAddr::V4(n), IpAddr::V6(_)) => (u32::from(n).into(), None, 32),
            (IpAddr::V6(n), IpAddr::V4(_)) => (u128::from(n), None, 128),
        };
        let len = len.unwrap_or(width);
        if len > width {
            return None;
        }
        // The low `width - len` bits (all 128 for `::/0`).
        let host_mask: u128 = 1u128.checked_shl(width - len).map_or(u128::MAX, |b| b - 1);
        if net_bits & host_mask != 0 {
            return None;
        }
        if ip_bits.is_some_and(|i| i & !host_mask == net_bits) {
            admitted = true;
        }
    }
    Some(admitted)
}

/// Why the service cannot be entered from the menu, or `None` when it can.
fn selectable_reason(
    cfg: &Config,
    s: &KeyService,
    identity: &Identity,
    client: Option<&str>,
) -> Option<String> {
    let now = crate::time::now_unix();
    let Some((entry, _)) = find_listed_key(&s.doc, &identity.key_type, &identity.key_base64, now)
    else {
        return Some(format!(
            "the key you logged in with is not (or no longer) allowed for {}",
            s.id
        ));
    };
    if let ShellPolicy::Refused(why) = shell_policy(&s.doc.service) {
        return Some(why);
    }
    if let Some(patterns) = &entry.from {
        // sshd checked the addresses of one of the key's lines, not
        // necessarily this service's: checked here for plain addresses
        // and networks, else left to a direct login.
        match from_admits(patterns, client) {
            Some(true) => {}
            Some(false) => {
                return Some(format!(
                    "your key may enter {} only from other addresses than this connection's",
                    s.id
                ))
            }
            None => {
                return Some(format!(
                "your key may enter {} only from certain addresses; log in with its name instead",
                s.id
            ))
            }
        }
    }
    if cfg.fleet.role == Role::FrontDoor && s.doc.placement().is_none() {
        return Some(format!(
            "the platform does not say where {} runs, so this front door cannot reach it",
            s.id
        ));
    }
    None
}

/// What the menu shows: every listed service, the selectable ones with
/// their running instances.
fn menu_input(cfg: &Config, h: &Handover, known: &Known) -> MenuInput {
    let client = h.connection.as_deref().and_then(|c| c.split(' ').next());
    let mut local: Option<Vec<crate::session::runtime::Instance>> = None;
    let mut services = Vec::new();
    for s in &known.services {
        let reason = selectable_reason(cfg, s, &known.identity, client);
        let instances = if reason.is_some() {
            Vec::new()
        } else if let Some(placed) = s.doc.placement() {
            placed.iter().map(|i| i.slug.clone()).collect()
        } else {
            let scan = local.get_or_insert_with(|| {
                crate::session::runtime::running_instances(
                    &cfg.runtime.roots,
                    &cfg.runtime.service_annotation,
                    &cfg.runtime.instance_annotation,
                )
                .map(|scan| scan.instances)
                .unwrap_or_default()
            });
            let mut slugs: Vec<String> = scan
                .iter()
                .filter(|i| i.service == s.id)
                .map(|i| i.slug.clone())
                .collect();
            slugs.sort();
            slugs.dedup();
            slugs
        };
        services.push(MenuService {
            id: s.id.to_string(),
            name: s.doc.service.name.clone(),
            kind: s.doc.service.kind.clone(),
            selectable: reason.is_none(),
            reason,
            instances,
        });
    }
    let port = h
        .connection
        .as_deref()
        .and_then(|c| c.split(' ').nth(3))
        .and_then(|p| p.parse().ok());
    MenuInput {
        owner: known.identity.owner.clone(),
        host: cfg
            .fleet
            .own_names()
            .into_iter()
            .next()
            .unwrap_or_else(|| "localhost".into()),
        port,
        services,
    }
}

/// Runs `porthole-picker --mode <mode>` as the session account and waits
/// for it; returns its exit status and what it wrote on the choice pipe
/// (at most one line).
fn run_picker(
    cfg: &Config,
    mode: Mode,
    input: &MenuInput,
    uid: u32,
    gid: u32,
) -> Result<(i32, Option<Vec<u8>>), String> {
    let path = crate::session::revoke::check_command(&cfg.session.picker_command)
        .map_err(|e| e.to_string())?;
    let cs = |s: &str| CString::new(s).map_err(|_| "NUL in an argument".to_owned());
    let prog = cs(&path.to_string_lossy())?;
    // The menu leaves when left alone as long as an idle session would be.
    let idle = cfg.limits.idle_timeout_secs.to_string();
    let args = [
        prog.clone(),
        cs("--mode")?,
        cs(mode.as_str())?,
        cs("--idle-secs")?,
        cs(&idle)?,
    ];
    let env = [
        cs("PATH=/usr/bin:/bin")?,
        cs("LANG=C.UTF-8")?,
        cs("HOME=/")?,
    ];
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // The menu: a memfd the picker reads from the start.
    let text = serde_json::to_vec(input).map_err(|e| e.to_string())?;
    // SAFETY: memfd_create with a static NUL-terminated name.
    let mfd = unsafe { libc::memfd_create(c"porthole-menu".as_ptr(), libc::MFD_CLOEXEC) };
    if mfd < 0 {
        return Err(format!("memfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own.
    let mut menu = unsafe { std::fs::File::from_raw_fd(mfd) };
    menu.write_all(&text)
        .and_then(|()| menu.rewind())
        .map_err(|e| format!("menu: {e}"))?;
    let (choice_r, choice_w): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (menu_fd, w_fd) = (menu.as_raw_fd(), choice_w.as_raw_fd());
    // The menu is the picker's: Ctrl-C on a dumb terminal ends it, not us.
    // SAFETY: signal dispositions of this single-threaded process.
    let old = unsafe {
        [
            libc::signal(libc::SIGINT, libc::SIG_IGN),
            libc::signal(libc::SIGQUIT, libc::SIG_IGN),
            libc::signal(libc::SIGTSTP, libc::SIG_IGN),
        ]
    };
    // SAFETY: the shell is single-threaded here; the child only makes
    // async-signal-safe calls on memory prepared above, then execs or
    // _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child of a single-threaded fork.
        unsafe { picker_child(uid, gid, menu_fd, w_fd, &prog, &argv, &envp) }
    }
    drop(choice_w);
    let waited = if pid < 0 {
        Err(format!("fork: {}", std::io::Error::last_os_error()))
    } else {
        let mut st = 0;
        loop {
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(pid, &mut st, 0) };
            if r == pid {
                break Ok(st);
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break Err(format!("wait: {}", std::io::Error::last_os_error()));
            }
        }
    };
    // SAFETY: restoring the dispositions saved above.
    unsafe {
        libc::signal(libc::SIGINT, old[0]);
        libc::signal(libc::SIGQUIT, old[1]);
        libc::signal(libc::SIGTSTP, old[2]);
    }
    let st = waited?;
    if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) >= 126 {
        return Err(format!("{} could not start", path.display()));
    }
    let status = if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        128 + libc::WTERMSIG(st)
    };
    // Non-blocking: a grandchild holding the pipe open must not hang us.
    let _ = nix::fcntl::fcntl(
        choice_r.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut answer = Vec::new();
    let _ = std::fs::File::from(choice_r)
        .take(crate::picker::MAX_CHOICE_LINE as u64 + 1)
        .read_to_end(&mut answer);
    Ok((status, Some(answer)))
}

/// The forked child: drops to the session account, puts the menu on fd 3
/// and the choice pipe on fd 4, closes everything else but stdio, execs.
///
/// # Safety
/// Call only in a freshly forked child of a single-threaded process.
unsafe fn picker_child(
    uid: u32,
    gid: u32,
    menu_fd: i32,
    choice_fd: i32,
    prog: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    // SAFETY: (the whole body) raw system calls on locals and on memory the
    // parent prepared before fork, which stays valid until execve/_exit.
    unsafe {
        let fail = |code: i32| -> ! { libc::_exit(code) };
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for sig in [libc::SIGPIPE, libc::SIGINT, libc::SIGQUIT, libc::SIGTSTP] {
            libc::signal(sig, libc::SIG_DFL);
        }
        // Above 4 first, so that the dup2s below cannot clobber them.
        let m = libc::fcntl(menu_fd, libc::F_DUPFD, 10);
        let c = libc::fcntl(choice_fd, libc::F_DUPFD, 10);
        if m < 0
            || c < 0
            || libc::dup2(m, crate::picker::INPUT_FD) != crate::picker::INPUT_FD
            || libc::dup2(c, crate::picker::CHOICE_FD) != crate::picker::CHOICE_FD
        {
            fail(126);
        }
        if libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32) != 0 {
            for fd in 5..1024 {
                libc::close(fd);
            }
        }
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
            || libc::geteuid() != uid
            || libc::getegid() != gid
        {
            fail(126);
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            fail(126);
        }
        libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(127)
    }
}

#[cfg(test)]
mod tests {
    use super::from_admits;

    fn p(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn from_patterns_are_judged_only_when_they_are_plain_addresses() {
        let c = Some("192.0.2.7");
        assert_eq!(from_admits(&p(&["192.0.2.0/24"]), c), Some(true));
        assert_eq!(from_admits(&p(&["192.0.2.7"]), c), Some(true));
        assert_eq!(
            from_admits(&p(&["10.0.0.0/8", "192.0.2.7/32"]), c),
            Some(true)
        );
        assert_eq!(from_admits(&p(&["10.0.0.0/8"]), c), Some(false));
        assert_eq!(from_admits(&p(&["2001:db8::/32"]), c), Some(false));
        assert_eq!(from_admits(&p(&["0.0.0.0/0"]), c), Some(true));
        assert_eq!(from_admits(&p(&["::/0"]), Some("2001:db8::1")), Some(true));
        assert_eq!(from_admits(&p(&["::/0"]), c), Some(false));
        assert_eq!(
            from_admits(&p(&["2001:db8::/32"]), Some("2001:db8::1")),
            Some(true)
        );
        // Undecidable here: negation, wildcards, names, host bits, junk.
        for bad in [
            &["!192.0.2.7"][..],
            &["192.0.2.*"],
            &["*.example.com"],
            &["gw.example.com"],
            &["192.0.2.7/24"],
            &["192.0.2.0/33"],
            &["192.0.2.0/x"],
        ] {
            assert_eq!(from_admits(&p(bad), c), None, "{bad:?}");
        }
        assert_eq!(from_admits(&p(&["192.0.2.0/24"]), None), None);
        assert_eq!(from_admits(&p(&["192.0.2.0/24"]), Some("junk")), None);
    }
}
