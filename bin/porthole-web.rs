//! porthole-web: the dashboard's browser shell (see README "web shell").
//! Runs as its own unprivileged user; never enters a container.

use anyhow::{Context, Result};
use clap::Parser;
use porthole::config::{Config, DEFAULT_PATH};
use porthole::log::{Event, Logger, Severity};
use porthole::web::{server, session, ticket};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "porthole-web",
    version,
    about = "The dashboard's browser shell for porthole"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_PATH)]
    config: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(&cli.config).map_err(anyhow::Error::msg)?;
    let web = &cfg.web;
    let key = web
        .ticket_public_key
        .as_deref()
        .context("web.ticket_public_key is not set: porthole-web checks every ticket with the dashboard's public key")?;
    let verifier = ticket::Verifier::load(key)?;
    let ca_path = web
        .user_ca_key
        .as_deref()
        .context("web.user_ca_key is not set: porthole-web signs each session's certificate with its own user CA")?;
    let ca = session::load_ca_key(ca_path).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&web.runtime_dir)
        .with_context(|| format!("creating {}", web.runtime_dir.display()))?;
    // Each session's private key is written under it: nobody else may look.
    std::fs::set_permissions(
        &web.runtime_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .with_context(|| format!("making {} private (0700)", web.runtime_dir.display()))?;
    let log = Logger::new("porthole-web", &cfg.log.socket);
    log.emit(&Event::new("web.start", Severity::Notice).field("listen", web.listen.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let app = Arc::new(server::App::new(cfg, verifier, ca));
    rt.block_on(server::serve(app))?;
    Ok(())
}
