//! porthole-keys: sshd's AuthorizedKeysCommand (`%u %f %t %k`), run as the
//! unprivileged `porthole` user. Prints the authorized_keys line of the
//! offered key when the control plane lists it for the service.

use clap::Parser;
use porthole::config::{Config, DEFAULT_PATH};
use porthole::keys_hook::{self, Call};
use porthole::log::{Event, Logger, Severity};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "porthole-keys",
    version,
    about = "sshd AuthorizedKeysCommand for porthole service logins"
)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// Refresh the cached answer for the service named by USER if it is no
    /// longer fresh, print nothing (run by session supervisors to close the
    /// sessions of revoked keys). Exit 0 when a fresh answer is cached.
    #[arg(long, conflicts_with_all = ["fingerprint", "key_type", "key"])]
    refresh: bool,
    /// `create` or `delete` a temporary instance of the service named by
    /// USER (delete: its slug follows USER) through the control plane, and
    /// print the answer as one JSON object (run by the session shell; see
    /// src/session/temporary.rs).
    #[arg(long, value_name = "create|delete", conflicts_with_all = ["refresh", "key_type", "key"])]
    temporary: Option<String>,
    /// Login name (%u), or the service with --refresh and --temporary.
    user: String,
    /// Fingerprint of the offered key (%f).
    fingerprint: Option<String>,
    /// Type of the offered key (%t).
    key_type: Option<String>,
    /// Base64 of the offered key (%k).
    key: Option<String>,
}

fn main() {
    let started = Instant::now();
    let args = Args::parse();
    // The name is checked before anything is built from it. Events before
    // the configuration is in hand (a hostile name, an invalid file) go to
    // the log socket the file names, even when the rest of it is invalid: a
    // configured socket other than /dev/log would otherwise never see them.
    let early_log = || {
        let socket = porthole::config::log_socket_hint(&args.config)
            .unwrap_or_else(|| PathBuf::from("/dev/log"));
        Logger::new("porthole-keys", &socket)
    };
    // A service or instance name, or the picker's `srv` (not refreshable).
    let picker = porthole::names::is_picker(args.user.as_bytes()) && !args.refresh;
    if porthole::names::Target::parse(&args.user).is_none() && !picker {
        early_log().emit(
            &Event::new("keys.decision", Severity::Notice)
                .field("user", args.user.as_str())
                .field("outcome", "refused")
                .field("reason", "not a service or instance name"),
        );
        std::process::exit(1);
    }
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            early_log().emit(
                &Event::new("keys.decision", Severity::Error)
                    .field("user", args.user.as_str())
                    .field("outcome", "refused")
                    .field("reason", e.to_string()),
            );
            std::process::exit(1);
        }
    };
    // Backstop: sshd has no timeout for us. Whatever happens, we are gone
    // one second after the budget (SIGALRM's default action ends us).
    let secs = cfg.control_plane.timeout_ms.div_ceil(1000) + 1;
    // SAFETY: restoring SIGALRM's default action (a parent may have
    // ignored or blocked it), then arming the timer.
    unsafe {
        libc::signal(libc::SIGALRM, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGALRM);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::alarm(u32::try_from(secs).unwrap_or(61));
    }
    let log = Logger::new("porthole-keys", &cfg.log.socket);
    if args.refresh {
        let fresh = porthole::names::Target::parse(&args.user)
            .is_some_and(|t| keys_hook::refresh(&cfg, &log, &t, started));
        std::process::exit(if fresh { 0 } else { 1 });
    }
    if let Some(action) = &args.temporary {
        std::process::exit(temporary(&cfg, &log, action, &args, started));
    }
    let call = Call {
        user: args.user,
        fingerprint: args.fingerprint,
        key_type: args.key_type,
        key_base64: args.key,
    };
    let lines = keys_hook::run(&cfg, &log, &call, started);
    let mut out = std::io::stdout().lock();
    let mut text = String::new();
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
        || lines.is_empty()
    {
        std::process::exit(1);
    }
}

/// `--temporary create|delete USER [SLUG]`: one JSON answer on stdout.
fn temporary(cfg: &Config, log: &Logger, action: &str, args: &Args, started: Instant) -> i32 {
    use porthole::keys_hook::temporary::{run, Action};
    let Some(service) = porthole::names::ServiceId::parse(&args.user) else {
        return 2;
    };
    let action = match (action, args.fingerprint.as_deref()) {
        ("create", None) => Action::Create,
        ("delete", Some(slug)) if porthole::names::is_instance_slug(slug) => {
            Action::Delete(slug.to_owned())
        }
        _ => return 2,
    };
    let answer = run(cfg, log, &service, &action, started);
    let mut out = std::io::stdout().lock();
    let ok = writeln!(out, "{answer}").and_then(|()| out.flush()).is_ok();
    if ok {
        0
    } else {
        1
    }
}
