//! API v1 `GET {url}/v1/keys/{fingerprint}/services`: which services one
//! key may enter (the picker's question, issue 20).
//!
//! The answer is `{"services": [<service answer>, …]}`, each element the
//! body `/v1/services/{id}/ssh` gives with only this key listed. It is read
//! with the same distrust as a service answer: an element whose service ID
//! is not of the grammar, that does not parse, or that does not list the
//! asked key (a control plane listing other keys, or this key expired) is
//! dropped; the others stand. A service named twice keeps its first element.

use crate::control_plane::api::{parse_json, DocError, ServiceDoc};
use crate::control_plane::keys::find_listed_fingerprint;
use crate::names::ServiceId;
use serde_json::Value;

/// Most services one answer may list; the rest are dropped (a menu of more
/// is no menu, and the cache entry stays bounded).
pub const MAX_SERVICES: usize = 200;

/// One service of the list, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyService {
    pub id: ServiceId,
    pub doc: ServiceDoc,
}

/// Why an element was dropped (for the admin's log).
#[derive(Debug, Clone, PartialEq)]
pub struct Dropped {
    pub index: usize,
    pub reason: String,
}

/// The services of a parsed answer, in the control plane's order.
pub fn from_value(
    v: &Value,
    fingerprint: &str,
    now_unix: i64,
) -> Result<(Vec<KeyService>, Vec<Dropped>), DocError> {
    let items = match v.get("services") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => return Ok((Vec::new(), Vec::new())),
        Some(_) => return Err(DocError::Malformed("\"services\" is not an array".into())),
    };
    let mut out: Vec<KeyService> = Vec::new();
    let mut dropped = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let mut drop = |reason: String| dropped.push(Dropped { index, reason });
        if out.len() >= MAX_SERVICES {
            drop(format!("more than {MAX_SERVICES} services"));
            continue;
        }
        let id = item
            .get("service")
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str)
            .and_then(ServiceId::parse);
        let Some(id) = id else {
            drop("\"service\".\"id\" is not a service ID".into());
            continue;
        };
        if out.iter().any(|s| s.id == id) {
            drop(format!("{id} is listed twice; the first entry stands"));
            continue;
        }
        let doc = match ServiceDoc::from_value(item.clone(), &id) {
            Ok(d) => d,
            Err(e) => {
                drop(e.to_string());
                continue;
            }
        };
        if find_listed_fingerprint(&doc, fingerprint, now_unix).is_none() {
            drop(format!("{id} does not list this key (or it expired)"));
            continue;
        }
        out.push(KeyService { id, doc });
    }
    Ok((out, dropped))
}

/// Parses a body (duplicate members: the first wins, as everywhere).
pub fn parse(
    body: &[u8],
    fingerprint: &str,
    now_unix: i64,
) -> Result<(Vec<KeyService>, Vec<Dropped>), DocError> {
    from_value(&parse_json(body)?, fingerprint, now_unix)
}

/// The answer `file://` gives: every `<service>.json` of `dir` that lists
/// the key, as the HTTP API would. A file that does not parse is skipped
/// (a direct login to it is refused the same way).
pub fn scan_dir(
    dir: &std::path::Path,
    fingerprint: &str,
    max_body: u64,
    now_unix: i64,
) -> std::io::Result<Value> {
    let mut names: Vec<(ServiceId, std::path::PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = ServiceId::parse(name.strip_suffix(".json")?)?;
            Some((id, e.path()))
        })
        .collect();
    names.sort();
    let mut services = Vec::new();
    for (id, path) in names {
        if services.len() >= MAX_SERVICES {
            break;
        }
        let Ok(body) = crate::config::read_root_owned(&path, max_body) else {
            continue;
        };
        let Ok(v) = parse_json(&body) else { continue };
        let Ok(doc) = ServiceDoc::from_value(v.clone(), &id) else {
            continue;
        };
        if find_listed_fingerprint(&doc, fingerprint, now_unix).is_some() {
            services.push(only_key(v, fingerprint));
        }
    }
    Ok(serde_json::json!({ "services": services }))
}

/// The service answer with only the entries of this key in `keys`.
fn only_key(mut v: Value, fingerprint: &str) -> Value {
    if let Some(Value::Array(keys)) = v.get_mut("keys") {
        keys.retain(|k| {
            k.get("public_key")
                .and_then(Value::as_str)
                .and_then(|p| crate::control_plane::keys::validate_public_key(p).ok())
                .is_some_and(|key| key.fingerprint == fingerprint)
        });
    }
    v
}

/// Reads a cached list of the key's services (the session shell reads it
/// as root with `trusted_owner` = the keys user). `Ok(None)`: none cached.
pub fn read_cached(
    dir: &std::path::Path,
    fingerprint: &str,
    trusted_owner: Option<u32>,
    now: i64,
) -> Result<Option<(i64, Vec<KeyService>)>, crate::control_plane::cache::CacheError> {
    let name = crate::control_plane::cache::KeyListName::for_fingerprint(fingerprint);
    let Some((path, raw)) = crate::control_plane::cache::read_raw(dir, &name, trusted_owner)?
    else {
        return Ok(None);
    };
    let services = match raw.body {
        Some(v) => {
            from_value(&v, fingerprint, now)
                .map_err(|e| crate::control_plane::cache::CacheError::Corrupt(path, e.to_string()))?
                .0
        }
        None => Vec::new(),
    };
    Ok(Some((raw.fetched_at, services)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    fn fp() -> String {
        crate::control_plane::keys::validate_public_key(KEY)
            .unwrap()
            .fingerprint
    }

    fn svc(id: &str, key: &str) -> Value {
        json!({"service": {"id": id, "type": "web_service", "plan": "starter"},
               "keys": [{"public_key": key, "owner": "alice@example.com"}]})
    }

    #[test]
    fn keeps_the_services_that_list_the_key_and_drops_the_rest_one_by_one() {
        let other = "ssh-rsa AAAA";
        let body = json!({"services": [
            svc("srv-a1", KEY),
            svc("srv-../x", KEY),
            svc("srv-b2", other),
            {"service": {"id": "srv-c3"}},
            svc("srv-a1", KEY),
            "nope",
            svc("srv-d4", KEY),
        ]});
        let (ok, dropped) = from_value(&body, &fp(), 0).unwrap();
        assert_eq!(
            ok.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["srv-a1", "srv-d4"]
        );
        assert_eq!(
            dropped.iter().map(|d| d.index).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(matches!(
            parse(br#"{"services": {}}"#, &fp(), 0),
            Err(DocError::Malformed(_))
        ));
        assert_eq!(parse(b"{}", &fp(), 0).unwrap().0, vec![]);
    }

    #[test]
    fn the_file_source_scans_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::getuid().as_raw();
        std::fs::write(
            dir.path().join("srv-a1.json"),
            svc("srv-a1", KEY).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("srv-b2.json"),
            svc("srv-b2", "ssh-rsa AAAA").to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("notes.json"),
            svc("srv-c3", KEY).to_string(),
        )
        .unwrap();
        let v = scan_dir(dir.path(), &fp(), 1 << 20, 0).unwrap();
        if me == 0 {
            let (ok, _) = from_value(&v, &fp(), 0).unwrap();
            assert_eq!(ok.len(), 1);
            assert_eq!(ok[0].id.as_str(), "srv-a1");
        } else {
            // Files not owned by root are never trusted.
            assert_eq!(v, json!({"services": []}));
        }
    }
}
