//! `porthole doctor`: checks the whole host setup an admin is responsible
//! for and says, for each broken piece, how to fix it. Every check looks
//! at the real thing (NSS answers, sshd's effective config, file modes,
//! the control plane), not at what the package meant to install.

use crate::config::{Config, ConfigError};
use crate::keys_hook::fetch::{self, FetchError, FetchOutcome};
use crate::names::ServiceId;
use nix::unistd::User;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was found (ok) or what is wrong and how to fix it.
    pub detail: String,
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// Where things are, overridable for tests of the doctor itself.
#[derive(Debug, Clone)]
pub struct Paths {
    pub config: PathBuf,
    pub nsswitch: PathBuf,
    pub sshd: PathBuf,
    pub sshd_config: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            config: crate::config::DEFAULT_PATH.into(),
            nsswitch: "/etc/nsswitch.conf".into(),
            sshd: "/usr/sbin/sshd".into(),
            sshd_config: "/etc/ssh/sshd_config".into(),
        }
    }
}

/// True when `db:` lists `porthole` after `files`.
pub fn nsswitch_line_ok(text: &str, db: &str) -> bool {
    text.lines().any(|l| {
        let l = l.split('#').next().unwrap_or("");
        let Some((k, v)) = l.split_once(':') else {
            return false;
        };
        if k.trim() != db {
            return false;
        }
        let words: Vec<&str> = v
            .split_whitespace()
            .filter(|w| !w.starts_with('['))
            .collect();
        match (
            words.iter().position(|w| *w == "files"),
            words.iter().position(|w| *w == "porthole"),
        ) {
            (Some(f), Some(p)) => f < p,
            _ => false,
        }
    })
}

/// Runs every check, in the order the report lists them. Each check is
/// one function returning its line(s); what later checks depend on (the
/// configuration, the two accounts, sshd's effective settings) is read
/// once, at the point the report reaches it.
pub fn run(paths: &Paths) -> Vec<Check> {
    let (cfg, configuration) = configuration(paths);
    let mut out = vec![configuration];
    out.extend(nsswitch(paths));
    let session = user(&cfg.session.account);
    let keys_user = user(&cfg.session.keys_user);
    out.push(session_account(&cfg, session.as_ref()));
    out.push(keys_hook_user(&cfg, keys_user.as_ref()));
    out.push(nss_module(session.as_ref()));
    let sshd = SshdSettings::for_probe(paths);
    match &sshd {
        Ok(settings) => {
            out.push(sshd_drop_in(&cfg, settings));
            out.push(keys_command(&cfg, settings));
        }
        Err(failed) => out.push(failed.clone()),
    }
    out.push(session_shell(sshd.as_ref().ok(), session.as_ref()));
    out.push(picker(&cfg));
    out.extend(crate::admin::fleet_checks::role(
        &cfg,
        sshd.as_ref().ok().map(|s| s.get("trustedusercakeys")),
    ));
    out.push(control_plane(&cfg));
    out.push(runtime_roots(&cfg));
    out.push(cgroups());
    out.push(cache(&cfg, keys_user.as_ref()));
    out.push(syslog(&cfg));
    out
}

/// The configuration file; when it is unusable the other checks still run,
/// against the defaults.
fn configuration(paths: &Paths) -> (Config, Check) {
    match Config::load(&paths.config) {
        Ok(c) => (
            c,
            check(
                "configuration",
                true,
                format!("{} parses and is root-owned", paths.config.display()),
            ),
        ),
        Err(e) => {
            let fix = match &e {
                ConfigError::Unsafe { .. } => " (fix: chown root:root and chmod 0644)",
                ConfigError::Missing(_) => " (fix: reinstall the package or restore the file)",
                _ => "",
            };
            (
                Config::default(),
                check("configuration", false, format!("{e}{fix}")),
            )
        }
    }
}

/// One line per database (passwd, group), or one for an unreadable file.
fn nsswitch(paths: &Paths) -> Vec<Check> {
    let text = match std::fs::read_to_string(&paths.nsswitch) {
        Ok(text) => text,
        Err(e) => {
            return vec![check(
                "nsswitch",
                false,
                format!("{}: {e}", paths.nsswitch.display()),
            )]
        }
    };
    ["passwd", "group"]
        .into_iter()
        .map(|db| {
            let ok = nsswitch_line_ok(&text, db);
            check(
                &format!("nsswitch {db}"),
                ok,
                if ok {
                    format!("{db}: lists porthole after files")
                } else {
                    format!(
                        "add `porthole` after `files` on the {db}: line of {}",
                        paths.nsswitch.display()
                    )
                },
            )
        })
        .collect()
}

fn user(name: &str) -> Option<User> {
    User::from_name(name).ok().flatten()
}

fn session_account(cfg: &Config, session: Option<&User>) -> Check {
    check(
        "session account",
        session.is_some(),
        match session {
            Some(u) => format!("{} is uid {} gid {}", cfg.session.account, u.uid, u.gid),
            None => format!(
                "{} does not exist (fix: reinstall the package)",
                cfg.session.account
            ),
        },
    )
}

fn keys_hook_user(cfg: &Config, keys_user: Option<&User>) -> Check {
    check(
        "keys-hook user",
        keys_user.is_some(),
        match keys_user {
            Some(u) => format!("{} is uid {}", cfg.session.keys_user, u.uid),
            None => format!(
                "{} does not exist (fix: reinstall the package)",
                cfg.session.keys_user
            ),
        },
    )
}

/// Asks NSS for a service login the way sshd will: libnss_porthole must
/// answer with the session account.
fn nss_module(session: Option<&User>) -> Check {
    let probe = user("srv-probe");
    let ok = matches!((&probe, session), (Some(p), Some(s)) if p.uid == s.uid);
    check(
        "NSS module",
        ok,
        if ok {
            "getpwnam(srv-probe) answers with the session account".to_string()
        } else {
            "getpwnam(srv-probe) is not answered by libnss_porthole (check nsswitch.conf and that libnss_porthole.so.2 is installed)".to_string()
        },
    )
}

/// What sshd would apply to a service login: `sshd -T` for srv-probe.
struct SshdSettings {
    text: String,
}

impl SshdSettings {
    /// Runs `sshd -T`; when it cannot, the failed "sshd drop-in" line.
    fn for_probe(paths: &Paths) -> Result<SshdSettings, Check> {
        let output = Command::new(&paths.sshd)
            .arg("-T")
            .arg("-f")
            .arg(&paths.sshd_config)
            .args(["-C", "user=srv-probe,host=localhost,addr=127.0.0.1"])
            .output();
        match output {
            Ok(o) if o.status.success() => Ok(SshdSettings {
                text: String::from_utf8_lossy(&o.stdout).into_owned(),
            }),
            Ok(o) => Err(check(
                "sshd drop-in",
                false,
                format!(
                    "sshd -T failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            )),
            Err(e) => Err(check(
                "sshd drop-in",
                false,
                format!("cannot run {}: {e}", paths.sshd.display()),
            )),
        }
    }

    /// The value of keyword `k` (sshd -T prints keywords in lower case).
    fn get(&self, k: &str) -> Option<String> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(' ')))
            .map(str::to_owned)
    }

    fn keys_command(&self) -> String {
        self.get("authorizedkeyscommand").unwrap_or_default()
    }

    fn force_command(&self) -> String {
        self.get("forcecommand").unwrap_or_default()
    }
}

/// porthole's drop-in is what sshd applies to srv-* logins, not shadowed
/// by another Match block or config.
fn sshd_drop_in(cfg: &Config, sshd: &SshdSettings) -> Check {
    let akc = sshd.keys_command();
    let fc = sshd.force_command();
    let ok = akc.contains("porthole-keys")
        && fc.contains("porthole-shell")
        && sshd.get("disableforwarding").as_deref() == Some("yes")
        && sshd.get("exposeauthinfo").as_deref() == Some("yes")
        && sshd.get("authorizedkeyscommanduser").as_deref() == Some(cfg.session.keys_user.as_str());
    check(
        "sshd drop-in",
        ok,
        if ok {
            format!("srv-* logins use {akc} and {fc}")
        } else {
            format!(
                "sshd -T for srv-probe shows authorizedkeyscommand {akc:?} and forcecommand {fc:?}: \
                 another Match block or config takes precedence over 10-porthole.conf, or the drop-in is not included"
            )
        },
    )
}

/// Session supervisors run the same hook as sshd to close the sessions of
/// revoked keys (src/session/revoke.rs): it must be sshd's program.
fn keys_command(cfg: &Config, sshd: &SshdSettings) -> Check {
    let akc = sshd.keys_command();
    let kc = &cfg.session.keys_command;
    let kc_ok = crate::session::revoke::check_command(kc);
    let akc_prog = akc
        .split_whitespace()
        .next()
        .and_then(|p| std::fs::canonicalize(p).ok());
    let same = matches!((&akc_prog, &kc_ok), (Some(a), Ok(k)) if a == k);
    check(
        "keys command",
        same,
        match (&kc_ok, same) {
            (Err(e), _) => {
                format!("{e}: live sessions of revoked keys are not closed")
            }
            (Ok(_), false) => format!(
                "session.keys_command {} is not sshd's AuthorizedKeysCommand {akc:?}",
                kc.display()
            ),
            (Ok(k), true) => format!(
                "{} refreshes answers for live sessions (revoked keys are closed within cache.fresh_secs)",
                k.display()
            ),
        },
    )
}

/// The setuid shell sshd runs (its ForceCommand), or the packaged path
/// when sshd does not say.
fn session_shell(sshd: Option<&SshdSettings>, session: Option<&User>) -> Check {
    let path = sshd
        .and_then(|s| {
            s.force_command()
                .split_whitespace()
                .next()
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/usr/lib/porthole/porthole-shell"));
    shell_mode_check(&path, session.map(|s| s.gid.as_raw()))
}

/// The control plane answers a lookup with this bastion's token (a 404
/// for the probe is an answer).
fn control_plane(cfg: &Config) -> Check {
    let deadline = Instant::now() + Duration::from_millis(cfg.control_plane.timeout_ms);
    let Some(id) = ServiceId::parse("srv-probe") else {
        return check("control plane", false, "internal: probe name");
    };
    match fetch::fetch(&cfg.control_plane, &id, deadline) {
        Ok(FetchOutcome::Found(_)) | Ok(FetchOutcome::NotFound) => check(
            "control plane",
            true,
            format!(
                "{} answers with this bastion's token",
                cfg.control_plane.url
            ),
        ),
        Err(e @ FetchError::Unauthorized(_)) => check("control plane", false, e.to_string()),
        Err(e) => check(
            "control plane",
            false,
            format!("{e} ({})", cfg.control_plane.url),
        ),
    }
}

/// The runtime roots as the session shell scans them: readable, all
/// state root's, no instance claimed by two containers.
fn runtime_roots(cfg: &Config) -> Check {
    let readable: Vec<&PathBuf> = cfg
        .runtime
        .roots
        .iter()
        .filter(|r| std::fs::read_dir(r).is_ok())
        .collect();
    let scan = crate::session::runtime::running_instances(
        &cfg.runtime.roots,
        &cfg.runtime.service_annotation,
        &cfg.runtime.instance_annotation,
    );
    // What the session shell ignores as not root's (it logs runtime.untrusted).
    let untrusted: Vec<String> = match &scan {
        Ok(s) => s.untrusted.iter(),
        Err(crate::session::runtime::ResolveError::UntrustedRuntime { untrusted }) => {
            untrusted.iter()
        }
        Err(_) => [].iter(),
    }
    .map(|u| format!("{} {}", u.path.display(), u.why))
    .collect();
    let conflicts: Vec<String> = match &scan {
        Ok(s) => crate::session::runtime::conflicts(&s.instances)
            .iter()
            .map(|c| c.to_string())
            .collect(),
        Err(_) => Vec::new(),
    };
    check(
        "runtime roots",
        !readable.is_empty() && untrusted.is_empty() && conflicts.is_empty(),
        if readable.is_empty() {
            "none of runtime.roots exists yet (no container has run on this host, or the roots are wrong)".to_string()
        } else {
            let n = scan.as_ref().map(|v| v.instances.len()).unwrap_or(0);
            let mut text = format!(
                "{} readable, {n} running instance(s)",
                readable
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if !untrusted.is_empty() {
                text.push_str(&format!(
                    "; ignored as not root's (runtime state must be root-owned and not group/other-writable): {}",
                    untrusted.join("; ")
                ));
            }
            if !conflicts.is_empty() {
                text.push_str(&format!("; {}", conflicts.join("; ")));
            }
            text
        },
    )
}

/// A memory cgroup to charge sessions to, in either cgroup version.
fn cgroups() -> Check {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v2 = mountinfo.lines().any(|l| l.contains(" - cgroup2 "));
    let v1_memory = mountinfo
        .lines()
        .any(|l| l.contains(" - cgroup ") && l.ends_with("memory"))
        || mountinfo
            .lines()
            .any(|l| l.contains(" - cgroup ") && l.contains(",memory"));
    check(
        "cgroups",
        v2 || v1_memory,
        match (v1_memory, v2) {
            (true, true) => "hybrid: memory on cgroup v1, cgroup v2 mounted too",
            (true, false) => "cgroup v1 with a memory hierarchy",
            (false, true) => "cgroup v2 (unified)",
            (false, false) => "no memory cgroup found: sessions cannot be charged to instances",
        },
    )
}

/// The keys hook's cache: a directory the keys user owns (the session
/// shell trusts nothing else), and how full it is.
fn cache(cfg: &Config, keys_user: Option<&User>) -> Check {
    let cache_ok = std::fs::metadata(&cfg.cache.dir)
        .map(|m| m.is_dir() && keys_user.is_some_and(|u| m.uid() == u.uid.as_raw()))
        .unwrap_or(false);
    check(
        "cache",
        cache_ok,
        if cache_ok {
            let c = &cfg.cache;
            let fill = match crate::control_plane::cache::counts(&c.dir) {
                Some(n) => format!(
                    "{} entries (max {}), {} of them 404s or failures (max {}), {} KiB (max {} KiB)",
                    n.entries,
                    c.max_entries,
                    n.negatives,
                    c.max_negative_entries,
                    n.bytes.div_ceil(1024),
                    c.max_bytes / 1024
                ),
                None => "nothing written yet".to_string(),
            };
            format!(
                "{} is owned by {}; {fill}",
                c.dir.display(),
                cfg.session.keys_user
            )
        } else {
            format!(
                "{} must be a directory owned by {} (fix: install -d -m 0700 -o {} {})",
                cfg.cache.dir.display(),
                cfg.session.keys_user,
                cfg.session.keys_user,
                cfg.cache.dir.display()
            )
        },
    )
}

/// The syslog socket the audit events go to.
fn syslog(cfg: &Config) -> Check {
    let log_ok = Path::new(&cfg.log.socket).exists();
    check(
        "syslog",
        log_ok,
        if log_ok {
            format!("{} exists", cfg.log.socket.display())
        } else {
            format!(
                "{} is missing: audit events are lost (install rsyslog or systemd-journald)",
                cfg.log.socket.display()
            )
        },
    )
}

/// `porthole doctor --instance srv-x-slug`: what a session into that
/// instance would get, read the way the session shell reads it.
pub fn instance(cfg: &Config, name: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(target) = crate::names::Target::parse(name).filter(|t| t.slug.is_some()) else {
        out.push(check(
            "instance",
            false,
            format!("{name:?} is not an instance name (srv-abc123-d4e5f)"),
        ));
        return out;
    };
    let all = match crate::session::runtime::running_instances(
        &cfg.runtime.roots,
        &cfg.runtime.service_annotation,
        &cfg.runtime.instance_annotation,
    ) {
        Ok(scan) => {
            for u in &scan.untrusted {
                out.push(check(
                    "runtime state",
                    false,
                    format!("{} {}: its containers are ignored", u.path.display(), u.why),
                ));
            }
            scan.instances
        }
        Err(e) => {
            out.push(check("instance", false, e.to_string()));
            return out;
        }
    };
    let inst = match crate::session::runtime::choose(all, &target.service, target.slug.as_deref()) {
        Ok(i) => i,
        Err(e) => {
            out.push(check("instance", false, e.to_string()));
            return out;
        }
    };
    out.push(check(
        "running",
        true,
        format!(
            "container {} in {}, init pid {}",
            inst.container_id,
            inst.runtime_root.display(),
            inst.init_pid
        ),
    ));
    let pinned = match crate::session::enter::pin(inst.init_pid, inst.init_start) {
        Ok(p) => p,
        Err(e) => {
            out.push(check("pinned", false, e.to_string()));
            return out;
        }
    };
    let creds = pinned
        .read_proc("status")
        .ok()
        .and_then(|s| crate::session::container::parse_status(&s));
    let uid_map = pinned
        .read_proc("uid_map")
        .ok()
        .and_then(|m| crate::session::container::IdMap::parse(&m));
    let uid = match (&creds, &uid_map) {
        (Some(c), Some(m)) => m.to_inside(c.uid),
        _ => None,
    };
    let Some(uid) = uid else {
        out.push(check(
            "user",
            false,
            "cannot read the init's credentials or uid map",
        ));
        return out;
    };
    match crate::session::container::container_user(&pinned.root, uid) {
        Err(n) => out.push(check("user", false, format!("{n}; sessions are refused"))),
        Ok(Some(pw)) => {
            out.push(check(
                "user",
                true,
                format!("uid {uid} is {} (gid {})", pw.name, pw.gid),
            ));
            let usable = crate::session::container::usable_shell(&pinned.root, &pw.shell);
            out.push(check(
                "login shell",
                usable
                    || crate::session::container::usable_shell(
                        &pinned.root,
                        &cfg.session.fallback_shell,
                    ),
                if usable {
                    format!("{} is executable", pw.shell)
                } else {
                    format!(
                        "{:?} is not usable; sessions fall back to {}",
                        pw.shell, cfg.session.fallback_shell
                    )
                },
            ));
            let home_ok = pw.home.starts_with('/')
                && crate::session::container::open_in_root(
                    &pinned.root,
                    &pw.home,
                    libc::O_PATH | libc::O_DIRECTORY,
                )
                .is_ok();
            out.push(check(
                "home",
                home_ok,
                if home_ok {
                    format!("{} exists", pw.home)
                } else {
                    format!(
                        "{:?} does not exist in the image; sessions start in /",
                        pw.home
                    )
                },
            ));
        }
        Ok(None) => out.push(check(
            "user",
            false,
            format!(
                "uid {uid} has no entry in the image's /etc/passwd; sessions get HOME=/ and {}",
                cfg.session.fallback_shell
            ),
        )),
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dirs = pinned
        .read_proc("cgroup")
        .map(|c| crate::session::container::cgroup_dirs(&c, &mountinfo))
        .unwrap_or_default();
    let memory = dirs
        .iter()
        .find(|d| d.controllers.split(',').any(|c| c == "memory"))
        .and_then(|d| crate::session::limits::read_memory(&d.dir, false))
        .or_else(|| {
            dirs.iter()
                .find(|d| d.controllers.is_empty())
                .and_then(|d| crate::session::limits::read_memory(&d.dir, true))
        });
    let reserve = cfg.limits.memory_reserve_mib.saturating_mul(1024 * 1024);
    out.push(match memory {
        None => check(
            "memory",
            false,
            "the instance's memory cgroup cannot be read",
        ),
        Some(m) => match (m.limit, m.headroom()) {
            (Some(limit), Some(left)) => check(
                "memory",
                left >= reserve,
                format!(
                    "{} MiB used of {} MiB, {} MiB left (a session needs {} MiB)",
                    m.usage >> 20,
                    limit >> 20,
                    left >> 20,
                    cfg.limits.memory_reserve_mib
                ),
            ),
            _ => check(
                "memory",
                true,
                format!("{} MiB used, no limit", m.usage >> 20),
            ),
        },
    });
    let live = crate::session::registry::list(&cfg.session.state_dir)
        .into_iter()
        .filter(|r| r.instance == inst.name())
        .count();
    out.push(check("sessions", true, format!("{live} live session(s)")));
    out
}

fn shell_mode_check(path: &Path, session_gid: Option<u32>) -> Check {
    match std::fs::metadata(path) {
        Ok(m) => {
            let mode = m.mode() & 0o7777;
            let ok = m.uid() == 0 && mode == 0o4750 && Some(m.gid()) == session_gid;
            check(
                "session shell",
                ok,
                if ok {
                    format!("{} is 4750 root:porthole-session", path.display())
                } else {
                    format!(
                        "{} is mode {mode:o} owner {}:{}; want 4750 root:porthole-session \
                         (fix: dpkg-statoverride --update --add root porthole-session 4750 {})",
                        path.display(),
                        m.uid(),
                        m.gid(),
                        path.display()
                    )
                },
            )
        }
        Err(e) => check("session shell", false, format!("{}: {e}", path.display())),
    }
}

/// The picker of `ssh srv@host` (issue 20): a program only root can
/// replace, and never setuid or setgid (the shell runs it unprivileged).
fn picker(cfg: &Config) -> Check {
    let path = &cfg.session.picker_command;
    match crate::session::revoke::check_command(path) {
        Err(e) => check(
            "picker",
            false,
            format!("{e} (`ssh srv@host` shows no menu; fix: reinstall the package or set session.picker_command)"),
        ),
        Ok(real) => {
            let mode = std::fs::metadata(&real).map(|m| m.mode() & 0o7777).unwrap_or(0);
            let ok = mode & 0o6000 == 0;
            check(
                "picker",
                ok,
                if ok {
                    format!("{} runs the menu of `ssh srv@host` unprivileged", real.display())
                } else {
                    format!(
                        "{} is mode {mode:o}: it must not be setuid or setgid (fix: chmod 0755)",
                        real.display()
                    )
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsswitch_lines() {
        assert!(nsswitch_line_ok(
            "passwd:  files porthole systemd\n",
            "passwd"
        ));
        assert!(nsswitch_line_ok(
            "passwd: files [SUCCESS=return] porthole\n",
            "passwd"
        ));
        assert!(!nsswitch_line_ok("passwd: porthole files\n", "passwd"));
        assert!(!nsswitch_line_ok("passwd: files systemd\n", "passwd"));
        assert!(!nsswitch_line_ok("#passwd: files porthole\n", "passwd"));
        assert!(!nsswitch_line_ok("group: files porthole\n", "passwd"));
    }

    #[test]
    fn doctor_names_broken_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("nsswitch.conf");
        std::fs::write(&ns, "passwd: files systemd\ngroup: files porthole\n").unwrap();
        let paths = Paths {
            config: dir.path().join("absent.toml"),
            nsswitch: ns,
            sshd: "/nonexistent/sshd".into(),
            sshd_config: "/nonexistent".into(),
        };
        let checks = run(&paths);
        let get = |n: &str| checks.iter().find(|c| c.name == n).unwrap().clone();
        assert!(!get("configuration").ok);
        assert!(!get("nsswitch passwd").ok);
        assert!(get("nsswitch group").ok);
        assert!(!get("sshd drop-in").ok);
        assert!(get("nsswitch passwd")
            .detail
            .contains("add `porthole` after `files`"));
        // Every line, in the order the report has always printed them.
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "configuration",
                "nsswitch passwd",
                "nsswitch group",
                "session account",
                "keys-hook user",
                "NSS module",
                "sshd drop-in",
                "session shell",
                "picker",
                "fleet role",
                "hop certificates",
                "control plane",
                "runtime roots",
                "cgroups",
                "cache",
                "syslog",
            ]
        );
    }
}
