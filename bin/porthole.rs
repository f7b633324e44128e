//! porthole: the admin CLI (root). Thin: every command is a library call.
//!
//! Much of what it prints comes from tenants and developers (client
//! commands, key owners, messages, container ids, control-plane errors):
//! every line goes through `porthole::admin::display` so that nothing in it acts
//! on the admin's terminal.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use porthole::admin::display::{json_printable, printable};
use porthole::config::{Config, DEFAULT_PATH};
use porthole::session::registry::{self, Drain, Scope};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "porthole",
    version,
    about = "Administer porthole, SSH into the instances of a hosting platform"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_PATH, global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum HostKeysAction {
    /// Sign this host's keys (ssh_host_*_key.pub) with the platform's host
    /// CA, write <key>-cert.pub next to each, and print the sshd_config
    /// lines and the one known_hosts line developers add.
    Sign {
        /// The host CA's private key (root-owned, 0600).
        #[arg(long)]
        ca: PathBuf,
        /// A name clients connect to (repeat for each name or address).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// The domain every host of the platform is under, for the
        /// `@cert-authority *.<domain>` line.
        #[arg(long)]
        domain: String,
        /// How long the certificates are valid, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Directory holding ssh_host_*_key.pub.
        #[arg(long, default_value = "/etc/ssh")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Check that the configuration file is safe and valid, and print it resolved.
    CheckConfig,
    /// Print this host's SSH host key fingerprints and known_hosts lines
    /// (`host-keys sign`: make host certificates instead).
    #[command(args_conflicts_with_subcommands = true)]
    HostKeys {
        #[command(subcommand)]
        action: Option<HostKeysAction>,
        /// The public name developers connect to.
        #[arg(long, default_value = "localhost")]
        host: String,
        /// The port developers connect to.
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// Directory holding ssh_host_*_key.pub.
        #[arg(long, default_value = "/etc/ssh")]
        dir: PathBuf,
    },
    /// List the running instances porthole can see, per service.
    Instances,
    /// List live SSH sessions on this host (`--history`: recorded ones).
    Sessions {
        /// One JSON object per session, in an array.
        #[arg(long)]
        json: bool,
        /// The recorded sessions (recording.dir), oldest first: owner,
        /// instance, start, duration, end reason, size.
        #[arg(long)]
        history: bool,
    },
    /// Play a session's recording in this terminal at its pace (escape
    /// sequences that would act on the terminal beyond drawing are dropped).
    Replay {
        /// Session id (from `porthole sessions --history`).
        session_id: String,
        /// Play this many times faster (0.1 to 1000).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Shorten longer pauses to this many seconds.
        #[arg(long)]
        idle_limit: Option<f64>,
    },
    /// End one session now.
    Kill {
        /// Session id (from `porthole sessions`).
        session_id: String,
        /// Shown to the user.
        #[arg(long, default_value = "closed by the platform")]
        message: String,
    },
    /// Refuse new sessions and close live ones after a grace period (maintenance).
    Drain {
        #[command(flatten)]
        scope: ScopeArgs,
        /// How long live sessions may stay (e.g. 1h, 30m, 90s).
        #[arg(long, default_value = "1h")]
        grace: String,
        /// Shown to users: why, and when to come back.
        #[arg(long, default_value = "scheduled maintenance")]
        message: String,
    },
    /// Cancel a drain.
    Undrain {
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// End every session of an instance now (for the platform's deploy hook).
    Close {
        /// Instance name (srv-abc123-d4e5f).
        #[arg(long)]
        instance: String,
        /// Shown to the users.
        #[arg(long, default_value = "the instance is being redeployed")]
        message: String,
    },
    /// Mint a web-shell ticket (the dashboard's job; for the embedded
    /// default, the demo and tests). Prints the ticket, or the page URL.
    WebTicket {
        /// Service ID (srv-abc123).
        service: String,
        /// Who the session belongs to (limits, audit).
        #[arg(long)]
        owner: String,
        /// Pin one instance (its slug, d4e5f).
        #[arg(long)]
        instance: Option<String>,
        /// Ed25519 private key, PKCS#8 PEM (default: web.ticket_signing_key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Seconds the ticket is valid (at most 60).
        #[arg(long, default_value_t = 60)]
        lifetime: u64,
        /// Print `<URL>shell/<service>?ticket=…` (e.g. http://127.0.0.1:8022/).
        #[arg(long)]
        url: Option<String>,
    },
    /// Check the whole host setup and print a checklist with the fix for each failure.
    Doctor {
        /// Check one instance instead: what a session into it would get.
        #[arg(long)]
        instance: Option<String>,
        /// sshd binary to ask for its effective configuration.
        #[arg(long, default_value = "/usr/sbin/sshd")]
        sshd: PathBuf,
        /// sshd's main configuration file.
        #[arg(long, default_value = "/etc/ssh/sshd_config")]
        sshd_config: PathBuf,
        /// A front door's check of a node (HOST or HOST:PORT): reachable in
        /// the hop budget, with a host certificate of the host CA for that
        /// name. Repeatable.
        #[arg(long = "node", value_name = "HOST[:PORT]")]
        nodes: Vec<String>,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ScopeArgs {
    /// One instance (srv-abc123-d4e5f).
    #[arg(long)]
    instance: Option<String>,
    /// Every instance of a service (srv-abc123).
    #[arg(long)]
    service: Option<String>,
    /// Every instance on this host.
    #[arg(long)]
    all: bool,
}

impl ScopeArgs {
    fn scope(&self) -> Result<Scope> {
        let parsed = match (&self.instance, &self.service, self.all) {
            (Some(i), _, _) => Scope::parse(i).filter(|s| matches!(s, Scope::Instance(_))),
            (_, Some(s), _) => Scope::parse(s).filter(|s| matches!(s, Scope::Service(_))),
            _ => Some(Scope::All),
        };
        parsed.context("not an instance name (srv-abc123-d4e5f) or service ID (srv-abc123)")
    }
}

/// `1h`, `30m`, `90s`, `90` (seconds), `1h30m`.
fn parse_duration(s: &str) -> Result<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => bail!("bad duration {s:?}: use forms like 1h, 30m, 90s"),
        };
        let n: u64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
        total += n * unit;
        num.clear();
    }
    if !num.is_empty() {
        total += num
            .parse::<u64>()
            .with_context(|| format!("bad duration {s:?}"))?;
    }
    Ok(total)
}

/// Prints one line of stdout with every terminal-active character escaped.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", printable(&format!($($arg)*)))
    };
}

/// The same on stderr.
macro_rules! warn {
    ($($arg:tt)*) => {
        eprintln!("{}", printable(&format!($($arg)*)))
    };
}

fn main() {
    if let Err(e) = run() {
        // `{:#}`: the whole chain on one line, escaped like everything else
        // (errors quote paths, records and control-plane answers).
        warn!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig => {
            let cfg = Config::load(&cli.config)?;
            say!("{}: OK", cli.config.display());
            // Line by line: the escaping keeps each on its own line.
            for l in format!("{cfg:#?}").lines() {
                say!("{l}");
            }
        }
        Command::HostKeys {
            action:
                Some(HostKeysAction::Sign {
                    ca,
                    names,
                    domain,
                    days,
                    dir,
                }),
            ..
        } => {
            use porthole::admin::hostkeys;
            let key = porthole::fleet::cert::load_ca_key(&ca)?;
            let authority = hostkeys::cert_authority_line(&domain, key.public_key())
                .with_context(|| format!("--domain {domain:?} is not a DNS name"))?;
            let now = u64::try_from(porthole::time::now_unix()).unwrap_or(0);
            let signed = hostkeys::sign_host_keys(&dir, &key, &names, now, days)
                .with_context(|| format!("signing host keys in {}", dir.display()))?;
            let mut lines = Vec::new();
            for s in signed {
                match s {
                    Ok(s) => {
                        say!(
                            "signed {} {} -> {}",
                            s.key.algorithm,
                            s.key.fingerprint,
                            s.cert_path.display()
                        );
                        lines.push(hostkeys::host_certificate_line(&s));
                    }
                    Err(e) => warn!("warning: {e}"),
                }
            }
            if lines.is_empty() {
                bail!("no host key in {} could be signed", dir.display());
            }
            println!();
            say!("# sshd_config (then reload sshd):");
            for l in lines {
                say!("{l}");
            }
            println!();
            say!("# developers' ~/.ssh/known_hosts (and front doors' host CA):");
            say!("{authority}");
        }
        Command::HostKeys {
            action: None,
            host,
            port,
            dir,
        } => {
            let keys = porthole::admin::hostkeys::read_host_keys(&dir)
                .with_context(|| format!("reading host keys in {}", dir.display()))?;
            if keys.is_empty() {
                bail!("no ssh_host_*_key.pub in {}", dir.display());
            }
            let mut lines = Vec::new();
            for k in keys {
                match k {
                    Ok(k) => {
                        say!("{:<22} {}", k.algorithm, k.fingerprint);
                        lines.push(porthole::admin::hostkeys::known_hosts_line(&host, port, &k));
                    }
                    Err(e) => warn!("warning: {e}"),
                }
            }
            println!();
            for l in lines {
                say!("{l}");
            }
        }
        Command::WebTicket {
            service,
            owner,
            instance,
            key,
            lifetime,
            url,
        } => {
            use porthole::web::ticket::{Signer, MAX_LIFETIME_SECS};
            let svc = porthole::names::ServiceId::parse(&service)
                .with_context(|| format!("{service:?} is not a service ID (srv-abc123)"))?;
            if let Some(slug) = instance.as_deref().filter(|s| !porthole::names::is_slug(s)) {
                bail!("{slug:?} is not an instance slug (5 lowercase letters or digits)");
            }
            if lifetime == 0 || lifetime > MAX_LIFETIME_SECS {
                bail!("--lifetime must be between 1 and {MAX_LIFETIME_SECS} seconds");
            }
            let key = match key {
                Some(k) => k,
                None => Config::load(&cli.config)?
                    .web
                    .ticket_signing_key
                    .context("no --key and web.ticket_signing_key is not set")?,
            };
            let signer = Signer::load(&key)?;
            let now = u64::try_from(porthole::time::now_unix()).unwrap_or(0);
            let t = signer.mint(&svc, instance.as_deref(), &owner, lifetime, now)?;
            match url {
                Some(base) => {
                    let sep = if base.ends_with('/') { "" } else { "/" };
                    println!("{base}{sep}shell/{svc}?ticket={t}");
                }
                None => println!("{t}"),
            }
        }
        Command::Doctor {
            instance,
            sshd,
            sshd_config,
            nodes,
        } => {
            let paths = porthole::admin::doctor::Paths {
                config: cli.config.clone(),
                sshd,
                sshd_config,
                ..porthole::admin::doctor::Paths::default()
            };
            let mut checks = match instance {
                Some(name) => porthole::admin::doctor::instance(&Config::load(&cli.config)?, &name),
                None => porthole::admin::doctor::run(&paths),
            };
            if !nodes.is_empty() {
                let cfg = Config::load(&cli.config)?;
                for n in &nodes {
                    checks.extend(porthole::admin::fleet_checks::node(&cfg, n));
                }
            }
            let failed = checks.iter().filter(|c| !c.ok).count();
            for c in &checks {
                say!(
                    "[{}] {:<16} {}",
                    if c.ok { " ok " } else { "FAIL" },
                    c.name,
                    c.detail
                );
            }
            if failed > 0 {
                bail!("{failed} check(s) failed");
            }
        }
        Command::Sessions {
            json,
            history: true,
        } => {
            let cfg = Config::load(&cli.config)?;
            let list = porthole::admin::replay::history(&cfg.recording.dir)?;
            if json {
                let text = serde_json::to_string_pretty(&list)?;
                println!("{}", json_printable(&text));
            } else if list.is_empty() {
                println!("no recorded sessions in {}", cfg.recording.dir.display());
            } else {
                println!(
                    "{:<16} {:<24} {:<24} {:<20} {:>9} {:<18} {:>10}",
                    "ID", "OWNER", "INSTANCE", "START (UTC)", "DURATION", "END", "SIZE"
                );
                for e in list {
                    println!(
                        "{:<16} {:<24} {:<24} {:<20} {:>8.1}s {:<18} {:>10}",
                        printable(&e.session_id),
                        printable(&e.owner),
                        printable(&e.instance),
                        e.start
                            .map(porthole::time::format_utc)
                            .unwrap_or_else(|| "-".into()),
                        e.duration_secs,
                        printable(&e.end_reason),
                        e.bytes
                    );
                }
            }
        }
        Command::Replay {
            session_id,
            speed,
            idle_limit,
        } => {
            use porthole::admin::replay;
            if !(0.1..=1000.0).contains(&speed) {
                bail!("--speed must be between 0.1 and 1000");
            }
            if idle_limit.is_some_and(|l| !(l >= 0.0 && l.is_finite())) {
                bail!("--idle-limit must be a number of seconds");
            }
            let cfg = Config::load(&cli.config)?;
            let path = replay::path_of(&cfg.recording.dir, &session_id)?;
            let mut r = replay::open(&path)?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            replay::play(
                &mut r,
                &mut out,
                replay::Pace {
                    speed,
                    idle_limit,
                    sleep: true,
                },
            )?;
        }
        Command::Sessions { json, .. } => {
            let cfg = Config::load(&cli.config)?;
            let sessions = registry::list(&cfg.session.state_dir);
            // Temporary instances whose supervisor is gone go too.
            porthole::session::temporary::report(
                &porthole::log::Logger::new("porthole", &cfg.log.socket),
                &porthole::session::temporary::sweep(&cfg),
            );
            if json {
                let text = serde_json::to_string_pretty(&sessions)?;
                println!("{}", json_printable(&text));
            } else if sessions.is_empty() {
                println!("no live sessions");
            } else {
                println!(
                    "{:<16} {:<24} {:<24} {:<8} {:<6} {:>7}  COMMAND",
                    "ID", "INSTANCE", "OWNER", "CLIENT", "TTY", "PID"
                );
                for r in sessions {
                    // Each cell escaped before padding, so the columns
                    // line up with what is shown.
                    println!(
                        "{:<16} {:<24} {:<24} {:<8} {:<6} {:>7}  {}",
                        printable(&r.id),
                        printable(&r.instance),
                        printable(&r.owner),
                        printable(r.client.as_deref().unwrap_or("-")),
                        if r.tty { "yes" } else { "no" },
                        r.pid,
                        printable(&r.command)
                    );
                }
            }
            for (scope, d) in registry::drains(&cfg.session.state_dir) {
                warn!("drain {scope}: closes at {} ({})", d.deadline, d.message);
            }
        }
        Command::Kill {
            session_id,
            message,
        } => {
            let cfg = Config::load(&cli.config)?;
            let r = registry::request_close(&cfg.session.state_dir, &session_id, &message)?;
            say!("closing session {} of {} ({})", r.id, r.instance, r.owner);
        }
        Command::Drain {
            scope,
            grace,
            message,
        } => {
            let cfg = Config::load(&cli.config)?;
            let scope = scope.scope()?;
            let now = porthole::time::now_unix();
            let grace = parse_duration(&grace)?;
            let drain = Drain {
                deadline: now + i64::try_from(grace)?,
                message,
                created: now,
            };
            registry::set_drain(&cfg.session.state_dir, &scope, &drain)?;
            say!(
                "draining {}: new sessions refused, live sessions close in {grace}s",
                scope.describe()
            );
        }
        Command::Undrain { scope } => {
            let cfg = Config::load(&cli.config)?;
            let scope = scope.scope()?;
            if registry::remove_drain(&cfg.session.state_dir, &scope)? {
                say!("{} is open again", scope.describe());
            } else {
                say!("{} was not drained", scope.describe());
            }
        }
        Command::Close { instance, message } => {
            let cfg = Config::load(&cli.config)?;
            let Some(Scope::Instance(name)) = Scope::parse(&instance) else {
                bail!("{instance:?} is not an instance name (srv-abc123-d4e5f)");
            };
            let mut n = 0;
            for r in registry::list(&cfg.session.state_dir)
                .into_iter()
                .filter(|r| r.instance == name)
            {
                if registry::request_close(&cfg.session.state_dir, &r.id, &message).is_ok() {
                    n += 1;
                }
            }
            say!("closing {n} session(s) of {name}");
        }
        Command::Instances => {
            let cfg = Config::load(&cli.config)?;
            let scan = porthole::session::runtime::running_instances(
                &cfg.runtime.roots,
                &cfg.runtime.service_annotation,
                &cfg.runtime.instance_annotation,
            )?;
            for u in &scan.untrusted {
                eprintln!(
                    "warning: {} {}: its containers are ignored",
                    u.path.display(),
                    u.why
                );
            }
            for c in porthole::session::runtime::conflicts(&scan.instances) {
                eprintln!("warning: {c}; sessions to it are refused");
            }
            let all = scan.instances;
            if all.is_empty() {
                println!("no running instances");
            }
            for i in all {
                say!(
                    "{:<30} container={} pid={} root={}",
                    i.name(),
                    i.container_id,
                    i.init_pid,
                    i.runtime_root.display()
                );
            }
        }
    }
    Ok(())
}
