//! The login-name grammar: which names are ours, and what they mean.
//!
//! Every program of porthole starts from a name someone else chose (the
//! client's `ssh srv-abc123-d4e5f@…`, sshd's `%u`, `USER`), so this is the
//! first check everywhere and the only place that decides what "ours" means.
//! It is dependency-free and allocation-free because the NSS module, which
//! is loaded into every process on the host, compiles this same file.

// Nothing here needs unsafe code; the compiler keeps it that way.
#![forbid(unsafe_code)]

/// Longest service suffix after `srv-` (lowercase letters and digits).
pub const MAX_SERVICE_SUFFIX: usize = 40;
/// Length of an instance slug.
pub const SLUG_LEN: usize = 5;
/// Longest name of the grammar: `srv-` + suffix + `-` + slug.
pub const MAX_NAME_LEN: usize = 4 + MAX_SERVICE_SUFFIX + 1 + SLUG_LEN;

const PREFIX: &[u8] = b"srv-";

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn all_lower_alnum(s: &[u8]) -> bool {
    s.iter().all(|&b| is_lower_alnum(b))
}

/// Splits a login name into (service id, optional slug) when it is of our
/// grammar: `srv-<1..40 lowercase alnum>` or that followed by `-<5 alnum>`.
/// Anything else, including every byte sequence that is not ASCII, is `None`.
pub fn split_name(name: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    if name.len() > MAX_NAME_LEN || !name.starts_with(PREFIX) {
        return None;
    }
    let rest = &name[PREFIX.len()..];
    match rest.iter().position(|&b| b == b'-') {
        None => {
            if (1..=MAX_SERVICE_SUFFIX).contains(&rest.len()) && all_lower_alnum(rest) {
                Some((name, None))
            } else {
                None
            }
        }
        Some(dash) => {
            let (suffix, slug) = (&rest[..dash], &rest[dash + 1..]);
            if (1..=MAX_SERVICE_SUFFIX).contains(&suffix.len())
                && all_lower_alnum(suffix)
                && slug.len() == SLUG_LEN
                && all_lower_alnum(slug)
            {
                Some((&name[..PREFIX.len() + dash], Some(slug)))
            } else {
                None
            }
        }
    }
}

/// True when `name` is a service ID or an instance name of our grammar.
pub fn is_ours(name: &[u8]) -> bool {
    split_name(name).is_some()
}

/// The picker's login name: `ssh srv@host` shows a menu of the services
/// the key may enter (issue 20). Bare `srv` is inside the grammar's
/// prefix and is not itself a service (a service ID needs at least one
/// character after `srv-`), so it can never name a tenant.
pub const PICKER_LOGIN: &str = "srv";

/// True for exactly the picker's login name.
pub fn is_picker(name: &[u8]) -> bool {
    name == PICKER_LOGIN.as_bytes()
}

/// Every name sshd may accept for porthole: a service, an instance, or
/// the picker. The NSS module resolves exactly these.
pub fn is_login_name(name: &[u8]) -> bool {
    is_ours(name) || is_picker(name)
}

/// A checked service ID (`srv-abc123`). Holding one proves the grammar was
/// applied, so it is safe to use in paths and URLs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(String);

/// A checked login target: a service, and maybe one instance slug of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub service: ServiceId,
    pub slug: Option<String>,
}

impl ServiceId {
    /// Accepts exactly a service ID (no slug).
    pub fn parse(s: &str) -> Option<ServiceId> {
        match split_name(s.as_bytes()) {
            Some((svc, None)) => std::str::from_utf8(svc)
                .ok()
                .map(|s| ServiceId(s.to_owned())),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<service>-<slug>`, the instance name users type and logs show.
    pub fn instance_name(&self, slug: &str) -> String {
        format!("{}-{}", self.0, slug)
    }
}

impl std::fmt::Display for ServiceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Target {
    /// Accepts a service ID or an instance name.
    pub fn parse(s: &str) -> Option<Target> {
        let (svc, slug) = split_name(s.as_bytes())?;
        let service = ServiceId(std::str::from_utf8(svc).ok()?.to_owned());
        let slug = match slug {
            Some(b) => Some(std::str::from_utf8(b).ok()?.to_owned()),
            None => None,
        };
        Some(Target { service, slug })
    }
}

/// True when `s` is a valid slug on its own (5 lowercase letters/digits).
pub fn is_slug(s: &str) -> bool {
    s.len() == SLUG_LEN && all_lower_alnum(s.as_bytes())
}

/// The reserved slug of the login name that asks for a temporary instance
/// of a service: `ssh srv-abc123-fresh@host` starts a fresh instance of
/// the service's latest build for this session alone and removes it when
/// the session ends. It is a slug of the grammar (the NSS module and every
/// hook accept the name as they are), but never an instance's: a container
/// or placement entry claiming it is not an instance ([`is_instance_slug`]).
pub const TEMPORARY_SLUG: &str = "fresh";

/// True for a slug a real instance may have: the grammar's, minus the
/// reserved [`TEMPORARY_SLUG`].
pub fn is_instance_slug(s: &str) -> bool {
    is_slug(s) && s != TEMPORARY_SLUG
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_service_and_instance_names() {
        assert_eq!(split_name(b"srv-abc123"), Some((&b"srv-abc123"[..], None)));
        assert_eq!(
            split_name(b"srv-abc123-d4e5f"),
            Some((&b"srv-abc123"[..], Some(&b"d4e5f"[..])))
        );
        assert!(is_ours(b"srv-a"));
        let forty = format!("srv-{}", "a".repeat(40));
        assert!(is_ours(forty.as_bytes()));
        assert!(is_ours(format!("{forty}-12345").as_bytes()));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            &b"srv-"[..],
            b"srv",
            b"root",
            b"srv-ABC",
            b"srv-../..",
            b"srv-abc/def",
            b"srv-abc-1234",
            b"srv-abc-123456",
            b"srv-abc-d4e5f-x",
            b"srv--d4e5f",
            b"srv-abc\n",
            b"srv-abc\0",
            b"srv-abc-",
            b" srv-abc",
            "srv-\u{0430}bc".as_bytes(), // Cyrillic a
            b"SRV-abc",
        ] {
            assert!(
                !is_ours(bad),
                "{:?} must not be ours",
                String::from_utf8_lossy(bad)
            );
        }
        let too_long = format!("srv-{}", "a".repeat(41));
        assert!(!is_ours(too_long.as_bytes()));
        assert!(!is_ours("srv-".repeat(1024).as_bytes()));
    }

    #[test]
    fn the_picker_name_is_a_login_name_but_no_service() {
        assert!(is_picker(b"srv") && is_login_name(b"srv"));
        assert!(!is_ours(b"srv"), "srv is no service or instance");
        assert!(Target::parse("srv").is_none() && ServiceId::parse("srv").is_none());
        for bad in [
            &b"srv-"[..],
            b"SRV",
            b"srv ",
            b"srv\0",
            b"srvx",
            b"srv-picker-",
        ] {
            assert!(!is_picker(bad) && !is_login_name(bad), "{bad:?}");
        }
        assert!(is_login_name(b"srv-abc123") && is_login_name(b"srv-abc123-d4e5f"));
    }

    #[test]
    fn typed_parsers_agree_with_grammar() {
        let t = Target::parse("srv-abc123-d4e5f").unwrap();
        assert_eq!(t.service.as_str(), "srv-abc123");
        assert_eq!(t.slug.as_deref(), Some("d4e5f"));
        assert!(ServiceId::parse("srv-abc123-d4e5f").is_none());
        assert_eq!(
            ServiceId::parse("srv-x1").unwrap().instance_name("aaaaa"),
            "srv-x1-aaaaa"
        );
        assert!(is_slug("d4e5f") && !is_slug("D4e5f") && !is_slug("d4e5"));
        // The temporary spelling is a login name, never an instance's slug.
        let fresh = Target::parse("srv-abc123-fresh").unwrap();
        assert_eq!(fresh.slug.as_deref(), Some(TEMPORARY_SLUG));
        assert!(is_slug(TEMPORARY_SLUG) && !is_instance_slug(TEMPORARY_SLUG));
        assert!(is_instance_slug("d4e5f") && !is_instance_slug("D4e5f"));
    }
}
