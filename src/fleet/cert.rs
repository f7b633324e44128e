//! Hop certificates: minted by the front door, read by the node.
//!
//! A hop certificate is an ordinary OpenSSH user certificate, so the node's
//! stock sshd checks it (`TrustedUserCAKeys` inside the `Match User srv-*`
//! block): one principal, the login name on the node; about a minute of
//! validity; `permit-pty` and nothing else (no forwarding, no agent, no
//! user rc); `source-address` pinned to the front door when it is known.
//! The key id carries who really logged in, in a grammar of our own that
//! parses one way only (owners may contain any character, so they are
//! percent-encoded canonically).
//!
//! The node's session shell re-checks everything sshd checked (CA,
//! signature, principal, validity) before it believes the key id: sshd may
//! trust more CAs than porthole does, and a login must never be attributed
//! to an owner on the strength of a certificate porthole did not mint.

use crate::config::{read_root_only, read_root_owned, SecureReadError};
use crate::names::Target;
use ssh_key::certificate::{Builder, CertType, Certificate};
use ssh_key::private::Ed25519Keypair;
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A certificate is valid from this long before minting: the node's clock
/// may be behind the front door's.
pub const VALID_BEFORE_MINT_SECS: u64 = 30;
/// ... and until this long after: enough for one handshake, even a slow
/// one, and useless soon after if it leaks.
pub const VALID_AFTER_MINT_SECS: u64 = 60;
/// First word of every key id porthole writes; the version is in it.
pub const KEY_ID_TAG: &str = "porthole-hop/1";
/// Longest owner and front-door name carried (raw bytes, before encoding).
pub const MAX_OWNER_BYTES: usize = 512;
pub const MAX_VIA_BYTES: usize = 253;
/// CA key files are a few KiB at most (RSA-4096 is about 3.4 KiB).
const MAX_CA_FILE_BYTES: u64 = 16 * 1024;

/// Who really logged in at the front door: what the node needs for its
/// limits, its audit events and `porthole sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopIdentity {
    /// The key owner the control plane named (any text).
    pub owner: String,
    /// SHA256 fingerprint of the key the developer logged in with
    /// (`SHA256:` + 43 base64 characters, as sshd's `%f`).
    pub fingerprint: String,
    /// The front door's session id (16 lowercase hex digits), shared by the
    /// audit events of both hosts.
    pub session_id: String,
    /// The front door that minted the certificate (its host name).
    pub via: String,
}

/// What the front door asks for one hop.
#[derive(Debug, Clone)]
pub struct HopRequest<'a> {
    /// The login name on the node, `srv-abc123-d4e5f` (always with a slug:
    /// the front door has chosen the instance).
    pub login: &'a str,
    pub identity: &'a HopIdentity,
    /// The front door's own addresses, as the node sees them; empty: no
    /// `source-address` option (NAT or a load balancer in between).
    pub source_address: &'a [IpAddr],
}

/// An ephemeral key and its certificate, for one `ssh` run.
#[derive(Debug, Clone)]
pub struct Minted {
    pub key: PrivateKey,
    pub certificate: Certificate,
}

/// Why no certificate was minted. Every variant refuses the hop.
#[derive(Debug)]
pub enum MintError {
    /// The login is not an instance name of the grammar: a caller bug;
    /// refuse the session and log an error.
    BadLogin(String),
    /// A field of the identity cannot be carried (session id or
    /// fingerprint not of its grammar, owner or front-door name empty or too
    /// long): refuse the session and log an error naming the field.
    BadIdentity(&'static str),
    /// The kernel gave no randomness: refuse and tell the admin.
    Random(std::io::Error),
    /// The CA key could not sign (unsupported or corrupt key): tell the
    /// admin; no hop works until it is replaced.
    Sign(ssh_key::Error),
}

impl std::fmt::Display for MintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MintError::BadLogin(l) => write!(f, "{l:?} is not an instance login name"),
            MintError::BadIdentity(field) => {
                write!(
                    f,
                    "the {field} of this session cannot be put in a certificate"
                )
            }
            MintError::Random(e) => write!(f, "no randomness for a hop key: {e}"),
            MintError::Sign(e) => write!(f, "the user CA key could not sign a certificate: {e}"),
        }
    }
}

impl std::error::Error for MintError {}

/// Why a CA key file was not used. For the admin (`porthole doctor`, the
/// session shell's error event); the developer reads a generic sentence.
#[derive(Debug)]
pub enum CaKeyError {
    /// Ownership or mode is wrong (the private key must be root's, 0600).
    Unsafe { path: PathBuf, why: String },
    /// Absent or unreadable.
    Io { path: PathBuf, why: String },
    /// Not an OpenSSH key, or a passphrase-protected one (nobody is there
    /// to type the passphrase).
    Parse { path: PathBuf, why: String },
}

impl std::fmt::Display for CaKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaKeyError::Unsafe { path, why } => {
                write!(f, "refusing CA key {}: {why}", path.display())
            }
            CaKeyError::Io { path, why } => {
                write!(f, "cannot read CA key {}: {why}", path.display())
            }
            CaKeyError::Parse { path, why } => write!(f, "CA key {}: {why}", path.display()),
        }
    }
}

impl std::error::Error for CaKeyError {}

fn ca_read_error(path: &Path, e: SecureReadError) -> CaKeyError {
    match e {
        SecureReadError::Unsafe(why) => CaKeyError::Unsafe {
            path: path.to_owned(),
            why,
        },
        SecureReadError::Missing => CaKeyError::Io {
            path: path.to_owned(),
            why: "it does not exist".into(),
        },
        SecureReadError::Io(e) => CaKeyError::Io {
            path: path.to_owned(),
            why: e.to_string(),
        },
    }
}

/// Reads a CA private key (the front door's user CA, or the host CA
/// `porthole host-keys sign` is given): a root-owned file nobody
/// else may read (0600 or stricter), unencrypted OpenSSH format.
pub fn load_ca_key(path: &Path) -> Result<PrivateKey, CaKeyError> {
    let bytes = read_root_only(path, MAX_CA_FILE_BYTES).map_err(|e| ca_read_error(path, e))?;
    let key = PrivateKey::from_openssh(&bytes).map_err(|e| CaKeyError::Parse {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    if key.is_encrypted() {
        return Err(CaKeyError::Parse {
            path: path.to_owned(),
            why: "it is protected by a passphrase; the session shell cannot unlock it".into(),
        });
    }
    Ok(key)
}

/// Reads a CA public key (`<type> <base64> [comment]`): root-owned, not
/// writable by others (anyone who could replace it could mint logins).
pub fn load_ca_public(path: &Path) -> Result<PublicKey, CaKeyError> {
    let bytes = read_root_owned(path, MAX_CA_FILE_BYTES).map_err(|e| ca_read_error(path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| CaKeyError::Parse {
        path: path.to_owned(),
        why: "not UTF-8".into(),
    })?;
    PublicKey::from_openssh(text.trim()).map_err(|e| CaKeyError::Parse {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

/// Reads a file of CA public keys, one per line (`#` comments and blank
/// lines skipped), as sshd's `TrustedUserCAKeys` does: root-owned, not
/// writable by others. At least one key; a line that does not parse makes
/// the whole file unusable (a half-read trust list is worse than none).
pub fn load_ca_publics(path: &Path) -> Result<Vec<PublicKey>, CaKeyError> {
    let bytes = read_root_owned(path, MAX_CA_FILE_BYTES).map_err(|e| ca_read_error(path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| CaKeyError::Parse {
        path: path.to_owned(),
        why: "not UTF-8".into(),
    })?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(
            PublicKey::from_openssh(line).map_err(|e| CaKeyError::Parse {
                path: path.to_owned(),
                why: format!("line {}: {e}", n + 1),
            })?,
        );
    }
    if keys.is_empty() {
        return Err(CaKeyError::Parse {
            path: path.to_owned(),
            why: "it lists no key".into(),
        });
    }
    Ok(keys)
}

/// Fills `buf` from the kernel's CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Mints an ephemeral Ed25519 key and its user certificate for one hop,
/// valid from `now - 30 s` to `now + 60 s` (`now` in Unix seconds; tests
/// pass a time in the past to get an expired certificate).
pub fn mint(ca: &PrivateKey, req: &HopRequest<'_>, now: u64) -> Result<Minted, MintError> {
    match Target::parse(req.login) {
        Some(Target { slug: Some(_), .. }) => {}
        _ => return Err(MintError::BadLogin(req.login.to_owned())),
    }
    let key_id = encode_key_id(req.identity)?;

    let mut seed = [0u8; 32];
    random_bytes(&mut seed).map_err(MintError::Random)?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    // The keypair (zeroized on drop by ssh-key) now holds the secret.
    seed.fill(0);
    let mut nonce = [0u8; Builder::RECOMMENDED_NONCE_SIZE];
    random_bytes(&mut nonce).map_err(MintError::Random)?;
    let mut serial = [0u8; 8];
    random_bytes(&mut serial).map_err(MintError::Random)?;

    let mut b = Builder::new(
        nonce.to_vec(),
        key.public_key().key_data().clone(),
        now.saturating_sub(VALID_BEFORE_MINT_SECS),
        now.saturating_add(VALID_AFTER_MINT_SECS),
    )
    .map_err(MintError::Sign)?;
    b.cert_type(CertType::User).map_err(MintError::Sign)?;
    // Random serial: lets an admin find one hop in sshd's log ("serial N").
    b.serial(u64::from_be_bytes(serial))
        .map_err(MintError::Sign)?;
    b.key_id(key_id).map_err(MintError::Sign)?;
    b.valid_principal(req.login).map_err(MintError::Sign)?;
    // Only a pty: no port, agent or X11 forwarding, no ~/.ssh/rc. The
    // node's drop-in forbids those too; the certificate says so on its own.
    b.extension("permit-pty", "").map_err(MintError::Sign)?;
    if !req.source_address.is_empty() {
        let list: Vec<String> = req.source_address.iter().map(IpAddr::to_string).collect();
        b.critical_option("source-address", list.join(","))
            .map_err(MintError::Sign)?;
    }
    b.comment(req.login).map_err(MintError::Sign)?;
    let certificate = b.sign(ca).map_err(MintError::Sign)?;
    Ok(Minted { key, certificate })
}

impl Minted {
    /// Writes the private key to `dir/<stem>` and the certificate to
    /// `dir/<stem>-cert.pub` (where `ssh -i dir/<stem>` also finds it), both
    /// created new, 0600, never through a symbolic link. `dir` must be a
    /// directory only the caller can write.
    pub fn write_files(&self, dir: &Path, stem: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let key_path = dir.join(stem);
        let cert_path = dir.join(format!("{stem}-cert.pub"));
        let pem = self
            .key
            .to_openssh(LineEnding::LF)
            .map_err(std::io::Error::other)?;
        let cert = self
            .certificate
            .to_openssh()
            .map_err(std::io::Error::other)?;
        write_new(&key_path, pem.as_bytes())?;
        write_new(&cert_path, format!("{cert}\n").as_bytes())?;
        Ok((key_path, cert_path))
    }
}

fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // No fsync: the files live for one `ssh` run that reads them at once,
    // and are worthless after a minute; durability would only cost time
    // on every hop.
    f.write_all(data)
}

// ----- the key id -------------------------------------------------------------

/// Bytes written as themselves in an encoded field; every other byte is
/// `%XX` (uppercase hex). `@` stays readable for e-mail owners in sshd's log.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@')
}

/// Canonical percent-encoding: one text has exactly one encoding.
pub fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Inverse of [`pct_encode`], strict: uppercase hex only, no escape of a
/// byte that needs none, no raw byte that needs one, valid UTF-8. Any
/// other spelling is `None`, so no two key ids mean the same owner.
pub fn pct_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            let v = hi << 4 | lo;
            if unreserved(v) {
                return None;
            }
            out.push(v);
            i += 3;
        } else if unreserved(b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

fn valid_fingerprint(fp: &str) -> bool {
    fp.strip_prefix("SHA256:").is_some_and(|b| {
        b.len() == 43
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    })
}

fn valid_session_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `porthole-hop/1 owner=<pct> fp=SHA256:<b64> session=<hex16> via=<pct>`.
pub fn encode_key_id(id: &HopIdentity) -> Result<String, MintError> {
    if id.owner.is_empty() || id.owner.len() > MAX_OWNER_BYTES {
        return Err(MintError::BadIdentity("owner"));
    }
    if id.via.is_empty() || id.via.len() > MAX_VIA_BYTES {
        return Err(MintError::BadIdentity("front-door name"));
    }
    if !valid_fingerprint(&id.fingerprint) {
        return Err(MintError::BadIdentity("key fingerprint"));
    }
    if !valid_session_id(&id.session_id) {
        return Err(MintError::BadIdentity("session id"));
    }
    Ok(format!(
        "{KEY_ID_TAG} owner={} fp={} session={} via={}",
        pct_encode(&id.owner),
        id.fingerprint,
        id.session_id,
        pct_encode(&id.via)
    ))
}

/// Parses a key id of [`encode_key_id`]'s grammar, exactly: fields in
/// order, single spaces, canonical encodings, each field's own grammar.
pub fn decode_key_id(key_id: &str) -> Option<HopIdentity> {
    let mut words = key_id.split(' ');
    if words.next()? != KEY_ID_TAG {
        return None;
    }
    let owner = pct_decode(words.next()?.strip_prefix("owner=")?)?;
    let fingerprint = words.next()?.strip_prefix("fp=")?.to_owned();
    let session_id = words.next()?.strip_prefix("session=")?.to_owned();
    let via = pct_decode(words.next()?.strip_prefix("via=")?)?;
    if words.next().is_some()
        || owner.is_empty()
        || owner.len() > MAX_OWNER_BYTES
        || via.is_empty()
        || via.len() > MAX_VIA_BYTES
        || !valid_fingerprint(&fingerprint)
        || !valid_session_id(&session_id)
    {
        return None;
    }
    Some(HopIdentity {
        owner,
        fingerprint,
        session_id,
        via,
    })
}

// ----- the node side ----------------------------------------------------------

/// What a verified hop certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopClaim {
    pub identity: HopIdentity,
    /// The certificate's serial (in sshd's log line for the login).
    pub serial: u64,
    /// Unix seconds after which the certificate was no longer good.
    pub valid_before: u64,
}

/// Why an `SSH_USER_AUTH` line is not a hop porthole believes. The
/// comment on each variant is how the node's session shell reacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HopError {
    /// The login used a plain key, not a certificate: not a hop; go on with
    /// the Part-1 path (owner from the keys cache).
    NotACertificate,
    /// The line or the certificate does not parse: refuse the session, log
    /// an error (sshd wrote something we do not understand).
    Malformed(String),
    /// A host certificate presented as a user one: refuse, security event.
    NotAUserCertificate,
    /// Signed by a CA porthole does not trust (sshd's `TrustedUserCAKeys`
    /// and porthole.toml disagree): refuse, tell the admin which CA.
    UntrustedCa { fingerprint: String },
    /// The signature does not match the contents (tampered): refuse,
    /// security event.
    BadSignature,
    /// Made for another login name (another instance or service): refuse,
    /// security event.
    WrongPrincipal { principals: Vec<String> },
    /// Not valid yet: the node's clock is behind the front door's by more
    /// than 30 s. Refuse; tell the admin to check time sync.
    NotYetValid { valid_after: u64 },
    /// No longer valid (replayed, or the session started too late): refuse;
    /// the developer may simply retry.
    Expired { valid_before: u64 },
    /// A critical option porthole does not know: refuse (OpenSSH's own
    /// rule for critical options).
    UnknownCriticalOption(String),
    /// Signed by the trusted CA but the key id is not porthole's grammar:
    /// refuse, security event (the CA key signs something else too).
    BadKeyId(String),
}

impl std::fmt::Display for HopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HopError::NotACertificate => f.write_str("the login did not use a certificate"),
            HopError::Malformed(m) => write!(f, "unreadable certificate: {m}"),
            HopError::NotAUserCertificate => f.write_str("the certificate is not a user certificate"),
            HopError::UntrustedCa { fingerprint } => {
                write!(f, "the certificate is signed by {fingerprint}, not by the configured user CA")
            }
            HopError::BadSignature => f.write_str("the certificate's signature does not match its contents"),
            HopError::WrongPrincipal { principals } => {
                write!(f, "the certificate is for {principals:?}, not for this login")
            }
            HopError::NotYetValid { valid_after } => write!(
                f,
                "the certificate is valid only from {valid_after} (Unix time): check this host's clock"
            ),
            HopError::Expired { valid_before } => {
                write!(f, "the certificate expired at {valid_before} (Unix time)")
            }
            HopError::UnknownCriticalOption(o) => {
                write!(f, "the certificate has the unknown critical option {o:?}")
            }
            HopError::BadKeyId(k) => write!(f, "the certificate's key id {k:?} is not porthole's"),
        }
    }
}

impl std::error::Error for HopError {}

/// Checks one `SSH_USER_AUTH` line (`publickey <type> <base64>`) for the
/// session `login` at Unix time `now`: a certificate signed by `ca`, a
/// user certificate, for exactly this login, valid now, with only known
/// critical options and porthole's key id.
pub fn verify_hop(line: &str, ca: &PublicKey, login: &str, now: u64) -> Result<HopClaim, HopError> {
    let rest = line
        .trim_end_matches(['\n', '\r'])
        .strip_prefix("publickey ")
        .ok_or(HopError::NotACertificate)?;
    let kind = rest.split(' ').next().unwrap_or("");
    if !kind.ends_with("-cert-v01@openssh.com") {
        return Err(HopError::NotACertificate);
    }
    let cert = Certificate::from_openssh(rest).map_err(|e| HopError::Malformed(e.to_string()))?;
    if cert.cert_type() != CertType::User {
        return Err(HopError::NotAUserCertificate);
    }
    let ca_fp = ca.fingerprint(HashAlg::Sha256);
    let signer = cert.signature_key().fingerprint(HashAlg::Sha256);
    if signer != ca_fp {
        return Err(HopError::UntrustedCa {
            fingerprint: signer.to_string(),
        });
    }
    // validate_at checks signature, CA and a time; asked at the start of
    // the window, a failure there can only be the signature. A window
    // that is empty is reported as expired, not as a bad signature.
    if cert.valid_after() >= cert.valid_before() {
        return Err(HopError::Expired {
            valid_before: cert.valid_before(),
        });
    }
    cert.validate_at(cert.valid_after(), [&ca_fp])
        .map_err(|_| HopError::BadSignature)?;
    if cert.valid_principals() != [login] {
        return Err(HopError::WrongPrincipal {
            principals: cert.valid_principals().to_vec(),
        });
    }
    if now < cert.valid_after() {
        return Err(HopError::NotYetValid {
            valid_after: cert.valid_after(),
        });
    }
    if now >= cert.valid_before() {
        return Err(HopError::Expired {
            valid_before: cert.valid_before(),
        });
    }
    if let Some(o) = cert
        .critical_options()
        .keys()
        .find(|k| k.as_str() != "source-address")
    {
        return Err(HopError::UnknownCriticalOption(o.clone()));
    }
    let identity =
        decode_key_id(cert.key_id()).ok_or_else(|| HopError::BadKeyId(cert.key_id().to_owned()))?;
    Ok(HopClaim {
        identity,
        serial: cert.serial(),
        valid_before: cert.valid_before(),
    })
}

/// [`verify_hop`] against a list of trusted CAs (the node's
/// `trusted_user_ca` file): the one that signed the certificate decides;
/// signed by none of them is [`HopError::UntrustedCa`].
pub fn verify_hop_any(
    line: &str,
    cas: &[PublicKey],
    login: &str,
    now: u64,
) -> Result<HopClaim, HopError> {
    let mut last = HopError::Malformed("no trusted user CA is configured".into());
    for ca in cas {
        match verify_hop(line, ca, login, now) {
            Err(e @ HopError::UntrustedCa { .. }) => last = e,
            other => return other,
        }
    }
    Err(last)
}

/// Picks the line of an `SSH_USER_AUTH` file that authenticated with a
/// public key (the last one: with several methods it is the last that
/// completed the login; porthole's drop-in allows publickey only).
pub fn publickey_line(auth_info: &str) -> Option<&str> {
    auth_info
        .lines()
        .rev()
        .find(|l| l.starts_with("publickey "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGIN: &str = "srv-web1-aaaaa";
    const NOW: u64 = 1_800_000_000;

    fn ca() -> PrivateKey {
        let mut seed = [0u8; 32];
        random_bytes(&mut seed).unwrap();
        PrivateKey::from(Ed25519Keypair::from_seed(&seed))
    }

    fn ident() -> HopIdentity {
        HopIdentity {
            owner: "Zoë <zoe@example.com> 100%\n=owner= fp=x".into(),
            fingerprint: format!("SHA256:{}", "A".repeat(43)),
            session_id: "0123456789abcdef".into(),
            via: "fd-1.oregon.internal".into(),
        }
    }

    fn line(c: &Certificate) -> String {
        format!("publickey {}\n", c.to_openssh().unwrap())
    }

    fn minted(ca: &PrivateKey, login: &str, now: u64, src: &[IpAddr]) -> Minted {
        let id = ident();
        mint(
            ca,
            &HopRequest {
                login,
                identity: &id,
                source_address: src,
            },
            now,
        )
        .unwrap()
    }

    #[test]
    fn minted_certificate_has_the_promised_contents() {
        let ca = ca();
        let src: Vec<IpAddr> = vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()];
        let m = minted(&ca, LOGIN, NOW, &src);
        let c = &m.certificate;
        assert_eq!(c.cert_type(), CertType::User);
        assert_eq!(c.valid_principals(), [LOGIN]);
        assert_eq!((c.valid_after(), c.valid_before()), (NOW - 30, NOW + 60));
        assert_eq!(c.extensions().keys().collect::<Vec<_>>(), ["permit-pty"]);
        assert_eq!(
            c.critical_options()
                .get("source-address")
                .map(String::as_str),
            Some("10.0.0.7,fd00::7")
        );
        assert_eq!(c.public_key(), m.key.public_key().key_data());
        assert_eq!(m.key.algorithm(), ssh_key::Algorithm::Ed25519);
        assert_eq!(decode_key_id(c.key_id()), Some(ident()));
        let no_src = minted(&ca, LOGIN, NOW, &[]);
        assert!(no_src.certificate.critical_options().is_empty());
        assert_ne!(
            no_src.key.public_key(),
            m.key.public_key(),
            "every hop has its own key"
        );
    }

    #[test]
    fn mint_refuses_what_it_cannot_carry() {
        let ca = ca();
        let id = ident();
        let req = |login| HopRequest {
            login,
            identity: &id,
            source_address: &[],
        };
        for bad in ["srv-web1", "root", "srv-web1-aaaaa -oX", ""] {
            assert!(
                matches!(mint(&ca, &req(bad), NOW), Err(MintError::BadLogin(_))),
                "{bad}"
            );
        }
        let mut id2 = ident();
        id2.session_id = "0123456789ABCDEF".into();
        assert!(matches!(
            encode_key_id(&id2),
            Err(MintError::BadIdentity("session id"))
        ));
        let mut id3 = ident();
        id3.fingerprint = "MD5:aa".into();
        assert!(matches!(
            encode_key_id(&id3),
            Err(MintError::BadIdentity("key fingerprint"))
        ));
        let mut id4 = ident();
        id4.owner = "x".repeat(MAX_OWNER_BYTES + 1);
        assert!(matches!(
            encode_key_id(&id4),
            Err(MintError::BadIdentity("owner"))
        ));
        id4.owner = String::new();
        assert!(encode_key_id(&id4).is_err());
    }

    #[test]
    fn key_id_round_trips_and_parses_one_way_only() {
        for owner in [
            "alice",
            "a b",
            "%41",
            "é",
            "x=y z",
            "owner= fp=",
            "\u{1b}[31m",
            "~.-_@",
        ] {
            let mut id = ident();
            owner.clone_into(&mut id.owner);
            let k = encode_key_id(&id).unwrap();
            assert_eq!(k.split(' ').count(), 5, "{k}");
            assert_eq!(decode_key_id(&k), Some(id), "{k}");
        }
        let good = encode_key_id(&ident()).unwrap();
        let fp = format!("SHA256:{}", "A".repeat(43));
        for bad in [
            String::new(),
            good.replacen(KEY_ID_TAG, "porthole-hop/2", 1),
            format!("{good} extra=1"),
            format!("{good} "),
            good.replace(' ', "  "),
            format!("{KEY_ID_TAG} owner=%61 fp={fp} session=0123456789abcdef via=x"),
            format!("{KEY_ID_TAG} owner=%3d fp={fp} session=0123456789abcdef via=x"),
            format!("{KEY_ID_TAG} owner=a%3 fp={fp} session=0123456789abcdef via=x"),
            format!("{KEY_ID_TAG} owner=a=b fp={fp} session=0123456789abcdef via=x"),
            format!("{KEY_ID_TAG} owner=%FF fp={fp} session=0123456789abcdef via=x"),
            format!("{KEY_ID_TAG} owner= fp={fp} session=0123456789abcdef via=x"),
            format!("{KEY_ID_TAG} fp={fp} owner=a session=0123456789abcdef via=x"),
            format!("{KEY_ID_TAG} owner=a fp={fp} session=0123456789abcdeg via=x"),
            format!("{KEY_ID_TAG} owner=a fp=SHA256:short session=0123456789abcdef via=x"),
            format!("{KEY_ID_TAG} owner=a fp={fp} session=0123456789abcdef via="),
        ] {
            assert_eq!(decode_key_id(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn node_accepts_its_hop_and_reads_the_identity() {
        let ca = ca();
        let m = minted(&ca, LOGIN, NOW, &[]);
        let claim = verify_hop(&line(&m.certificate), ca.public_key(), LOGIN, NOW + 1).unwrap();
        assert_eq!(claim.identity, ident());
        assert_eq!(claim.serial, m.certificate.serial());
        assert_eq!(claim.valid_before, NOW + 60);
        // At the edges of the window: valid_after <= now < valid_before.
        assert!(verify_hop(&line(&m.certificate), ca.public_key(), LOGIN, NOW - 30).is_ok());
        assert!(verify_hop(&line(&m.certificate), ca.public_key(), LOGIN, NOW + 59).is_ok());
    }

    #[test]
    fn node_refusals_are_typed() {
        let ca = ca();
        let other = ca_other();
        let m = minted(&ca, LOGIN, NOW, &[]);
        let l = line(&m.certificate);
        let v = |line: &str, login: &str, now: u64| verify_hop(line, ca.public_key(), login, now);
        assert!(matches!(
            verify_hop(&l, other.public_key(), LOGIN, NOW),
            Err(HopError::UntrustedCa { .. })
        ));
        assert!(matches!(
            v(&l, "srv-web1-bbbbb", NOW),
            Err(HopError::WrongPrincipal { .. })
        ));
        assert!(matches!(
            v(&l, "srv-web2-aaaaa", NOW),
            Err(HopError::WrongPrincipal { .. })
        ));
        assert_eq!(
            v(&l, LOGIN, NOW + 60),
            Err(HopError::Expired {
                valid_before: NOW + 60
            })
        );
        assert_eq!(
            v(&l, LOGIN, NOW - 31),
            Err(HopError::NotYetValid {
                valid_after: NOW - 30
            })
        );
        // A plain key is not a hop; garbage after the type is malformed.
        let plain = format!("publickey {}", m.key.public_key().to_openssh().unwrap());
        assert_eq!(v(&plain, LOGIN, NOW), Err(HopError::NotACertificate));
        assert_eq!(v("password", LOGIN, NOW), Err(HopError::NotACertificate));
        assert!(matches!(
            v(
                "publickey ssh-ed25519-cert-v01@openssh.com AAAAnope",
                LOGIN,
                NOW
            ),
            Err(HopError::Malformed(_))
        ));
    }

    fn ca_other() -> PrivateKey {
        ca()
    }

    /// A node trusting the front door's CA and the web shell's: the one that
    /// signed decides; a CA in neither list is untrusted.
    #[test]
    fn any_of_the_trusted_cas_verifies() {
        let (fd, web, stranger) = (ca(), ca(), ca());
        let trusted = [fd.public_key().clone(), web.public_key().clone()];
        for signer in [&fd, &web] {
            let l = line(&minted(signer, LOGIN, NOW, &[]).certificate);
            assert!(verify_hop_any(&l, &trusted, LOGIN, NOW).is_ok());
            // The signer's own refusals still come through (wrong principal).
            assert!(matches!(
                verify_hop_any(&l, &trusted, "srv-web1-bbbbb", NOW),
                Err(HopError::WrongPrincipal { .. })
            ));
        }
        let l = line(&minted(&stranger, LOGIN, NOW, &[]).certificate);
        assert!(matches!(
            verify_hop_any(&l, &trusted, LOGIN, NOW),
            Err(HopError::UntrustedCa { .. })
        ));
        assert!(matches!(
            verify_hop_any(&l, &[], LOGIN, NOW),
            Err(HopError::Malformed(_))
        ));
    }

    #[test]
    fn a_trust_file_lists_several_cas_and_rejects_garbage() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tmp.path();
        let (a, b) = (ca(), ca());
        let p = dir.join("user_ca.pub");
        let text = format!(
            "# front door\n{}\n\n# web shell\n{}\n",
            a.public_key().to_openssh().unwrap(),
            b.public_key().to_openssh().unwrap()
        );
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let keys = load_ca_publics(&p).unwrap();
        assert_eq!(keys, [a.public_key().clone(), b.public_key().clone()]);
        std::fs::write(&p, "# nothing\n").unwrap();
        assert!(matches!(load_ca_publics(&p), Err(CaKeyError::Parse { .. })));
        std::fs::write(&p, "ssh-ed25519 AAAAnope\n").unwrap();
        assert!(matches!(load_ca_publics(&p), Err(CaKeyError::Parse { .. })));
    }

    /// One byte of the owner changed in the signed blob: the signature no
    /// longer matches; nothing of the key id is believed.
    #[test]
    fn tampered_key_id_is_a_bad_signature() {
        let ca = ca();
        let m = minted(&ca, LOGIN, NOW, &[]);
        let mut blob = m.certificate.to_bytes().unwrap();
        let needle = b"owner=Zo";
        let at = blob
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        blob[at + 6] = b'M';
        let tampered = Certificate::from_bytes(&blob).unwrap();
        assert!(tampered.key_id().starts_with("porthole-hop/1 owner=Mo"));
        assert_eq!(
            verify_hop(&line(&tampered), ca.public_key(), LOGIN, NOW),
            Err(HopError::BadSignature)
        );
    }

    /// The right CA signed something that is not a porthole hop (a human
    /// admin's certificate, a host certificate): never a hop identity.
    #[test]
    fn foreign_certificates_of_the_trusted_ca_are_refused() {
        let ca = ca();
        let subject = ca_other();
        let build = |kind: CertType, key_id: &str, crit: Option<(&str, &str)>| {
            let mut b = Builder::new(
                vec![7u8; 16],
                subject.public_key().key_data().clone(),
                NOW - 10,
                NOW + 10,
            )
            .unwrap();
            b.cert_type(kind).unwrap();
            b.key_id(key_id).unwrap();
            b.valid_principal(LOGIN).unwrap();
            if let Some((k, v)) = crit {
                b.critical_option(k, v).unwrap();
            }
            b.sign(&ca).unwrap()
        };
        let v = |c: &Certificate| verify_hop(&line(c), ca.public_key(), LOGIN, NOW);
        assert!(matches!(
            v(&build(CertType::User, "alice", None)),
            Err(HopError::BadKeyId(_))
        ));
        let good_id = encode_key_id(&ident()).unwrap();
        assert_eq!(
            v(&build(CertType::Host, &good_id, None)),
            Err(HopError::NotAUserCertificate)
        );
        assert_eq!(
            v(&build(
                CertType::User,
                &good_id,
                Some(("force-command", "/bin/sh"))
            )),
            Err(HopError::UnknownCriticalOption("force-command".into()))
        );
        assert!(v(&build(
            CertType::User,
            &good_id,
            Some(("source-address", "10.0.0.1"))
        ))
        .is_ok());
    }

    #[test]
    fn the_publickey_line_is_found_in_an_auth_info_file() {
        assert_eq!(
            publickey_line("password\npublickey a b\n"),
            Some("publickey a b")
        );
        assert_eq!(publickey_line("keyboard-interactive\n"), None);
    }

    #[test]
    fn ca_private_key_must_be_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = dir.path().join("user_ca");
        let k = ca();
        std::fs::write(&p, k.to_openssh(LineEnding::LF).unwrap().as_bytes()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        if nix::unistd::geteuid().is_root() {
            let e = load_ca_key(&p).unwrap_err();
            assert!(matches!(e, CaKeyError::Unsafe { .. }), "{e}");
            assert!(e.to_string().contains("readable by group or others"), "{e}");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(load_ca_key(&p).unwrap().public_key(), k.public_key());
            let pubp = dir.path().join("user_ca.pub");
            std::fs::write(&pubp, k.public_key().to_openssh().unwrap()).unwrap();
            assert_eq!(&load_ca_public(&pubp).unwrap(), k.public_key());
            std::os::unix::fs::chown(&p, Some(1), None).unwrap();
            assert!(matches!(load_ca_key(&p), Err(CaKeyError::Unsafe { .. })));
        }
        assert!(matches!(
            load_ca_key(&dir.path().join("absent")),
            Err(CaKeyError::Io { .. })
        ));
    }

    #[test]
    fn written_files_are_private_and_new() {
        use std::os::unix::fs::PermissionsExt;
        let ca = ca();
        let m = minted(&ca, LOGIN, NOW, &[]);
        let dir = tempfile::tempdir().unwrap();
        let (k, c) = m.write_files(dir.path(), "hop").unwrap();
        assert_eq!(c, dir.path().join("hop-cert.pub"));
        for p in [&k, &c] {
            assert_eq!(
                std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let back = Certificate::read_file(&c).unwrap();
        assert_eq!(back, m.certificate);
        assert!(
            m.write_files(dir.path(), "hop").is_err(),
            "never overwrites"
        );
    }
}
