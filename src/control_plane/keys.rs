//! Turning the control plane's `public_key` strings into `authorized_keys`
//! lines that sshd can enforce by itself.
//!
//! Every string is hostile: it could smuggle options (`command="…"
//! ssh-ed25519 …`), a second line, or a weak key. A key is only printed
//! after ssh-key parsed it, its type token matched its blob, and its
//! algorithm and size passed policy; the line is then rebuilt from the
//! parsed key (never copied), with `restrict,pty`, sshd's own
//! `expiry-time` and `from` options, and a sanitized comment.

use crate::control_plane::api::{KeyEntry, ServiceDoc};
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, PublicKey};

const MIN_RSA_BITS: u32 = 2048;
const MAX_KEY_STRING: usize = 16 * 1024;
const MAX_FROM_ENTRIES: usize = 64;
const MAX_COMMENT: usize = 100;
/// 9999-12-31T23:59:59Z, the last time `expiry-time="YYYYMMDDHHMMSSZ"` holds.
const LAST_EXPIRY: i64 = 253_402_300_799;

/// A key that passed parsing and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidKey {
    /// The type token (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, …).
    pub algorithm: String,
    /// The key blob in base64, as re-encoded from the parsed key.
    pub base64: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// Modulus size for RSA keys.
    pub bits: Option<u32>,
}

/// Why a listed key is not printed. The key is skipped and logged; the
/// other keys of the service are unaffected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyReject {
    /// Not `<type> <base64> [comment]`, or ssh-key could not parse it.
    Unparseable(String),
    /// Options, line breaks or control characters in the string.
    Smuggled(String),
    /// DSA keys are broken and disabled in OpenSSH.
    Dsa,
    /// RSA below 2048 bits (carries the size).
    RsaTooSmall(u32),
    /// An algorithm we do not offer (certificates, unknown types).
    Unsupported(String),
    /// `expires_at` is in the past.
    Expired(String),
    /// `expires_at` is not RFC 3339.
    BadExpiry(String),
    /// A `from` entry is not an address, network or host pattern.
    BadFrom(String),
    /// The same key was already listed at this index: the first listing
    /// alone decides (sshd would try every line of a key, so a second one
    /// with other options could only widen access).
    Duplicate(usize),
}

impl std::fmt::Display for KeyReject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyReject::Unparseable(m) => write!(f, "unparseable key: {m}"),
            KeyReject::Smuggled(m) => write!(f, "key string smuggles {m}"),
            KeyReject::Dsa => f.write_str("DSA keys are not accepted"),
            KeyReject::RsaTooSmall(b) => {
                write!(f, "RSA key of {b} bits (at least {MIN_RSA_BITS} needed)")
            }
            KeyReject::Unsupported(a) => write!(f, "key type {a} is not accepted"),
            KeyReject::Expired(t) => write!(f, "key expired at {t}"),
            KeyReject::BadExpiry(t) => write!(f, "expires_at {t:?} is not an RFC 3339 time"),
            KeyReject::BadFrom(p) => write!(f, "from pattern {p:?} is not valid"),
            KeyReject::Duplicate(i) => write!(f, "same key as entry {i}, which decides"),
        }
    }
}

impl std::error::Error for KeyReject {}

fn is_type_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b"@.-".contains(&b)
}

fn is_base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+/=".contains(&b)
}

/// Parses and checks a `public_key` string from the control plane.
pub fn validate_public_key(s: &str) -> Result<ValidKey, KeyReject> {
    if s.len() > MAX_KEY_STRING {
        return Err(KeyReject::Unparseable("longer than 16 KiB".into()));
    }
    if s.chars().any(char::is_control) {
        return Err(KeyReject::Smuggled(
            "a line break or control character".into(),
        ));
    }
    let s = s.trim_matches(' ');
    let mut parts = s.splitn(3, ' ');
    let kind = parts.next().unwrap_or("");
    let b64 = parts.next().unwrap_or("");
    if kind.is_empty() || !kind.bytes().all(is_type_char) {
        // `command="…" ssh-ed25519 …`, `restrict ssh-…`, `no-pty,…`.
        return Err(KeyReject::Smuggled(format!(
            "options before the key type ({kind:?})"
        )));
    }
    if b64.is_empty() || !b64.bytes().all(is_base64_char) {
        return Err(KeyReject::Unparseable("the key blob is not base64".into()));
    }
    let mut key = PublicKey::from_openssh(&format!("{kind} {b64}"))
        .map_err(|e| KeyReject::Unparseable(e.to_string()))?;
    let algorithm = key.algorithm();
    if algorithm.as_str() != kind {
        return Err(KeyReject::Unparseable(format!(
            "type {kind} does not match the key blob ({})",
            algorithm.as_str()
        )));
    }
    let bits = match &algorithm {
        Algorithm::Ed25519 | Algorithm::SkEd25519 | Algorithm::SkEcdsaSha2NistP256 => None,
        Algorithm::Ecdsa { .. } => {
            if !ecdsa_point_on_curve(&key) {
                return Err(KeyReject::Unparseable(
                    "the ECDSA point is not an uncompressed point of its curve".into(),
                ));
            }
            None
        }
        Algorithm::Rsa { .. } => {
            let bits = key
                .key_data()
                .rsa()
                .map(|r| mpint_bits(r.n.as_positive_bytes().unwrap_or(&[])))
                .unwrap_or(0);
            if bits < MIN_RSA_BITS {
                return Err(KeyReject::RsaTooSmall(bits));
            }
            Some(bits)
        }
        Algorithm::Dsa => return Err(KeyReject::Dsa),
        other => return Err(KeyReject::Unsupported(other.as_str().to_owned())),
    };
    key.set_comment("");
    let encoded = key
        .to_openssh()
        .map_err(|e| KeyReject::Unparseable(e.to_string()))?;
    let base64 = encoded
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok(ValidKey {
        algorithm: algorithm.as_str().to_owned(),
        base64,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        bits,
    })
}

/// OpenSSH accepts an ECDSA key only when its point is uncompressed, on
/// its curve and not the identity; ssh-key checks only the encoding, so a
/// line sshd cannot read (`ssh-keygen -l` refuses it) would be printed.
fn ecdsa_point_on_curve(key: &PublicKey) -> bool {
    let Some(point) = key.key_data().ecdsa() else {
        return false;
    };
    point.as_sec1_bytes().first() == Some(&4)
        && match point.curve() {
            EcdsaCurve::NistP256 => p256::ecdsa::VerifyingKey::try_from(point).is_ok(),
            EcdsaCurve::NistP384 => p384::ecdsa::VerifyingKey::try_from(point).is_ok(),
            EcdsaCurve::NistP521 => p521::ecdsa::VerifyingKey::try_from(point).is_ok(),
        }
}

fn mpint_bits(bytes: &[u8]) -> u32 {
    match bytes.iter().position(|&b| b != 0) {
        None => 0,
        Some(i) => {
            let rest = &bytes[i..];
            let lead = rest.first().copied().unwrap_or(0);
            (rest.len() as u32) * 8 - lead.leading_zeros()
        }
    }
}

/// A `from=` entry: an address, CIDR network or host pattern with `*`/`?`,
/// optionally negated with a leading `!`.
fn valid_from(p: &str) -> bool {
    let body = p.strip_prefix('!').unwrap_or(p);
    !body.is_empty()
        && body.len() <= 255
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:/*?-_".contains(&b))
}

/// Only characters that cannot confuse an authorized_keys parser or a log.
fn sanitize_comment(owner: &str) -> String {
    let c: String = owner
        .chars()
        .take(MAX_COMMENT)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if c.is_empty() {
        "porthole".into()
    } else {
        c
    }
}

/// Checks the entry's expiry: Ok(None) without one, Ok(Some(unix)) when in
/// the future.
pub fn entry_expiry(entry: &KeyEntry, now_unix: i64) -> Result<Option<i64>, KeyReject> {
    match &entry.expires_at {
        None => Ok(None),
        Some(t) => {
            // sshd's expiry-time has four year digits: a UTC time past
            // 9999 (e.g. `9999-12-31T23:59:59-23:59`) cannot be written.
            let at = crate::time::parse_rfc3339(t)
                .filter(|&at| at <= LAST_EXPIRY)
                .ok_or_else(|| KeyReject::BadExpiry(t.clone()))?;
            if at <= now_unix {
                Err(KeyReject::Expired(t.clone()))
            } else {
                Ok(Some(at))
            }
        }
    }
}

/// Renders the authorized_keys line for a validated key of `entry`.
pub fn render_line(entry: &KeyEntry, key: &ValidKey, now_unix: i64) -> Result<String, KeyReject> {
    let mut opts = String::from("restrict,pty");
    if let Some(at) = entry_expiry(entry, now_unix)? {
        opts.push_str(&format!(
            ",expiry-time=\"{}\"",
            crate::time::format_expiry(at)
        ));
    }
    if let Some(from) = &entry.from {
        if from.is_empty() || from.len() > MAX_FROM_ENTRIES {
            return Err(KeyReject::BadFrom(format!("{} entries", from.len())));
        }
        if let Some(bad) = from.iter().find(|p| !valid_from(p)) {
            return Err(KeyReject::BadFrom(bad.clone()));
        }
        opts.push_str(&format!(",from=\"{}\"", from.join(",")));
    }
    Ok(format!(
        "{opts} {} {} {}",
        key.algorithm,
        key.base64,
        sanitize_comment(&entry.owner)
    ))
}

/// One listed key after policy: its line, or why it was skipped.
pub struct Checked<'a> {
    pub index: usize,
    pub entry: Option<&'a KeyEntry>,
    pub result: Result<(ValidKey, String), KeyReject>,
}

/// Validates and renders every key of the document. A key listed twice is
/// decided by its first listing alone (expired or not); later listings are
/// rejected as duplicates.
pub fn check_all(doc: &ServiceDoc, now_unix: i64) -> Vec<Checked<'_>> {
    let mut first_listing: std::collections::HashMap<(String, String), usize> =
        std::collections::HashMap::new();
    doc.keys
        .iter()
        .enumerate()
        .map(|(index, k)| match k {
            Err(e) => Checked {
                index,
                entry: None,
                result: Err(KeyReject::Unparseable(e.clone())),
            },
            Ok(entry) => {
                let result = validate_public_key(&entry.public_key).and_then(|key| {
                    let id = (key.algorithm.clone(), key.base64.clone());
                    if let Some(&first) = first_listing.get(&id) {
                        return Err(KeyReject::Duplicate(first));
                    }
                    first_listing.insert(id, index);
                    render_line(entry, &key, now_unix).map(|line| (key, line))
                });
                Checked {
                    index,
                    entry: Some(entry),
                    result,
                }
            }
        })
        .collect()
}

/// The entry listing the key `algorithm base64` first, when it is valid and
/// unexpired: the session shell uses it to learn who logged in. Like
/// [`check_all`], only the first listing of a key counts.
pub fn find_listed_key<'a>(
    doc: &'a ServiceDoc,
    algorithm: &str,
    base64: &str,
    now_unix: i64,
) -> Option<(&'a KeyEntry, ValidKey)> {
    let (entry, key) = doc
        .keys
        .iter()
        .filter_map(|k| k.as_ref().ok())
        .find_map(|entry| {
            let key = validate_public_key(&entry.public_key).ok()?;
            (key.algorithm == algorithm && key.base64 == base64).then_some((entry, key))
        })?;
    // The hook's test (expiry, from patterns): a listing it printed no line
    // for never names the owner of a session.
    render_line(entry, &key, now_unix).ok()?;
    Some((entry, key))
}

/// The listing of the key with this SHA256 fingerprint (`SHA256:…`, as
/// sshd's `%f`), by the same rules as [`find_listed_key`]: the first
/// listing decides, and one the keys hook would print no line for (expired,
/// bad options) admits nothing. For a hop: the node learns the key only by
/// its fingerprint, from the front door's certificate.
pub fn find_listed_fingerprint<'a>(
    doc: &'a ServiceDoc,
    fingerprint: &str,
    now_unix: i64,
) -> Option<(&'a KeyEntry, ValidKey)> {
    let (entry, key) = doc
        .keys
        .iter()
        .filter_map(|k| k.as_ref().ok())
        .find_map(|entry| {
            let key = validate_public_key(&entry.public_key).ok()?;
            (key.fingerprint == fingerprint).then_some((entry, key))
        })?;
    render_line(entry, &key, now_unix).ok()?;
    Some((entry, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn keygen(dir: &std::path::Path, args: &[&str], name: &str) -> String {
        let path = dir.join(name);
        let st = Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-C", "test@example"])
            .args(args)
            .arg("-f")
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success(), "ssh-keygen {args:?}");
        std::fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn entry(pk: &str) -> KeyEntry {
        KeyEntry {
            public_key: pk.into(),
            owner: "alice@example.com".into(),
            name: None,
            expires_at: None,
            from: None,
        }
    }

    #[test]
    fn accepted_types_parse_and_render_lines_ssh_keygen_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&[&str], &str, Option<u32>)] = &[
            (&["-t", "ed25519"], "ssh-ed25519", None),
            (&["-t", "ecdsa", "-b", "256"], "ecdsa-sha2-nistp256", None),
            (&["-t", "ecdsa", "-b", "384"], "ecdsa-sha2-nistp384", None),
            (&["-t", "ecdsa", "-b", "521"], "ecdsa-sha2-nistp521", None),
            (&["-t", "rsa", "-b", "2048"], "ssh-rsa", Some(2048)),
        ];
        for (i, (args, alg, bits)) in cases.iter().enumerate() {
            let pk = keygen(dir.path(), args, &format!("k{i}"));
            let k = validate_public_key(&pk).unwrap();
            assert_eq!(k.algorithm, *alg);
            assert_eq!(k.bits, *bits);
            assert_eq!(pk.split(' ').nth(1).unwrap(), k.base64);
            let mut e = entry(&pk);
            e.expires_at = Some("2099-01-01T00:00:00Z".into());
            e.from = Some(vec![
                "127.0.0.1".into(),
                "10.0.0.0/8".into(),
                "!*.evil.example".into(),
            ]);
            let line = render_line(&e, &k, crate::time::now_unix()).unwrap();
            assert!(line.starts_with(
                "restrict,pty,expiry-time=\"20990101000000Z\",from=\"127.0.0.1,10.0.0.0/8,!*.evil.example\" "
            ));
            let file = dir.path().join(format!("line{i}"));
            std::fs::write(&file, format!("{line}\n")).unwrap();
            let out = Command::new("ssh-keygen")
                .arg("-lf")
                .arg(&file)
                .output()
                .unwrap();
            assert!(out.status.success(), "ssh-keygen -l rejects {line}");
            assert!(String::from_utf8_lossy(&out.stdout).contains(&k.fingerprint));
        }
    }

    #[test]
    fn weak_broken_and_smuggling_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let small = keygen(dir.path(), &["-t", "rsa", "-b", "1024"], "small");
        assert_eq!(
            validate_public_key(&small),
            Err(KeyReject::RsaTooSmall(1024))
        );
        let ed = keygen(dir.path(), &["-t", "ed25519"], "ed");
        let blob = ed.split(' ').nth(1).unwrap();
        for (s, what) in [
            (format!("command=\"/bin/sh\" {ed}"), "options"),
            (format!("restrict {ed}"), "options"),
            (format!("{ed}\nssh-ed25519 {blob} second"), "newline"),
            (format!("{ed}\r"), "carriage return"),
            (format!("ssh-rsa {blob}"), "type mismatch"),
            ("ssh-ed25519 not!base64".to_string(), "garbage blob"),
            ("ssh-ed25519 AAAA".to_string(), "truncated"),
            (String::new(), "empty"),
            ("x".repeat(20_000), "huge"),
        ] {
            assert!(validate_public_key(&s).is_err(), "{what} must be rejected");
        }
        // A DSA blob (ssh-keygen may not generate DSA any more).
        let dsa = "ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZpRV1AIlH7WT2NWPq/xfW6MPbLm1Vs14E7gB00b/JmYLdrmVClpJ+f6AR7ECLCT7up1/63xhv4O1fnxqimFQ8E+4P208UewwI1VBNaFpEy9nXzrith1yrv8iIDGZ3RSAHHAAAAFQCXYFCPFSMLzLKSuYKi64QL8Fgc9QAAAIEA9+GghdabPd7LvKtcNrhXuXmUr7v6OuqC+VdMCz0HgmdRWVeOutRZT+ZxBxCBgLRJFnEj6EwoFhO3zwkyjMim4TwWeotUfI0o4KOuHiuzpnWRbqN/C/ohNWLx+2J6ASQ7zKTxvqhRkImog9/hWuWfBpKLZl6Ae1UlZAFMO/7PSSoAAACAZp2Hj1mmbSUcVDqrDxjyRWyD9H4Wg7y8pQ4u8g9EEEM4m1EcYhmO1GWZT3QgXh1VHWKtK9sK6wI6iDJ0yfJCJz4R6rM8MkA0U6D8pP3bc7QlpBB4B+iX4mqEpv8nDKw6tC+VL9PK0CQ8UsuMCYKm1wAKd2i6wUNaJY9wx5hMnxs=";
        assert!(matches!(
            validate_public_key(dsa),
            Err(KeyReject::Dsa | KeyReject::Unparseable(_))
        ));
    }

    #[test]
    fn expiry_and_from_policy() {
        let dir = tempfile::tempdir().unwrap();
        let pk = keygen(dir.path(), &["-t", "ed25519"], "k");
        let k = validate_public_key(&pk).unwrap();
        let now = crate::time::now_unix();
        let mut e = entry(&pk);
        e.expires_at = Some("2001-01-01T00:00:00Z".into());
        assert!(matches!(
            render_line(&e, &k, now),
            Err(KeyReject::Expired(_))
        ));
        e.expires_at = Some("soon".into());
        assert!(matches!(
            render_line(&e, &k, now),
            Err(KeyReject::BadExpiry(_))
        ));
        e.expires_at = None;
        for bad in ["10.0.0.0/8\",command=\"x", "a b", "1.2.3.4,5.6.7.8", ""] {
            e.from = Some(vec![bad.into()]);
            assert!(
                matches!(render_line(&e, &k, now), Err(KeyReject::BadFrom(_))),
                "{bad}"
            );
        }
        e.from = Some(vec![]);
        assert!(matches!(
            render_line(&e, &k, now),
            Err(KeyReject::BadFrom(_))
        ));
        e.from = None;
        e.owner = "eve\" command=\"x\n".into();
        let line = render_line(&e, &k, now).unwrap();
        assert!(line.ends_with(" eve__command__x_"), "{line}");
    }

    #[test]
    fn find_listed_key_matches_only_valid_unexpired_entries() {
        let dir = tempfile::tempdir().unwrap();
        let a = keygen(dir.path(), &["-t", "ed25519"], "a");
        let b = keygen(dir.path(), &["-t", "ed25519"], "b");
        let body = serde_json::json!({"service": {"id": "srv-a1", "type": "web_service"},
            "keys": [{"public_key": a, "owner": "alice"},
                     {"public_key": b, "owner": "bob", "expires_at": "2001-01-01T00:00:00Z"},
                     {"public_key": 7, "owner": "x"}]});
        let doc = ServiceDoc::parse(
            body.to_string().as_bytes(),
            &crate::names::ServiceId::parse("srv-a1").unwrap(),
        )
        .unwrap();
        let now = crate::time::now_unix();
        let blob = |s: &str| s.split(' ').nth(1).unwrap().to_owned();
        assert_eq!(
            find_listed_key(&doc, "ssh-ed25519", &blob(&a), now)
                .unwrap()
                .0
                .owner,
            "alice"
        );
        assert!(
            find_listed_key(&doc, "ssh-ed25519", &blob(&b), now).is_none(),
            "expired"
        );
        assert!(
            find_listed_key(&doc, "ssh-rsa", &blob(&a), now).is_none(),
            "wrong type"
        );
        let checked = check_all(&doc, now);
        assert_eq!(checked.iter().filter(|c| c.result.is_ok()).count(), 1);
        assert_eq!(checked.len(), 3);
    }

    /// Fuzzing finding: a key listed twice was rendered twice, and sshd
    /// tries every line of a key, so a second listing without `from` (or
    /// without expiry) widened what the first allowed; the session shell
    /// likewise skipped an expired first listing for a later one. The first
    /// listing of a key now decides alone, for both.
    #[test]
    fn duplicate_key_first_listing_decides() {
        let dir = tempfile::tempdir().unwrap();
        let a = keygen(dir.path(), &["-t", "ed25519"], "a");
        let b = keygen(dir.path(), &["-t", "ed25519"], "b");
        let body = serde_json::json!({"service": {"id": "srv-a1", "type": "web_service"},
            "keys": [{"public_key": a, "owner": "alice", "from": ["10.0.0.1"]},
                     {"public_key": format!("{a} other comment"), "owner": "mallory"},
                     {"public_key": b, "owner": "bob", "expires_at": "2001-01-01T00:00:00Z"},
                     {"public_key": b, "owner": "bob"}]});
        let doc = ServiceDoc::parse(
            body.to_string().as_bytes(),
            &crate::names::ServiceId::parse("srv-a1").unwrap(),
        )
        .unwrap();
        let now = crate::time::now_unix();
        let checked = check_all(&doc, now);
        let lines: Vec<&String> = checked
            .iter()
            .filter_map(|c| c.result.as_ref().ok().map(|(_, l)| l))
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("restrict,pty,from=\"10.0.0.1\" "));
        assert!(lines[0].ends_with(" alice"));
        assert_eq!(
            checked[1].result.as_ref().err(),
            Some(&KeyReject::Duplicate(0))
        );
        assert!(matches!(checked[2].result, Err(KeyReject::Expired(_))));
        assert_eq!(
            checked[3].result.as_ref().err(),
            Some(&KeyReject::Duplicate(2))
        );
        let blob = |s: &str| s.split(' ').nth(1).unwrap().to_owned();
        let (who, _) = find_listed_key(&doc, "ssh-ed25519", &blob(&a), now).unwrap();
        assert_eq!(who.owner, "alice");
        assert!(
            find_listed_key(&doc, "ssh-ed25519", &blob(&b), now).is_none(),
            "an expired first listing is not replaced by a later one"
        );
    }

    /// Fuzzing finding (fuzz/regressions/keys/ecdsa_point_off_curve): a
    /// mutated nistp256 key whose point is not on the curve passed ssh-key's
    /// parser, and porthole printed a line that `ssh-keygen -l` (and sshd)
    /// refuse.
    #[test]
    fn ecdsa_point_off_its_curve_is_rejected() {
        let off_curve = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBECNL++PNRgi2QKDCwkzSK1beUqRecf2JYOhG8CAjLXR1FLGQadcpFmNuQSUUAeWx+ZllhwZ3pdVdjAxkYC0Lvg=";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.pub");
        std::fs::write(&file, format!("{off_curve}\n")).unwrap();
        let st = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&file)
            .output()
            .unwrap();
        assert!(!st.status.success(), "OpenSSH itself refuses this key");
        assert!(matches!(
            validate_public_key(off_curve),
            Err(KeyReject::Unparseable(m)) if m.contains("curve")
        ));
    }

    /// Fuzzing finding (fuzz/regressions/keys/expiry_past_year_9999): an
    /// offset pushing the UTC time past year 9999 rendered a five-digit
    /// year, an `expiry-time` sshd cannot parse.
    #[test]
    fn expiry_past_year_9999_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pk = keygen(dir.path(), &["-t", "ed25519"], "k");
        let k = validate_public_key(&pk).unwrap();
        let mut e = entry(&pk);
        e.expires_at = Some("9999-12-31T23:59:59-23:59".into());
        assert_eq!(
            render_line(&e, &k, 0),
            Err(KeyReject::BadExpiry("9999-12-31T23:59:59-23:59".into()))
        );
        e.expires_at = Some("9999-12-31T23:59:59Z".into());
        let line = render_line(&e, &k, 0).unwrap();
        assert!(line.starts_with("restrict,pty,expiry-time=\"99991231235959Z\" "));
    }
}
