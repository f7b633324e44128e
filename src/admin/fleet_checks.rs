//! The fleet part of `porthole doctor` (issue 14): what each role needs —
//! the CA files and their modes, sshd's `TrustedUserCAKeys` for srv-*
//! logins on a node (and its absence on a front door), the OpenSSH client
//! a front door hops with — and, given `--node HOST[:PORT]`, whether a node
//! answers within the hop budget with a host certificate the host CA
//! signed for that name (what every hop will check, without logging in).
//!
//! Reads root's files and asks sshd and `ssh-keyscan`; changes nothing.

use crate::admin::doctor::Check;
use crate::config::{Config, Role};
use crate::fleet::cert;
use ssh_key::certificate::{CertType, Certificate};
use ssh_key::HashAlg;
use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::Duration;

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// The role's lines. `sshd_trusted_ca` is what `sshd -T` reports as
/// `trustedusercakeys` for a srv-* login (None when sshd could not be
/// asked; that failure has its own line).
pub fn role(cfg: &Config, sshd_trusted_ca: Option<Option<String>>) -> Vec<Check> {
    let fleet = &cfg.fleet;
    let mut out = Vec::new();
    let names = fleet.own_names();
    out.push(check(
        "fleet role",
        !names.is_empty(),
        if names.is_empty() {
            "this host has no name: set fleet.host_names".into()
        } else {
            format!(
                "{} (known to placement as {})",
                fleet.role.as_str(),
                names.join(", ")
            )
        },
    ));
    let sshd_ca = sshd_trusted_ca.flatten().filter(|v| v != "none");
    match (&fleet.trusted_user_ca, fleet.role) {
        (Some(path), _) => {
            let loaded = cert::load_ca_publics(path);
            let same = sshd_ca.as_deref() == Some(&*path.to_string_lossy());
            out.push(check(
                "hop certificates",
                loaded.is_ok() && same,
                match (&loaded, same) {
                    (Err(e), _) => format!("{e} (fix: root:root 0644, one CA public key per line)"),
                    (Ok(_), false) => format!(
                        "sshd does not trust {} for srv-* logins (it says {:?}): enable the \
                         TrustedUserCAKeys line inside the Match block of 10-porthole.conf",
                        path.display(),
                        sshd_ca.as_deref().unwrap_or("none")
                    ),
                    (Ok(keys), true) => format!(
                        "srv-* logins accept certificates of {} CA key(s) in {}",
                        keys.len(),
                        path.display()
                    ),
                },
            ));
        }
        (None, Role::FrontDoor) => {
            out.push(check(
                "hop certificates",
                sshd_ca.is_none(),
                match &sshd_ca {
                    None => {
                        "a front door accepts no hops (sshd trusts no user CA for srv-*)".into()
                    }
                    Some(p) => format!(
                        "sshd trusts {p} for srv-* logins on a front door: remove the \
                         TrustedUserCAKeys line (a front door runs no instances)"
                    ),
                },
            ));
        }
        (None, _) => out.push(check(
            "hop certificates",
            sshd_ca.is_none(),
            match &sshd_ca {
                None => {
                    "no fleet.trusted_user_ca: only direct logins (no front door hops here)".into()
                }
                Some(p) => format!(
                    "sshd trusts {p} for srv-* logins but fleet.trusted_user_ca is not set: \
                     hops would be refused by the session shell; set it to the same file"
                ),
            },
        )),
    }
    if fleet.role.hops() {
        if let Some(path) = &fleet.user_ca_key {
            out.push(match cert::load_ca_key(path) {
                Ok(k) => check(
                    "user CA key",
                    true,
                    format!(
                        "{} ({}) signs the hops; only root can read it",
                        path.display(),
                        k.public_key().fingerprint(HashAlg::Sha256)
                    ),
                ),
                Err(e) => check(
                    "user CA key",
                    false,
                    format!("{e} (fix: chown root:root, chmod 0600, no passphrase)"),
                ),
            });
        }
        if let Some(path) = &fleet.host_ca_public_key {
            out.push(match cert::load_ca_publics(path) {
                Ok(keys) => check(
                    "host CA",
                    true,
                    format!(
                        "nodes must present host certificates of {} ({} key(s))",
                        path.display(),
                        keys.len()
                    ),
                ),
                Err(e) => check("host CA", false, e.to_string()),
            });
        }
        let client = std::path::Path::new(crate::session::hop::SSH_CLIENT);
        out.push(check(
            "ssh client",
            client.is_file(),
            if client.is_file() {
                format!("hops run {}", client.display())
            } else {
                format!("{} is missing: install openssh-client", client.display())
            },
        ));
    }
    out
}

/// `--node HOST[:PORT]`: the node answers within `fleet.hop_timeout_ms`,
/// and its host certificate is the host CA's, for that name, valid now.
pub fn node(cfg: &Config, node: &str) -> Vec<Check> {
    let (host, port) = match node.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse::<u16>() {
            Ok(p) => (h.to_owned(), p),
            Err(_) => {
                return vec![check(
                    "node",
                    false,
                    format!("{node:?}: the port is not a number"),
                )]
            }
        },
        _ => (node.to_owned(), cfg.fleet.node_port),
    };
    let name = format!("node {host}:{port}");
    if !crate::control_plane::api::valid_host(&host) {
        return vec![check(&name, false, "not a host name or IP address")];
    }
    let timeout = Duration::from_millis(cfg.fleet.hop_timeout_ms);
    let reach = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut a| a.next().ok_or_else(|| "no address".to_owned()))
        .and_then(|a| TcpStream::connect_timeout(&a, timeout).map_err(|e| e.to_string()));
    if let Err(e) = reach {
        return vec![check(
            &name,
            false,
            format!(
                "unreachable within fleet.hop_timeout_ms ({} ms): {e}",
                cfg.fleet.hop_timeout_ms
            ),
        )];
    }
    let mut out = vec![check(&name, true, "answers within the hop budget")];
    let Some(ca_path) = &cfg.fleet.host_ca_public_key else {
        out.push(check(
            "node host certificate",
            false,
            "fleet.host_ca_public_key is not set: nothing to verify the node with",
        ));
        return out;
    };
    let cas = match cert::load_ca_publics(ca_path) {
        Ok(c) => c,
        Err(e) => {
            out.push(check("node host certificate", false, e.to_string()));
            return out;
        }
    };
    let scan = Command::new("ssh-keyscan")
        .args(["-c", "-T"])
        .arg(timeout.as_secs().max(1).to_string())
        .args(["-p", &port.to_string(), "--", &host])
        .output();
    let text = match scan {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => {
            out.push(check(
                "node host certificate",
                false,
                format!("cannot run ssh-keyscan: {e}"),
            ));
            return out;
        }
    };
    let now = u64::try_from(crate::time::now_unix()).unwrap_or(0);
    let fps: Vec<_> = cas.iter().map(|c| c.fingerprint(HashAlg::Sha256)).collect();
    let mut problems = Vec::new();
    let mut good = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        // `ssh-keyscan -c` prints `<type> <base64>` (older ones prefix the
        // host name).
        let line = line.trim();
        let parsed = Certificate::from_openssh(line).or_else(|e| match line.split_once(' ') {
            Some((_, rest)) => Certificate::from_openssh(rest.trim()),
            None => Err(e),
        });
        let Ok(c) = parsed else {
            continue;
        };
        if c.cert_type() != CertType::Host {
            problems.push("a certificate that is not a host certificate".to_owned());
        } else if c.validate_at(now, &fps).is_err() {
            problems.push(format!(
                "a certificate signed by {} (not the host CA) or not valid now",
                c.signature_key().fingerprint(HashAlg::Sha256)
            ));
        } else if !c.valid_principals().iter().any(|p| p == &host) {
            problems.push(format!(
                "a certificate for {:?}, not for {host}",
                c.valid_principals()
            ));
        } else {
            good = Some(c.key_id().to_owned());
        }
    }
    out.push(match good {
        Some(id) => check(
            "node host certificate",
            true,
            format!("signed by the host CA for {host} (key id {id:?})"),
        ),
        None if problems.is_empty() => check(
            "node host certificate",
            false,
            format!(
                "{host} presents no host certificate: run `porthole host-keys sign` there and add its HostCertificate lines"
            ),
        ),
        None => check(
            "node host certificate",
            false,
            format!("{host} presents {}: hops will refuse it", problems.join("; ")),
        ),
    });
    out
}
