//! porthole-shell: sshd's ForceCommand and the session account's login
//! shell. Installed setuid root (4750 root:porthole-session); hardened the
//! way sudo-rs is: no core dumps, environment captured then wiped, every
//! inherited fd above stderr closed, config only from a root-owned file;
//! and, like runc, it runs from a sealed memfd copy of itself (`sealed`).

use porthole::config::{Config, DEFAULT_PATH};
use porthole::log::Logger;
use porthole::session::sealed;
use porthole::session::shell::{self as session, Handover};
use std::path::Path;

fn harden() {
    // SAFETY: process-wide settings with integer arguments, done before
    // anything else runs (single-threaded).
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let zero: libc::rlimit = std::mem::zeroed();
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        libc::umask(0o077);
        // After the sealed re-exec the kernel names us after the fd
        // (`3`); admins look for porthole-shell in ps and top.
        libc::prctl(libc::PR_SET_NAME, c"porthole-shell".as_ptr(), 0, 0, 0);
    }
}

/// Takes what we need from the (client-influenced) environment, then
/// clears it so nothing of it reaches libc or a child.
fn capture() -> Handover {
    let var = |k: &str| std::env::var(k).ok();
    let args: Vec<String> = std::env::args().collect();
    let dash_c = match args.as_slice() {
        [_, flag, cmd, ..] if flag == "-c" => Some(cmd.clone()),
        _ => None,
    };
    let h = Handover {
        user: var("USER"),
        original_command: var("SSH_ORIGINAL_COMMAND"),
        user_auth: var("SSH_USER_AUTH"),
        term: var("TERM"),
        connection: var("SSH_CONNECTION"),
        dash_c,
        // After the sealed re-exec, current_exe is the memfd; the path we
        // were started from travels in ORIGIN_ENV (set by us, see sealed).
        self_path: if sealed::is_sealed_self() {
            var(sealed::ORIGIN_ENV)
        } else {
            std::env::current_exe()
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        },
        real_uid: nix::unistd::getuid().as_raw(),
        // SAFETY: isatty on fd 0 has no memory effects.
        stdin_is_tty: unsafe { libc::isatty(0) } == 1,
    };
    // SAFETY: single-threaded; nobody holds pointers into the environment.
    unsafe { libc::clearenv() };
    h
}

fn main() {
    harden();
    // Before anything else: from here on /proc/self/exe is a sealed memfd,
    // never the host file a process in a container could reopen.
    if let Err(e) = sealed::ensure_sealed() {
        let socket = Config::load(Path::new(DEFAULT_PATH))
            .map(|c| c.log.socket)
            .unwrap_or_else(|_| "/dev/log".into());
        Logger::syslog_only("porthole-shell", &socket).emit(
            &porthole::log::Event::new("session.rejected", porthole::log::Severity::Error)
                .field("reason", "sealed_exec")
                .field("message", e.to_string()),
        );
        eprintln!("porthole: SSH is not available on this host right now ({e}); the platform team has been notified");
        std::process::exit(1);
    }
    let handover = capture();
    let euid = nix::unistd::geteuid().as_raw();
    if let Err(msg) = session::self_check(handover.real_uid, euid) {
        eprintln!("porthole: {msg}");
        // The admin hears of it too: someone ran the shell outside sshd (or
        // it lost its setuid bit). Reading the config is harmless here:
        // either we are unprivileged or the caller is root already.
        let socket = Config::load(Path::new(DEFAULT_PATH))
            .map(|c| c.log.socket)
            .unwrap_or_else(|_| "/dev/log".into());
        Logger::syslog_only("porthole-shell", &socket).emit(
            &porthole::log::Event::new("session.rejected", porthole::log::Severity::Warning)
                .field("user", handover.user.as_deref().unwrap_or(""))
                .field("reason", "not_sshd")
                .field("uid", handover.real_uid)
                .field("message", msg.as_str()),
        );
        std::process::exit(1);
    }
    let cfg = match Config::load(Path::new(DEFAULT_PATH)) {
        Ok(c) => c,
        Err(e) => {
            let log = Logger::syslog_only("porthole-shell", Path::new("/dev/log"));
            log.emit(
                &porthole::log::Event::new("session.rejected", porthole::log::Severity::Error)
                    .field("reason", "config")
                    .field("message", e.to_string()),
            );
            eprintln!("porthole: SSH is not available on this host right now (configuration error); the platform team has been notified");
            std::process::exit(1);
        }
    };
    let log = Logger::syslog_only("porthole-shell", &cfg.log.socket);
    std::process::exit(session::run(&cfg, &log, &handover));
}
