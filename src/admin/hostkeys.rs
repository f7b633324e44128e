//! This host's SSH host keys as a platform publishes them per region:
//! SHA256 fingerprints and `known_hosts` lines, so developers can verify
//! the bastion on first connect instead of trusting it blindly; or, with
//! the platform's host CA, host certificates, so that developers (and
//! front doors verifying nodes) trust one `@cert-authority` line instead
//! of a fingerprint table.

use ssh_key::certificate::{Builder, CertType};
use ssh_key::{HashAlg, PrivateKey, PublicKey};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A host certificate is valid from this long before signing (clocks of
/// the clients may be behind).
pub const HOST_CERT_BACKDATE_SECS: u64 = 300;

/// One host key, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    pub path: PathBuf,
    pub algorithm: String,
    pub fingerprint: String,
    /// `<type> <base64>` without the comment.
    pub openssh: String,
}

/// Reads every `ssh_host_*_key.pub` in `dir` (normally /etc/ssh), sorted.
/// Files that do not parse are returned as errors next to the good ones.
pub fn read_host_keys(dir: &Path) -> std::io::Result<Vec<Result<HostKey, String>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.starts_with("ssh_host_") && n.ends_with("_key.pub"))
                .unwrap_or(false)
        })
        .collect();
    paths.sort();
    Ok(paths.into_iter().map(|p| parse_host_key(&p)).collect())
}

fn parse_host_key(path: &Path) -> Result<HostKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut key =
        PublicKey::from_openssh(text.trim()).map_err(|e| format!("{}: {e}", path.display()))?;
    key.set_comment("");
    let openssh = key
        .to_openssh()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(HostKey {
        path: path.to_owned(),
        algorithm: key.algorithm().as_str().to_owned(),
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        openssh: openssh.trim().to_owned(),
    })
}

/// A `known_hosts` line for `host` (and port when not 22).
pub fn known_hosts_line(host: &str, port: u16, key: &HostKey) -> String {
    if port == 22 {
        format!("{host} {}", key.openssh)
    } else {
        format!("[{host}]:{port} {}", key.openssh)
    }
}

/// One host key signed: where its certificate was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHostKey {
    pub key: HostKey,
    /// `<key>-cert.pub` next to the key (sshd's `HostCertificate`).
    pub cert_path: PathBuf,
    pub valid_before: u64,
}

/// Signs every `ssh_host_*_key.pub` in `dir` with the host CA `ca` as a
/// host certificate for `names` (the names clients connect to), valid from
/// 5 minutes before `now` for `days` days, and writes `<key>-cert.pub`
/// (0644, replaced atomically). Keys that fail are reported next to the
/// others, as [`read_host_keys`] does. `names` must be DNS names or IP
/// addresses (checked: an empty list would make a certificate for every
/// host name).
pub fn sign_host_keys(
    dir: &Path,
    ca: &PrivateKey,
    names: &[String],
    now: u64,
    days: u32,
) -> std::io::Result<Vec<Result<SignedHostKey, String>>> {
    if names.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a host certificate needs at least one --name",
        ));
    }
    if let Some(bad) = names
        .iter()
        .find(|n| !crate::control_plane::api::valid_host(n))
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{bad:?} is not a host name or an IP address"),
        ));
    }
    let valid_after = now.saturating_sub(HOST_CERT_BACKDATE_SECS);
    let valid_before = now.saturating_add(u64::from(days).saturating_mul(86_400));
    Ok(read_host_keys(dir)?
        .into_iter()
        .map(|k| {
            let k = k?;
            sign_one(&k, ca, names, valid_after, valid_before)
                .map_err(|e| format!("{}: {e}", k.path.display()))
        })
        .collect())
}

fn sign_one(
    k: &HostKey,
    ca: &PrivateKey,
    names: &[String],
    valid_after: u64,
    valid_before: u64,
) -> Result<SignedHostKey, String> {
    let public = PublicKey::from_openssh(&k.openssh).map_err(|e| e.to_string())?;
    let mut nonce = [0u8; Builder::RECOMMENDED_NONCE_SIZE];
    crate::fleet::cert::random_bytes(&mut nonce).map_err(|e| e.to_string())?;
    let mut b = Builder::new(
        nonce.to_vec(),
        public.key_data().clone(),
        valid_after,
        valid_before,
    )
    .map_err(|e| e.to_string())?;
    b.cert_type(CertType::Host).map_err(|e| e.to_string())?;
    b.key_id(format!("porthole-host {} {}", names[0], k.fingerprint))
        .map_err(|e| e.to_string())?;
    for n in names {
        b.valid_principal(n.as_str()).map_err(|e| e.to_string())?;
    }
    let cert = b.sign(ca).map_err(|e| e.to_string())?;
    let text = cert.to_openssh().map_err(|e| e.to_string())?;
    let cert_path = cert_path_for(&k.path);
    write_replace(&cert_path, format!("{text}\n").as_bytes()).map_err(|e| e.to_string())?;
    Ok(SignedHostKey {
        key: k.clone(),
        cert_path,
        valid_before,
    })
}

/// `/etc/ssh/ssh_host_ed25519_key.pub` → `/etc/ssh/ssh_host_ed25519_key-cert.pub`.
pub fn cert_path_for(pub_path: &Path) -> PathBuf {
    let s = pub_path.to_string_lossy();
    PathBuf::from(format!("{}-cert.pub", s.strip_suffix(".pub").unwrap_or(&s)))
}

/// Writes `path` through a new temporary file renamed over it: sshd never
/// reads half a certificate, and a symbolic link at `path` is replaced,
/// not followed.
fn write_replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = PathBuf::from(format!("{}.porthole-tmp", path.display()));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The sshd_config line that makes sshd present the certificate.
pub fn host_certificate_line(signed: &SignedHostKey) -> String {
    format!("HostCertificate {}", signed.cert_path.display())
}

/// The one `known_hosts` line developers add: every host under `domain`
/// (`example.com` or `*.example.com`) is trusted when its certificate is
/// signed by `ca`. `None` when `domain` is not a DNS name.
pub fn cert_authority_line(domain: &str, ca: &PublicKey) -> Option<String> {
    let bare = domain.strip_prefix("*.").unwrap_or(domain);
    if !crate::control_plane::api::valid_host(bare) || bare.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let mut ca = ca.clone();
    ca.set_comment("");
    let key = ca.to_openssh().ok()?;
    Some(format!("@cert-authority *.{bare} {}", key.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh ed25519 host key made by the real ssh-keygen in `dir`.
    fn ssh_keygen_host_key(dir: &Path) -> PathBuf {
        let key = dir.join("ssh_host_ed25519_key");
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success());
        key
    }

    #[test]
    fn fingerprints_match_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        ssh_keygen_host_key(dir.path());
        std::fs::write(dir.path().join("ssh_host_bad_key.pub"), "garbage").unwrap();
        let keys = read_host_keys(dir.path()).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(
            keys[0].is_err(),
            "bad sorts first and is reported, not fatal"
        );
        let k = keys[1].as_ref().unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(dir.path().join("ssh_host_ed25519_key.pub"))
            .output()
            .unwrap();
        let printed = String::from_utf8(out.stdout).unwrap();
        assert!(
            printed.contains(&k.fingerprint),
            "{printed} vs {}",
            k.fingerprint
        );
        assert_eq!(k.algorithm, "ssh-ed25519");
        let line = known_hosts_line("ssh.oregon.example.com", 2222, k);
        assert!(line.starts_with("[ssh.oregon.example.com]:2222 ssh-ed25519 AAAA"));
    }

    #[test]
    fn host_keys_are_signed_as_host_certificates() {
        let dir = tempfile::tempdir().unwrap();
        ssh_keygen_host_key(dir.path());
        let mut seed = [0u8; 32];
        crate::fleet::cert::random_bytes(&mut seed).unwrap();
        let ca = PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed));
        let names = vec![
            "node-1.oregon.example.com".to_owned(),
            "10.0.0.1".to_owned(),
        ];
        let now = 1_800_000_000;
        let signed = sign_host_keys(dir.path(), &ca, &names, now, 30).unwrap();
        assert_eq!(signed.len(), 1);
        let s = signed[0].as_ref().unwrap();
        assert_eq!(
            s.cert_path,
            dir.path().join("ssh_host_ed25519_key-cert.pub")
        );
        let cert = ssh_key::Certificate::read_file(&s.cert_path).unwrap();
        assert_eq!(cert.cert_type(), CertType::Host);
        assert_eq!(cert.valid_principals(), &names[..]);
        assert_eq!(cert.valid_after(), now - 300);
        assert_eq!(cert.valid_before(), now + 30 * 86_400);
        cert.validate_at(now, [&ca.public_key().fingerprint(HashAlg::Sha256)])
            .unwrap();
        assert_eq!(
            host_certificate_line(s),
            format!("HostCertificate {}", s.cert_path.display())
        );
        // Signing again replaces the certificate (a renewal), never appends.
        let again = sign_host_keys(dir.path(), &ca, &names, now + 1, 30).unwrap();
        assert!(again[0].is_ok());
        assert_eq!(
            std::fs::read_to_string(&s.cert_path)
                .unwrap()
                .lines()
                .count(),
            1
        );
        for bad in [
            vec![],
            vec!["-oProxyCommand=x".to_owned()],
            vec!["a b".to_owned()],
        ] {
            assert!(
                sign_host_keys(dir.path(), &ca, &bad, now, 30).is_err(),
                "{bad:?}"
            );
        }
        let line = cert_authority_line("example.com", ca.public_key()).unwrap();
        assert!(
            line.starts_with("@cert-authority *.example.com ssh-ed25519 AAAA"),
            "{line}"
        );
        assert_eq!(
            cert_authority_line("*.example.com", ca.public_key()),
            Some(line)
        );
        assert_eq!(cert_authority_line("a b", ca.public_key()), None);
        assert_eq!(cert_authority_line("10.0.0.1", ca.public_key()), None);
    }
}
