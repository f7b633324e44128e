//! The properties the fuzz targets check, in one place.
//!
//! Each `check_*` function takes raw fuzzer bytes, feeds them to one of the
//! library's parsers of hostile input and panics when a property fails (not
//! only when the parser crashes). The libFuzzer targets in `fuzz/` include
//! this file with `#[path]`, and `tests/fuzz_corpus.rs` replays the committed
//! corpus through the same functions on stable `cargo test`, so the library
//! itself carries no fuzz-only code.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use porthole::control_plane::api::{KeyEntry, ServiceDoc};
use porthole::control_plane::keys::{self, ValidKey};
use porthole::names::{self, ServiceId, Target};
use porthole::session::container::{self, IdMap};
use porthole::session::shell as session;
use porthole::{config, session::runtime};
use std::collections::HashSet;
use std::path::{Component, Path};

/// The service every fuzzed control-plane document is asked for.
pub const ASKED: &str = "srv-fuzz1";
/// A fixed "now" (2026-01-01T00:00:00Z) so replays are deterministic.
pub const NOW: i64 = 1_767_225_600;

fn lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// The DESIGN.md grammar, written independently of `names.rs`:
/// `srv-` + 1..=40 lowercase alnum, optionally `-` + 5 lowercase alnum.
fn grammar_oracle(name: &[u8]) -> Option<(usize, Option<usize>)> {
    let rest = name.strip_prefix(b"srv-")?;
    let suffix_len = rest.iter().take_while(|&&b| lower_alnum(b)).count();
    if !(1..=40).contains(&suffix_len) {
        return None;
    }
    let after = &rest[suffix_len..];
    if after.is_empty() {
        return Some((4 + suffix_len, None));
    }
    let slug = after.strip_prefix(b"-")?;
    (slug.len() == 5 && slug.iter().all(|&b| lower_alnum(b))).then_some((4 + suffix_len, Some(5)))
}

/// Names: accept exactly the grammar, and whatever is accepted round-trips.
pub fn check_names(data: &[u8]) {
    let got = names::split_name(data);
    let want = grammar_oracle(data);
    assert_eq!(
        got.map(|(s, slug)| (s.len(), slug.map(<[u8]>::len))),
        want,
        "split_name disagrees with the grammar on {data:?}"
    );
    assert_eq!(names::is_ours(data), got.is_some());
    if let Some((svc, slug)) = got {
        assert!(data.len() <= names::MAX_NAME_LEN);
        for bad in [b'/', b'.', 0, b'\n', b' ', b':'] {
            assert!(!data.contains(&bad), "accepted name contains {bad:?}");
        }
        assert!(data.iter().all(|&b| lower_alnum(b) || b == b'-'));
        assert!(data.starts_with(svc));
        match slug {
            None => assert_eq!(svc, data),
            Some(slug) => {
                let mut joined = svc.to_vec();
                joined.push(b'-');
                joined.extend_from_slice(slug);
                assert_eq!(joined, data);
            }
        }
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let sid = ServiceId::parse(s);
    assert_eq!(sid.is_some(), matches!(got, Some((_, None))));
    if let Some(sid) = &sid {
        assert_eq!(sid.as_str(), s);
        assert_eq!(sid.to_string(), s);
        assert_eq!(ServiceId::parse(sid.as_str()).as_ref(), Some(sid));
    }
    let target = Target::parse(s);
    assert_eq!(target.is_some(), got.is_some());
    if let Some(t) = target {
        let rebuilt = match &t.slug {
            None => t.service.as_str().to_owned(),
            Some(slug) => {
                assert!(names::is_slug(slug));
                t.service.instance_name(slug)
            }
        };
        assert_eq!(rebuilt, s);
        assert_eq!(Target::parse(&rebuilt), Some(t.clone()));
        assert!(ServiceId::parse(t.service.as_str()).is_some());
    }
}

fn asked() -> ServiceId {
    ServiceId::parse(ASKED).expect("ASKED is of the grammar")
}

fn entry_json(e: &KeyEntry) -> serde_json::Value {
    serde_json::json!({
        "public_key": e.public_key, "owner": e.owner, "name": e.name,
        "expires_at": e.expires_at, "from": e.from,
    })
}

/// Control-plane JSON: only answers for the asked service are accepted, a
/// parsed document round-trips through its canonical form, and its keys
/// satisfy the key-line properties.
pub fn check_api(data: &[u8]) {
    let Ok(doc) = ServiceDoc::parse(data, &asked()) else {
        return;
    };
    assert_eq!(doc.service.id, ASKED);
    let other = ServiceId::parse("srv-other2").expect("grammar");
    assert!(
        matches!(
            ServiceDoc::parse(data, &other),
            Err(porthole::control_plane::api::DocError::WrongService { .. })
        ),
        "a document for {ASKED} was accepted for another service"
    );
    let _ = porthole::control_plane::api::shell_policy(&doc.service);
    check_placement(&doc);
    if doc.keys.iter().all(Result::is_ok) {
        // Placement round-trips as its good entries (skipped ones have no
        // canonical form); compared through placement(), then set aside.
        let placed = doc.placement().map(|p| {
            p.iter()
                .map(|i| serde_json::json!({"slug": i.slug, "host": i.host, "port": i.port}))
                .collect::<Vec<_>>()
        });
        let canonical = serde_json::json!({
            "service": {"id": doc.service.id, "name": doc.service.name,
                        "type": doc.service.kind, "plan": doc.service.plan},
            "keys": doc.keys.iter().flatten().map(entry_json).collect::<Vec<_>>(),
            "limits": doc.limits,
            "instances": placed,
        });
        let mut again = ServiceDoc::parse(canonical.to_string().as_bytes(), &asked())
            .expect("the canonical form of a parsed document parses");
        // serde_json parses floats fast, not exactly (1e82 comes back as
        // 1.0000000000000001e82); no limit is a float, so floats are not
        // compared.
        let mut doc = doc.clone();
        doc.limits = doc.limits.map(without_floats);
        again.limits = again.limits.map(without_floats);
        assert_eq!(
            again.placement(),
            doc.placement(),
            "placement does not round-trip"
        );
        doc.instances = None;
        again.instances = None;
        assert_eq!(again, doc, "document does not round-trip");
    }
    check_doc_lines(&doc);
}

/// Placement (issue 14): every entry kept is safe as an `ssh` argument
/// (host of the grammar, never an option or `user@`), its port is 1..=65535,
/// its slug of the name grammar and unique; routing picks only listed
/// instances and refuses others with a sentence.
fn check_placement(doc: &ServiceDoc) {
    use porthole::control_plane::api::{route, valid_host};
    let Some(placed) = doc.placement() else {
        return;
    };
    for (n, i) in placed.iter().enumerate() {
        assert!(valid_host(&i.host), "host {:?} kept", i.host);
        assert!(
            !i.host.starts_with('-') && !i.host.contains(['@', ' ', '%']),
            "{:?}",
            i.host
        );
        assert!(i.host.len() <= 253 && i.port != Some(0));
        assert!(porthole::names::is_slug(&i.slug), "slug {:?} kept", i.slug);
        assert!(
            placed[..n].iter().all(|p| p.slug != i.slug),
            "slug {} placed twice",
            i.slug
        );
    }
    for r in [0u64, 1, 7, u64::MAX] {
        match route(&asked(), &placed, None, r) {
            Ok(i) => assert!(placed.iter().any(|p| std::ptr::eq(*p, i))),
            Err(e) => assert!(placed.is_empty() && !e.to_string().is_empty()),
        }
    }
    for i in &placed {
        let got = route(&asked(), &placed, Some(&i.slug), 0).expect("a listed slug routes");
        assert_eq!(got.slug, i.slug);
    }
    assert!(
        route(&asked(), &placed, Some("zzzzz"), 0).is_err()
            || placed.iter().any(|p| p.slug == "zzzzz")
    );
}

fn without_floats(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => Value::Null,
        Value::Array(a) => Value::Array(a.into_iter().map(without_floats).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, without_floats(v))).collect())
        }
        other => other,
    }
}

/// Splits authorized_keys options at commas outside double quotes.
fn split_options(opts: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in opts.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&opts[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    assert!(!quoted, "unbalanced quotes in options {opts:?}");
    out.push(&opts[start..]);
    out
}

/// One rendered authorized_keys line for `entry`/`key`: a single line with
/// exactly porthole's options (no smuggled ones), the entry's own expiry and
/// from list, and a key that re-parses to the same fingerprint.
pub fn check_line(entry: &KeyEntry, key: &ValidKey, line: &str) {
    assert!(
        !line.chars().any(char::is_control),
        "control character in rendered line {line:?}"
    );
    assert!(
        line.starts_with("restrict,pty ") || line.starts_with("restrict,pty,"),
        "{line:?}"
    );
    let (opts, rest) = line.split_once(' ').expect("options and key");
    // Options contain no space (from entries and expiry are space-free).
    let fields: Vec<&str> = rest.split(' ').collect();
    assert_eq!(fields.len(), 3, "type, key, comment: {line:?}");
    assert_eq!(fields[0], key.algorithm);
    assert_eq!(fields[1], key.base64);
    assert!(!fields[2].is_empty() && fields[2].len() <= 100);
    assert!(fields[2]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"@._+-".contains(&b)));
    let parts = split_options(opts);
    assert_eq!(&parts[..2], ["restrict", "pty"], "{line:?}");
    let mut seen = HashSet::new();
    for p in &parts[2..] {
        let (name, value) = p.split_once('=').expect("name=\"value\"");
        assert!(seen.insert(name), "option {name} twice in {line:?}");
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .expect("quoted value");
        assert!(!value.contains('"'));
        match name {
            "expiry-time" => {
                assert_eq!(value.len(), 15, "{value:?}");
                assert!(value.ends_with('Z') && value[..14].bytes().all(|b| b.is_ascii_digit()));
                assert!(entry.expires_at.is_some());
            }
            "from" => assert_eq!(
                Some(value.to_owned()),
                entry.from.as_ref().map(|f| f.join(","))
            ),
            other => panic!("option {other:?} smuggled into {line:?}"),
        }
    }
    assert_eq!(seen.contains("expiry-time"), entry.expires_at.is_some());
    assert_eq!(seen.contains("from"), entry.from.is_some());
    let reparsed = ssh_key::PublicKey::from_openssh(&format!("{} {}", fields[0], fields[1]))
        .expect("the rendered key re-parses");
    assert_eq!(
        reparsed.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        key.fingerprint
    );
    // The fingerprint is the one of the key the control plane listed.
    let mut listed = entry.public_key.trim_matches(' ').split(' ');
    let original = format!(
        "{} {}",
        listed.next().unwrap_or(""),
        listed.next().unwrap_or("")
    );
    let original = ssh_key::PublicKey::from_openssh(&original).expect("the listed key parses");
    assert_eq!(
        original.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        key.fingerprint
    );
}

/// Every key of a document: rendered lines hold the line properties, each
/// key gets at most one line (the first listing wins), and the session
/// shell's lookup agrees with what the keys hook printed.
pub fn check_doc_lines(doc: &ServiceDoc) -> Vec<String> {
    let checked = keys::check_all(doc, NOW);
    assert_eq!(checked.len(), doc.keys.len());
    let mut lines = Vec::new();
    let mut fingerprints = HashSet::new();
    for c in &checked {
        if let Ok((key, line)) = &c.result {
            let entry = c.entry.expect("a rendered line has an entry");
            check_line(entry, key, line);
            assert!(
                fingerprints.insert(key.fingerprint.clone()),
                "key {} rendered twice",
                key.fingerprint
            );
            let (found, _) = keys::find_listed_key(doc, &key.algorithm, &key.base64, NOW)
                .expect("a printed key is found by the session shell");
            assert!(
                std::ptr::eq(found, entry),
                "session shell and keys hook disagree on the entry of {}",
                key.fingerprint
            );
            lines.push(line.clone());
        }
    }
    // A key the hook did not print is not found by the shell either.
    for k in doc.keys.iter().flatten() {
        if let Ok(v) = keys::validate_public_key(&k.public_key) {
            if !fingerprints.contains(&v.fingerprint) {
                if let Some((e, _)) = keys::find_listed_key(doc, &v.algorithm, &v.base64, NOW) {
                    // Only possible when its first listing is valid but its
                    // from list is not: the key has no line, so no login.
                    assert!(keys::render_line(e, &v, NOW).is_err());
                }
            }
        }
    }
    lines
}

/// Turns fuzzer bytes into a document for `check_doc_lines`: JSON when it
/// starts with `{`, else lines `public_key`, `owner`, `expires_at` (empty
/// for none), then `from` entries (none at all: no from list).
pub fn keys_doc(data: &[u8]) -> Option<ServiceDoc> {
    let text = std::str::from_utf8(data).ok()?;
    if text.starts_with('{') {
        return ServiceDoc::parse(data, &asked()).ok();
    }
    let mut lines = text.split('\n');
    let public_key = lines.next()?.to_owned();
    let owner = lines.next().unwrap_or("").to_owned();
    let expires_at = lines.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let from: Vec<String> = lines.map(str::to_owned).collect();
    let entry = KeyEntry {
        public_key,
        owner,
        name: None,
        expires_at,
        from: (!from.is_empty()).then_some(from),
    };
    let body = serde_json::json!({
        "service": {"id": ASKED, "type": "web_service"},
        "keys": [entry_json(&entry)],
    });
    ServiceDoc::parse(body.to_string().as_bytes(), &asked()).ok()
}

/// Key validation and line rendering; returns the rendered lines so the
/// corpus replay can hand them to `ssh-keygen -l -f`.
pub fn check_keys(data: &[u8]) -> Vec<String> {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(k) = keys::validate_public_key(s) {
            assert!(!s.chars().any(char::is_control));
            assert!(k.algorithm.bytes().all(|b| b.is_ascii_graphic()) && !k.base64.contains(' '));
            let first = s.trim_matches(' ').split(' ').next().unwrap_or("");
            assert_eq!(first, k.algorithm, "options or junk before the type");
            if k.algorithm == "ssh-rsa" {
                assert!(k.bits.unwrap_or(0) >= 2048);
            }
            assert_ne!(k.algorithm, "ssh-dss");
        }
    }
    match keys_doc(data) {
        Some(doc) => check_doc_lines(&doc),
        None => Vec::new(),
    }
}

/// Passwd lookup: the entry returned is the first well-formed line with
/// that uid, copied field by field, free of control characters.
fn check_passwd(uid: u32, text: &[u8]) {
    let Some(e) = container::passwd_lookup(text, uid) else {
        return;
    };
    assert_eq!(e.uid, uid);
    assert!(!e.name.is_empty());
    for f in [&e.name, &e.home, &e.shell] {
        assert!(
            !f.chars().any(char::is_control) && !f.contains(':'),
            "{f:?}"
        );
    }
    let first = text
        .split(|&b| b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok())
        .filter(|l| !l.starts_with('#') && !l.chars().any(char::is_control))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| {
            f.len() == 7
                && !f[0].is_empty()
                && f[2].parse::<u32>() == Ok(uid)
                && f[3].parse::<u32>().is_ok()
        })
        .expect("a matching line exists");
    assert_eq!(
        (first[0], first[3].parse::<u32>().ok(), first[5], first[6]),
        (
            e.name.as_str(),
            Some(e.gid),
            e.home.as_str(),
            e.shell.as_str()
        )
    );
}

fn check_idmap(host: u32, text: &str) {
    let Some(map) = IdMap::parse(text) else {
        return;
    };
    let lines: Vec<(u64, u64, u64)> = text
        .lines()
        .map(|l| {
            let v: Vec<u64> = l
                .split_ascii_whitespace()
                .take(3)
                .map(|x| x.parse().expect("parsed"))
                .collect();
            (v[0], v[1], v[2])
        })
        .collect();
    for &(inside, outside, count) in &lines {
        assert!(inside + count <= 1 << 32 && outside + count <= 1 << 32);
    }
    for probe in [host, 0, 1, 65534, u32::MAX, host.wrapping_add(1)] {
        let want = lines
            .iter()
            .find(|&&(_, o, c)| u64::from(probe) >= o && u64::from(probe) < o + c)
            .map(|&(i, o, _)| i + (u64::from(probe) - o));
        assert_eq!(map.to_inside(probe).map(u64::from), want, "host id {probe}");
    }
}

fn check_cgroups(text: &str) {
    let (proc_cgroup, mountinfo) = text.split_once('\0').unwrap_or((text, ""));
    for d in container::cgroup_dirs(proc_cgroup, mountinfo) {
        let rel_ok = d
            .dir
            .components()
            .all(|c| !matches!(c, Component::ParentDir));
        // A mount point may itself carry `..` only if mountinfo says so.
        assert!(rel_ok || mountinfo.contains(".."), "{:?}", d.dir);
        assert!(
            mountinfo.lines().any(|l| l.contains(" - cgroup")),
            "a directory without a cgroup mount"
        );
        assert!(proc_cgroup.contains(&d.controllers));
        let _ = d.is_required();
    }
}

fn check_env(entries: &[String]) {
    for e in entries {
        let (k, _) = e.split_once('=').expect("KEY=value");
        assert!(!k.is_empty() && !e.contains('\0'), "{e:?}");
    }
}

/// Container-side parsers, chosen by the first byte: passwd, status,
/// uid_map, cgroups, OCI config env, environ, TERM.
pub fn check_container(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = std::str::from_utf8(rest).ok();
    match which % 7 {
        0 => {
            let (uid, text) = match (rest.get(..4), rest.get(4..)) {
                (Some(u), Some(t)) => {
                    let u = u32::from_le_bytes([u[0], u[1], u[2], u[3]]);
                    (u % 70_000, t)
                }
                _ => (0, rest),
            };
            check_passwd(uid, text);
            check_passwd(0, rest);
            check_passwd(1000, rest);
        }
        1 => {
            if let Some(c) = text.and_then(container::parse_status) {
                assert!(c.umask <= 0o777);
            }
        }
        2 => {
            if let Some(t) = text {
                let host = t.len() as u32 * 4099;
                check_idmap(host, t);
            }
        }
        3 => {
            if let Some(t) = text {
                check_cgroups(t);
            }
        }
        4 => {
            if let Some(env) = container::env_from_oci_config(rest) {
                check_env(&env);
            }
        }
        5 => {
            let env = container::env_from_environ(rest);
            check_env(&env);
            assert!(env.len() <= rest.split(|&b| b == 0).count());
        }
        _ => {
            if let Some(t) = container::validated_term(text) {
                assert_eq!(Some(t.as_str()), text);
                assert!(!t.is_empty() && t.len() <= 64);
                assert!(t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b)));
            }
        }
    }
}

/// `SSH_USER_AUTH`: the result is the first `publickey` line's type and
/// key, both plain tokens.
pub fn check_user_auth(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((kind, b64)) = session::parse_user_auth(text) else {
        return;
    };
    for t in [&kind, &b64] {
        assert!(!t.is_empty() && t.len() <= 16 * 1024);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=@.-".contains(&b)));
    }
    let first = text
        .lines()
        .find(|l| l.split(' ').next() == Some("publickey"))
        .expect("a publickey line");
    let mut f = first.split(' ').skip(1);
    assert_eq!(
        (f.next(), f.next()),
        (Some(kind.as_str()), Some(b64.as_str()))
    );
}

/// Runtime state: accepted containers have a safe id and a real init pid,
/// and a container classified as an instance names a valid instance.
pub fn check_runtime(data: &[u8]) {
    if let Some(s) = runtime::parse_state(data) {
        assert!(s.init_pid > 1);
        assert!(!s.id.is_empty() && s.id.len() <= 1024 && !s.id.starts_with('.'));
        assert!(s
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-+".contains(&b)));
        assert!(Path::new(&s.id).components().count() == 1 && s.id != "..");
        for (k, _) in &s.labels {
            assert!(!k.contains('='));
        }
        if let Some((svc, slug)) =
            runtime::classify(&s, "io.porthole.service", "io.porthole.instance")
        {
            assert!(names::is_slug(&slug));
            let t = Target::parse(&svc.instance_name(&slug)).expect("instance name");
            assert_eq!((t.service, t.slug), (svc, Some(slug)));
        }
    }
    if let Ok(stat) = std::str::from_utf8(data) {
        if let Some(start) = runtime::parse_stat_start(stat) {
            let after = &stat[stat.rfind(')').expect("a ')'") + 1..];
            let state = after.split_ascii_whitespace().next().expect("state");
            assert!(state != "Z" && state != "X");
            assert_eq!(
                after
                    .split_ascii_whitespace()
                    .nth(19)
                    .map(str::parse::<u64>),
                Some(Ok(start))
            );
        }
    }
}

/// Configuration: whatever is accepted passes every documented rule.
pub fn check_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = config::Config::from_toml(text, Path::new("/fuzz/porthole.toml")) else {
        return;
    };
    let cp = &cfg.control_plane;
    assert!(["https://", "http://", "file:///"]
        .iter()
        .any(|s| cp.url.starts_with(s)));
    assert!((1..=60_000).contains(&cp.timeout_ms));
    assert!(cp.max_body_bytes >= 1024);
    assert!(cfg.cache.dir.is_absolute() && cfg.log.socket.is_absolute());
    assert!(cfg.session.state_dir.is_absolute());
    assert!(cfg.runtime.roots.iter().all(|r| r.is_absolute()));
    assert!(cp.token_file.as_ref().map_or(true, |t| t.is_absolute()));
    assert!(cfg.session.fallback_shell.starts_with('/'));
    assert!(!cfg.runtime.service_annotation.is_empty());
    assert!(!cfg.runtime.instance_annotation.is_empty());
    let again =
        config::Config::from_toml(text, Path::new("/fuzz/porthole.toml")).expect("deterministic");
    assert_eq!(again, cfg);
}

/// The picker (issue 20): the one choice line the setuid shell takes back
/// from the unprivileged picker, the `/v1/keys/{fp}/services` answer, and
/// the escaping of control-plane text for a terminal.
pub fn check_picker(data: &[u8]) {
    use porthole::picker::{escape, Choice, MAX_CHOICE_LINE};
    // The login names: exactly the grammar plus `srv`.
    assert_eq!(
        names::is_login_name(data),
        names::is_ours(data) || data == b"srv"
    );
    // A choice line is accepted only exactly as the picker writes it.
    if let Some(c) = Choice::parse(data) {
        assert!(data.len() <= MAX_CHOICE_LINE);
        assert_eq!(c.line().as_bytes(), data, "round trip");
        assert!(names::is_ours(c.service.as_str().as_bytes()));
        assert!(c.slug.as_deref().map_or(true, names::is_slug));
        assert_eq!(data.iter().filter(|&&b| b == b'\n').count(), 1);
    }
    // Escaped text has no character a terminal would act on.
    let text = String::from_utf8_lossy(data);
    let shown = escape(&text, 200);
    assert!(
        !shown.chars().any(|c| c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')),
        "{shown:?}"
    );
    assert!(shown.chars().count() <= 200 * 11 + 1);
    // The key's services: only well-formed services that list the key.
    // The fingerprint of the ed25519 key in the corpus seeds.
    const FP: &str = "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU";
    if let Ok((kept, _)) = porthole::control_plane::key_services::parse(data, FP, NOW) {
        let mut seen = HashSet::new();
        for s in &kept {
            assert!(seen.insert(s.id.clone()), "{} kept twice", s.id);
            assert_eq!(s.doc.service.id, s.id.as_str());
            assert!(keys::find_listed_fingerprint(&s.doc, FP, NOW).is_some());
        }
        assert!(kept.len() <= porthole::control_plane::key_services::MAX_SERVICES);
    }
}

/// What `porthole replay` writes to root's terminal never holds a sequence
/// that acts on it beyond drawing (OSC, DCS/APC/PM/SOS, C1, `ESC Z`, CSI
/// requests the terminal answers), whatever the recording holds; damaged
/// recordings are errors, never panics.
pub fn check_replay(data: &[u8]) {
    use porthole::admin::replay::{play, Pace, TerminalFilter};
    let mut out = Vec::new();
    let pace = Pace {
        speed: 1.0,
        idle_limit: None,
        sleep: false,
    };
    let _ = play(&mut std::io::Cursor::new(data), &mut out, pace);
    assert_terminal_safe(&String::from_utf8(out).expect("replay writes UTF-8"));
    // The filter alone, on the raw bytes, cut anywhere into two events.
    let text = String::from_utf8_lossy(data);
    let cut = text
        .char_indices()
        .map(|(i, _)| i)
        .nth(text.chars().count() / 2)
        .unwrap_or(0);
    let mut f = TerminalFilter::default();
    let mut shown = f.filter(&text[..cut]);
    shown.push_str(&f.filter(&text[cut..]));
    assert_terminal_safe(&shown);
}

fn assert_terminal_safe(s: &str) {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < c.len() {
        assert!(
            !('\u{80}'..='\u{9f}').contains(&c[i]),
            "C1 control in {s:?}"
        );
        if c[i] == '\u{1b}' {
            let next = c.get(i + 1).copied();
            assert!(next.is_some(), "lone ESC at the end of {s:?}");
            assert!(
                !matches!(next, Some(']' | 'P' | '_' | '^' | 'X' | 'Z')),
                "string or identify sequence in {s:?}"
            );
            if next == Some('[') {
                let mut j = i + 2;
                while j < c.len() && ('\u{20}'..='\u{3f}').contains(&c[j]) {
                    assert_ne!(c[j], '$', "mode request in {s:?}");
                    j += 1;
                }
                let fin = c.get(j).copied();
                assert!(
                    fin.is_some_and(|f| ('\u{40}'..='\u{7e}').contains(&f)),
                    "unfinished CSI in {s:?}"
                );
                assert!(
                    !matches!(fin, Some('n' | 'c' | 't' | 'x')),
                    "a CSI the terminal answers in {s:?}"
                );
                i = j;
            } else {
                i += 1;
            }
        }
        i += 1;
    }
}

/// porthole-sftp's audit lines (issue 17), read by the root supervisor from
/// inside the instance: never a panic; every event passed on is one of the
/// three kinds with paths of at most `MAX_PATH` bytes, re-encodes to a line
/// that decodes to itself, and their count plus the skipped lines never
/// exceeds the number of lines in the input.
pub fn check_sftp_events(data: &[u8]) {
    use porthole::sftp::events::{relay, FileEvent, MAX_EVENTS, MAX_PATH};
    let mut got = Vec::new();
    let skipped = relay(data, |e| got.push(e));
    let lines = data.split(|b| *b == b'\n').count() as u64;
    assert!(got.len() as u64 + skipped.malformed + skipped.over_limit <= lines);
    assert!(got.len() as u64 <= MAX_EVENTS);
    for e in &got {
        let paths: Vec<&String> = match e {
            FileEvent::Write { path, .. } | FileEvent::Remove { path } => vec![path],
            FileEvent::Rename { from, to } => vec![from, to],
        };
        // Lossy UTF-8 may widen a byte to three; the raw bytes were capped.
        assert!(paths.iter().all(|p| p.len() <= 3 * MAX_PATH));
        let line = e.encode();
        let back = FileEvent::decode(line.trim_end_matches('\n').as_bytes());
        if paths.iter().all(|p| p.len() <= MAX_PATH) {
            assert_eq!(back.as_ref(), Some(e), "{line:?}");
        }
    }
}

/// A property check over raw fuzzer input.
pub type Check = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const TARGETS: &[(&str, Check)] = &[
    ("names", check_names),
    ("api", check_api),
    ("keys", |d| {
        check_keys(d);
    }),
    ("container", check_container),
    ("user_auth", check_user_auth),
    ("runtime", check_runtime),
    ("config", check_config),
    ("picker", check_picker),
    ("replay", check_replay),
    ("sftp_events", check_sftp_events),
];
