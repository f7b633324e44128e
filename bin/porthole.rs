//! porthole: the admin CLI (root). Thin: every command is a library call.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use porthole::config::{Config, DEFAULT_PATH};
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
enum Command {
    /// Check that the configuration file is safe and valid, and print it resolved.
    CheckConfig,
    /// Print this host's SSH host key fingerprints and known_hosts lines.
    HostKeys {
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
    /// Check the whole host setup and print a checklist with the fix for each failure.
    Doctor {
        /// sshd binary to ask for its effective configuration.
        #[arg(long, default_value = "/usr/sbin/sshd")]
        sshd: PathBuf,
        /// sshd's main configuration file.
        #[arg(long, default_value = "/etc/ssh/sshd_config")]
        sshd_config: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig => {
            let cfg = Config::load(&cli.config)?;
            println!("{}: OK", cli.config.display());
            println!("{cfg:#?}");
        }
        Command::HostKeys { host, port, dir } => {
            let keys = porthole::hostkeys::read_host_keys(&dir)
                .with_context(|| format!("reading host keys in {}", dir.display()))?;
            if keys.is_empty() {
                bail!("no ssh_host_*_key.pub in {}", dir.display());
            }
            let mut lines = Vec::new();
            for k in keys {
                match k {
                    Ok(k) => {
                        println!("{:<22} {}", k.algorithm, k.fingerprint);
                        lines.push(porthole::hostkeys::known_hosts_line(&host, port, &k));
                    }
                    Err(e) => eprintln!("warning: {e}"),
                }
            }
            println!();
            for l in lines {
                println!("{l}");
            }
        }
        Command::Doctor { sshd, sshd_config } => {
            let paths = porthole::doctor::Paths {
                config: cli.config.clone(),
                sshd,
                sshd_config,
                ..porthole::doctor::Paths::default()
            };
            let checks = porthole::doctor::run(&paths);
            let failed = checks.iter().filter(|c| !c.ok).count();
            for c in &checks {
                println!(
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
        Command::Instances => {
            let cfg = Config::load(&cli.config)?;
            let all = porthole::runtime::running_instances(
                &cfg.runtime.roots,
                &cfg.runtime.service_annotation,
                &cfg.runtime.instance_annotation,
            )?;
            if all.is_empty() {
                println!("no running instances");
            }
            for i in all {
                println!(
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
