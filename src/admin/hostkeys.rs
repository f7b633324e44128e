//! This host's SSH host keys as a platform publishes them per region:
//! SHA256 fingerprints and `known_hosts` lines, so developers can verify
//! the bastion on first connect instead of trusting it blindly.

use ssh_key::{HashAlg, PublicKey};
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_match_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ssh_host_ed25519_key");
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success());
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
}
