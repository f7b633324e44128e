//! Web tickets: who may open a browser shell.
//!
//! The platform's dashboard hands the browser a short-lived JWT signed with
//! EdDSA (Ed25519): claims `service`, optional `instance` (a slug),
//! `owner`, `iat`, `exp` (at most [`MAX_LIFETIME_SECS`] after `iat`) and
//! `jti` (single use). porthole-web holds only the public half (PEM,
//! `[web] ticket_public_key`). Every way a ticket can be wrong has its own
//! [`Rejection`] variant: the sentence on the refusal page and the
//! `reason` of the admin's `web.rejected` event.

use crate::names::{is_slug, ServiceId};
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Longest lifetime a ticket may claim (`exp - iat`).
pub const MAX_LIFETIME_SECS: u64 = 60;
/// Clock difference tolerated between the dashboard and this host.
pub const LEEWAY_SECS: u64 = 5;
/// Longest accepted ticket (a real one is ~300 bytes).
pub const MAX_TICKET_BYTES: usize = 4096;
/// Longest owner carried (the hop certificate's limit).
pub const MAX_OWNER_BYTES: usize = crate::fleet::cert::MAX_OWNER_BYTES;
/// At most this many unexpired ticket ids are remembered; past it new
/// tickets are refused (a flood cannot make the memory grow unbounded).
pub const MAX_REMEMBERED: usize = 100_000;

/// The claims of a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub owner: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

/// A ticket that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub service: ServiceId,
    pub instance: Option<String>,
    pub owner: String,
    pub exp: u64,
    pub jti: String,
}

impl Ticket {
    /// The fingerprint a web session carries in its hop certificate's key
    /// id (a browser has no SSH key): `SHA256:` + unpadded base64 of
    /// sha256(jti), the shape of an OpenSSH key fingerprint.
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(Sha256::digest(self.jti.as_bytes()))
        )
    }
}

/// Why a ticket was refused. Each is final for that ticket: the browser
/// shows the sentence (Display), no session starts, the admin gets a
/// `web.rejected` event with [`Rejection::code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not three base64url parts with a JSON header and claims.
    Malformed(String),
    /// `alg: none` or an empty signature.
    Unsigned,
    /// Signed with another algorithm than EdDSA.
    WrongAlgorithm(String),
    /// The signature does not verify: tampered, or signed with another key.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `iat` is in the future.
    NotYetValid,
    /// `exp - iat` is more than [`MAX_LIFETIME_SECS`] (or negative).
    TooLong,
    /// The ticket is for another service than the page asked for.
    WrongService { ticket: String, asked: String },
    /// A claim breaks its grammar (owner empty or too long, instance not a
    /// slug, jti not 16..=64 of [A-Za-z0-9_-]).
    BadClaim(&'static str),
    /// This ticket id was used already.
    Replayed,
    /// Too many live ticket ids remembered: try again in a minute.
    Busy,
}

impl Rejection {
    /// Stable short name for the admin event's `reason` field.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::Unsigned => "unsigned",
            Rejection::WrongAlgorithm(_) => "wrong_algorithm",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::TooLong => "lifetime_too_long",
            Rejection::WrongService { .. } => "wrong_service",
            Rejection::BadClaim(_) => "bad_claim",
            Rejection::Replayed => "replayed",
            Rejection::Busy => "busy",
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Malformed(why) => write!(f, "this link's ticket is not a valid ticket ({why})"),
            Rejection::Unsigned => f.write_str("this link's ticket is not signed"),
            Rejection::WrongAlgorithm(a) => {
                write!(f, "this link's ticket is signed with {a}, not EdDSA")
            }
            Rejection::BadSignature => f.write_str(
                "this link's ticket does not carry the dashboard's signature (altered, or signed with another key)",
            ),
            Rejection::Expired => f.write_str(
                "this link's ticket has expired; open the shell again from the dashboard",
            ),
            Rejection::NotYetValid => f.write_str(
                "this link's ticket is not valid yet (check the clocks of the dashboard and this host)",
            ),
            Rejection::TooLong => write!(
                f,
                "this link's ticket is valid for more than {MAX_LIFETIME_SECS} seconds; the dashboard must issue shorter ones"
            ),
            Rejection::WrongService { ticket, asked } => {
                write!(f, "this link's ticket is for {ticket}, not {asked}")
            }
            Rejection::BadClaim(which) => write!(f, "this link's ticket has an invalid {which}"),
            Rejection::Replayed => f.write_str(
                "this link's ticket was used already; open the shell again from the dashboard",
            ),
            Rejection::Busy => {
                f.write_str("the web shell is too busy to accept tickets; try again in a minute")
            }
        }
    }
}

/// Checks tickets against one public key.
pub struct Verifier {
    key: DecodingKey,
}

/// Why a key file could not be used (admin problem, reported at start).
#[derive(Debug)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

fn read_small(path: &Path) -> Result<Vec<u8>, KeyError> {
    let bytes = std::fs::read(path).map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
    if bytes.len() > 16 * 1024 {
        return Err(KeyError(format!(
            "{}: not a key (too large)",
            path.display()
        )));
    }
    Ok(bytes)
}

impl Verifier {
    /// From an Ed25519 public key in PEM (`openssl pkey -pubout`).
    pub fn from_pem(pem: &[u8]) -> Result<Verifier, KeyError> {
        DecodingKey::from_ed_pem(pem)
            .map(|key| Verifier { key })
            .map_err(|e| KeyError(format!("not an Ed25519 public key in PEM: {e}")))
    }

    pub fn load(path: &Path) -> Result<Verifier, KeyError> {
        Verifier::from_pem(&read_small(path)?)
            .map_err(|e| KeyError(format!("{}: {e}", path.display())))
    }

    /// Every check but single use (see [`Replay::consume`]): signature,
    /// algorithm, times, claims, and the service the page is for.
    pub fn verify(&self, token: &str, asked: &ServiceId, now: u64) -> Result<Ticket, Rejection> {
        if token.len() > MAX_TICKET_BYTES {
            return Err(Rejection::Malformed("too long".into()));
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [header_b64, _, signature] = parts.as_slice() else {
            return Err(Rejection::Malformed("not three dot-separated parts".into()));
        };
        // The header is read by hand first only to name an unsigned or
        // foreign-algorithm ticket precisely; the verification below is
        // the crate's, with EdDSA as the only algorithm allowed.
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header_b64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Rejection::Malformed("the header is not base64url JSON".into()))?;
        match header.get("alg").and_then(|a| a.as_str()) {
            Some(a) if a.eq_ignore_ascii_case("none") => return Err(Rejection::Unsigned),
            Some("EdDSA") => {}
            Some(other) => return Err(Rejection::WrongAlgorithm(other.chars().take(16).collect())),
            None => return Err(Rejection::Malformed("the header has no \"alg\"".into())),
        }
        if signature.is_empty() {
            return Err(Rejection::Unsigned);
        }
        let mut v = Validation::new(Algorithm::EdDSA);
        // Times are checked below, against `now`, with our own rules.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        v.leeway = 0;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &v)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => Rejection::BadSignature,
                jsonwebtoken::errors::ErrorKind::Json(_) => {
                    Rejection::Malformed("the claims are not the ticket's".into())
                }
                _ => Rejection::Malformed(e.to_string()),
            })?
            .claims;
        check_claims(claims, asked, now)
    }
}

fn valid_jti(j: &str) -> bool {
    (16..=64).contains(&j.len())
        && j.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_claims(c: Claims, asked: &ServiceId, now: u64) -> Result<Ticket, Rejection> {
    if c.exp <= c.iat || c.exp - c.iat > MAX_LIFETIME_SECS {
        return Err(Rejection::TooLong);
    }
    if now >= c.exp.saturating_add(LEEWAY_SECS) {
        return Err(Rejection::Expired);
    }
    if c.iat > now.saturating_add(LEEWAY_SECS) {
        return Err(Rejection::NotYetValid);
    }
    if c.service != asked.as_str() {
        return Err(Rejection::WrongService {
            ticket: c.service.chars().take(64).collect(),
            asked: asked.to_string(),
        });
    }
    if c.owner.is_empty() || c.owner.len() > MAX_OWNER_BYTES {
        return Err(Rejection::BadClaim("owner"));
    }
    if c.instance.as_deref().is_some_and(|s| !is_slug(s)) {
        return Err(Rejection::BadClaim("instance"));
    }
    if !valid_jti(&c.jti) {
        return Err(Rejection::BadClaim("ticket id (jti)"));
    }
    Ok(Ticket {
        service: asked.clone(),
        instance: c.instance,
        owner: c.owner,
        exp: c.exp,
        jti: c.jti,
    })
}

/// The ticket ids already used, each kept until its ticket has expired
/// (after that the ticket is refused as expired anyway).
#[derive(Default)]
pub struct Replay {
    used: Mutex<HashMap<String, u64>>,
}

impl Replay {
    /// Marks the ticket used; refuses one seen before.
    pub fn consume(&self, t: &Ticket, now: u64) -> Result<(), Rejection> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.contains_key(&t.jti) {
            return Err(Rejection::Replayed);
        }
        if used.len() >= MAX_REMEMBERED / 2 {
            used.retain(|_, exp| now < exp.saturating_add(LEEWAY_SECS));
        }
        if used.len() >= MAX_REMEMBERED {
            return Err(Rejection::Busy);
        }
        used.insert(t.jti.clone(), t.exp);
        Ok(())
    }

    /// True when the ticket was used already (the page's check; the
    /// websocket consumes).
    pub fn is_used(&self, jti: &str) -> bool {
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(jti)
    }
}

/// Signs tickets (the admin CLI, the demo and tests; a platform's dashboard
/// does the same in its own language).
pub struct Signer {
    key: EncodingKey,
}

impl Signer {
    /// From an Ed25519 private key in PKCS#8 PEM (`openssl genpkey
    /// -algorithm ed25519`).
    pub fn from_pem(pem: &[u8]) -> Result<Signer, KeyError> {
        EncodingKey::from_ed_pem(pem)
            .map(|key| Signer { key })
            .map_err(|e| KeyError(format!("not an Ed25519 private key in PEM: {e}")))
    }

    pub fn load(path: &Path) -> Result<Signer, KeyError> {
        Signer::from_pem(&read_small(path)?)
            .map_err(|e| KeyError(format!("{}: {e}", path.display())))
    }

    /// Signs any claims (tests sign bad ones on purpose).
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.key)
            .map_err(|e| KeyError(format!("cannot sign: {e}")))
    }

    /// A fresh ticket: `iat = now`, `exp = now + lifetime`, random jti.
    pub fn mint(
        &self,
        service: &ServiceId,
        instance: Option<&str>,
        owner: &str,
        lifetime_secs: u64,
        now: u64,
    ) -> Result<String, KeyError> {
        self.sign(&Claims {
            service: service.to_string(),
            instance: instance.map(str::to_owned),
            owner: owner.to_owned(),
            iat: now,
            exp: now + lifetime_secs,
            jti: random_hex(16).map_err(|e| KeyError(format!("no randomness: {e}")))?,
        })
    }
}

/// `2 * n` lowercase hex digits from the kernel's CSPRNG.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; n];
    crate::fleet::cert::random_bytes(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    // Fixed test keys (openssl genpkey -algorithm ed25519; never used
    // outside tests).
    const PRIV_A: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIG+TMo7RrQF2L6JQ5Ud4ql8wxeuPeiVs0lJPePnCxDSF\n-----END PRIVATE KEY-----\n";
    const PRIV_B: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIPBzYk4IivG4U5c5ktEDfmm3BcEGsZZ+x9OISRbpAuNV\n-----END PRIVATE KEY-----\n";

    fn public_of(private_pem: &str) -> String {
        // The raw public key is derived by ring when signing; for the
        // verifier we derive the SPKI PEM with openssl at test time.
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        std::fs::write(&k, private_pem).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&k)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    const NOW: u64 = 1_900_000_000;

    fn svc() -> ServiceId {
        ServiceId::parse("srv-web1").unwrap()
    }

    fn good() -> Claims {
        Claims {
            service: "srv-web1".into(),
            instance: None,
            owner: "alice@example.com".into(),
            iat: NOW - 5,
            exp: NOW + 55,
            jti: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn the_ticket_table() {
        let a = Signer::from_pem(PRIV_A.as_bytes()).unwrap();
        let b = Signer::from_pem(PRIV_B.as_bytes()).unwrap();
        let v = Verifier::from_pem(public_of(PRIV_A).as_bytes()).unwrap();
        let ok = a.sign(&good()).unwrap();
        let t = v.verify(&ok, &svc(), NOW).unwrap();
        assert_eq!(t.owner, "alice@example.com");
        assert_eq!(t.fingerprint().len(), "SHA256:".len() + 43);

        let with = |f: &dyn Fn(&mut Claims)| {
            let mut c = good();
            f(&mut c);
            a.sign(&c).unwrap()
        };
        let parts: Vec<&str> = ok.split('.').collect();
        let mut tampered_claims = good();
        tampered_claims.owner = "mallory@example.com".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tampered_claims).unwrap()),
            parts[2]
        );
        let none_hdr = b64(&serde_json::json!({"alg": "none", "typ": "JWT"}));
        let unsigned = format!("{none_hdr}.{}.", parts[1]);
        let empty_sig = format!("{}.{}.", parts[0], parts[1]);
        let hs = format!(
            "{}.{}.{}",
            b64(&serde_json::json!({"alg": "HS256", "typ": "JWT"})),
            parts[1],
            parts[2]
        );
        let table: Vec<(&str, String, u64, Rejection)> = vec![
            ("expired", ok.clone(), NOW + 61, Rejection::Expired),
            ("tampered", tampered, NOW, Rejection::BadSignature),
            (
                "wrong key",
                b.sign(&good()).unwrap(),
                NOW,
                Rejection::BadSignature,
            ),
            ("alg none", unsigned, NOW, Rejection::Unsigned),
            ("empty signature", empty_sig, NOW, Rejection::Unsigned),
            (
                "HS256 header",
                hs,
                NOW,
                Rejection::WrongAlgorithm("HS256".into()),
            ),
            (
                "wrong service",
                with(&|c| c.service = "srv-other".into()),
                NOW,
                Rejection::WrongService {
                    ticket: "srv-other".into(),
                    asked: "srv-web1".into(),
                },
            ),
            (
                "too long",
                with(&|c| c.exp = c.iat + 61),
                NOW,
                Rejection::TooLong,
            ),
            (
                "exp before iat",
                with(&|c| c.exp = c.iat),
                NOW,
                Rejection::TooLong,
            ),
            (
                "from the future",
                with(&|c| {
                    c.iat = NOW + 30;
                    c.exp = NOW + 60
                }),
                NOW,
                Rejection::NotYetValid,
            ),
            (
                "empty owner",
                with(&|c| c.owner.clear()),
                NOW,
                Rejection::BadClaim("owner"),
            ),
            (
                "bad slug",
                with(&|c| c.instance = Some("../x".into())),
                NOW,
                Rejection::BadClaim("instance"),
            ),
            (
                "short jti",
                with(&|c| c.jti = "abc".into()),
                NOW,
                Rejection::BadClaim("ticket id (jti)"),
            ),
            (
                "garbage",
                "a.b".into(),
                NOW,
                Rejection::Malformed("not three dot-separated parts".into()),
            ),
            (
                "huge",
                "x".repeat(MAX_TICKET_BYTES + 1),
                NOW,
                Rejection::Malformed("too long".into()),
            ),
        ];
        for (name, token, now, want) in table {
            assert_eq!(v.verify(&token, &svc(), now), Err(want), "{name}");
        }
        // Unknown claims are refused (a ticket means exactly its claims).
        let extra = format!(
            "{}.{}.{}",
            parts[0],
            b64(
                &serde_json::json!({"service": "srv-web1", "owner": "a", "iat": NOW, "exp": NOW + 5, "jti": "0123456789abcdef", "admin": true})
            ),
            parts[2]
        );
        assert!(matches!(
            v.verify(&extra, &svc(), NOW),
            Err(Rejection::Malformed(_) | Rejection::BadSignature)
        ));
    }

    #[test]
    fn a_ticket_is_used_once() {
        let a = Signer::from_pem(PRIV_A.as_bytes()).unwrap();
        let v = Verifier::from_pem(public_of(PRIV_A).as_bytes()).unwrap();
        let r = Replay::default();
        let t = v.verify(&a.sign(&good()).unwrap(), &svc(), NOW).unwrap();
        assert!(!r.is_used(&t.jti));
        assert_eq!(r.consume(&t, NOW), Ok(()));
        assert!(r.is_used(&t.jti));
        assert_eq!(r.consume(&t, NOW), Err(Rejection::Replayed));
        // A fresh mint has a fresh id.
        let m = a.mint(&svc(), Some("aaaaa"), "bob", 30, NOW).unwrap();
        let t2 = v.verify(&m, &svc(), NOW).unwrap();
        assert_eq!(t2.instance.as_deref(), Some("aaaaa"));
        assert_eq!(r.consume(&t2, NOW), Ok(()));
    }
}
