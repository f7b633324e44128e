//! The control-plane answer (API v1) and what it means for a login.
//!
//! Both hooks read the same document: the keys hook fresh from the control
//! plane, the session shell from the keys hook's cache. Parsing is lenient
//! where the contract says so (unknown fields, unknown service types, one bad
//! key among good ones) and strict where a mistake would open a door (the
//! service ID must be the one asked for).

use crate::names::ServiceId;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

/// `service` object of the answer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ServiceInfo {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub plan: Option<String>,
}

/// One entry of `keys`, before the key itself is validated.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct KeyEntry {
    pub public_key: String,
    pub owner: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub from: Option<Vec<String>>,
}

/// The whole answer. `keys` stays raw so that one malformed entry is skipped
/// (and logged by index) instead of failing the document.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDoc {
    pub service: ServiceInfo,
    pub keys: Vec<Result<KeyEntry, String>>,
    /// Optional per-service overrides; kept raw for the session controls.
    pub limits: Option<Value>,
}

/// Why a body is not a usable answer: the control plane is unhealthy or
/// misbehaving; callers fall back to the cache like any other failure.
#[derive(Debug, Clone, PartialEq)]
pub enum DocError {
    /// Not JSON, or not the v1 shape: message says where.
    Malformed(String),
    /// The answer is about a different service than the one asked for.
    WrongService { asked: String, got: String },
}

impl std::fmt::Display for DocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DocError::Malformed(m) => write!(f, "malformed control-plane answer: {m}"),
            DocError::WrongService { asked, got } => {
                write!(
                    f,
                    "control plane answered for {got:?} when asked for {asked}"
                )
            }
        }
    }
}

impl std::error::Error for DocError {}

/// Parses a control-plane body as JSON where a member named twice in one
/// object keeps its FIRST value (serde_json's `Value` keeps the last). The
/// document is deterministic either way, but first-wins means a trailing
/// `"from": null` or `"expires_at": null` appended to an entry, or a second
/// `"service"`, cannot silently replace what came first.
pub fn parse_json(body: &[u8]) -> Result<Value, DocError> {
    serde_json::from_slice::<FirstWins>(body)
        .map(|v| v.0)
        .map_err(|e| DocError::Malformed(e.to_string()))
}

/// A JSON value built with first-wins object members (see [`parse_json`]).
struct FirstWins(Value);

impl<'de> Deserialize<'de> for FirstWins {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FirstWinsVisitor).map(FirstWins)
    }
}

struct FirstWinsVisitor;

impl<'de> Visitor<'de> for FirstWinsVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(FirstWins(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                map.next_value::<IgnoredAny>()?;
            } else {
                let FirstWins(v) = map.next_value()?;
                obj.insert(key, v);
            }
        }
        Ok(Value::Object(obj))
    }
}

impl ServiceDoc {
    /// Parses a body for `asked` (duplicate members: the first wins).
    pub fn parse(body: &[u8], asked: &ServiceId) -> Result<ServiceDoc, DocError> {
        ServiceDoc::from_value(parse_json(body)?, asked)
    }

    pub fn from_value(v: Value, asked: &ServiceId) -> Result<ServiceDoc, DocError> {
        let Value::Object(mut obj) = v else {
            return Err(DocError::Malformed("top level is not an object".into()));
        };
        let service_v = obj
            .remove("service")
            .ok_or_else(|| DocError::Malformed("no \"service\" object".into()))?;
        let service: ServiceInfo = serde_json::from_value(service_v)
            .map_err(|e| DocError::Malformed(format!("service: {e}")))?;
        if service.id != asked.as_str() {
            return Err(DocError::WrongService {
                asked: asked.to_string(),
                got: service.id,
            });
        }
        let keys = match obj.remove("keys") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| serde_json::from_value::<KeyEntry>(item).map_err(|e| e.to_string()))
                .collect(),
            Some(_) => return Err(DocError::Malformed("\"keys\" is not an array".into())),
        };
        let limits = obj.remove("limits").filter(|l| !l.is_null());
        Ok(ServiceDoc {
            service,
            keys,
            limits,
        })
    }
}

/// What the platform offers this service over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellPolicy {
    Allowed,
    /// No shell; the text is shown to the user as is.
    Refused(String),
}

/// Decides from type and plan whether the service gets a shell, and if not,
/// the one sentence the developer reads instead of "Permission denied".
pub fn shell_policy(service: &ServiceInfo) -> ShellPolicy {
    let id = &service.id;
    let free = service
        .plan
        .as_deref()
        .map(|p| p.eq_ignore_ascii_case("free"))
        .unwrap_or(false);
    match service.kind.as_str() {
        "web_service" if free => ShellPolicy::Refused(format!(
            "{id} is a free web service; SSH needs a paid instance type (upgrade it in the dashboard)"
        )),
        "web_service" | "private_service" | "background_worker" => ShellPolicy::Allowed,
        "cron_job" => ShellPolicy::Refused(format!(
            "{id} is a cron job; there is no SSH for cron jobs, use the dashboard shell"
        )),
        "static_site" => ShellPolicy::Refused(format!(
            "{id} is a static site; static sites have no running instance to SSH into"
        )),
        "postgres" | "key_value" => ShellPolicy::Refused(format!(
            "{id} is a datastore ({}); connect with its client and connection string instead of SSH",
            service.kind
        )),
        other => ShellPolicy::Refused(format!(
            "{id} has service type {other:?}, which porthole does not offer SSH for"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> ServiceId {
        ServiceId::parse(s).unwrap()
    }

    #[test]
    fn parses_v1_and_ignores_unknown_fields() {
        let body = br#"{"service":{"id":"srv-a1","name":"api","type":"web_service","plan":"starter","extra":1},
            "keys":[{"public_key":"ssh-ed25519 AAAA x","owner":"a@x","from":["10.0.0.0/8"],"new":true},
                    {"public_key":5,"owner":"b@x"}],
            "limits":{"max_sessions_per_instance":3},"future":[1]}"#;
        let doc = ServiceDoc::parse(body, &sid("srv-a1")).unwrap();
        assert_eq!(doc.service.kind, "web_service");
        assert_eq!(doc.keys.len(), 2);
        assert!(doc.keys[0].is_ok());
        assert!(
            doc.keys[1].is_err(),
            "wrong JSON type is one bad key, not a bad doc"
        );
        assert!(doc.limits.is_some());
    }

    #[test]
    fn refuses_garbage_and_answers_for_other_services() {
        assert!(matches!(
            ServiceDoc::parse(b"<html>", &sid("srv-a1")),
            Err(DocError::Malformed(_))
        ));
        assert!(matches!(
            ServiceDoc::parse(b"[]", &sid("srv-a1")),
            Err(DocError::Malformed(_))
        ));
        assert!(matches!(
            ServiceDoc::parse(
                br#"{"service":{"id":"srv-b2","type":"web_service"}}"#,
                &sid("srv-a1")
            ),
            Err(DocError::WrongService { .. })
        ));
        assert!(matches!(
            ServiceDoc::parse(
                br#"{"service":{"id":"srv-a1","type":"web_service"},"keys":{}}"#,
                &sid("srv-a1")
            ),
            Err(DocError::Malformed(_))
        ));
    }

    #[test]
    fn policy_by_type_and_plan() {
        let info = |kind: &str, plan: Option<&str>| ServiceInfo {
            id: "srv-a1".into(),
            name: None,
            kind: kind.into(),
            plan: plan.map(Into::into),
        };
        assert_eq!(
            shell_policy(&info("web_service", Some("starter"))),
            ShellPolicy::Allowed
        );
        assert_eq!(
            shell_policy(&info("private_service", None)),
            ShellPolicy::Allowed
        );
        assert_eq!(
            shell_policy(&info("background_worker", Some("pro"))),
            ShellPolicy::Allowed
        );
        let msg = |p: ShellPolicy| match p {
            ShellPolicy::Refused(m) => m,
            ShellPolicy::Allowed => String::new(),
        };
        assert!(
            msg(shell_policy(&info("web_service", Some("free")))).contains("paid instance type")
        );
        assert!(msg(shell_policy(&info("cron_job", None))).contains("dashboard shell"));
        assert!(msg(shell_policy(&info("static_site", None))).contains("static site"));
        assert!(msg(shell_policy(&info("postgres", None))).contains("datastore"));
        assert!(msg(shell_policy(&info("key_value", None))).contains("datastore"));
        assert!(msg(shell_policy(&info("gpu_box", None))).contains("gpu_box"));
    }

    /// Fuzzing finding: with serde_json's last-wins objects a document could
    /// name its service twice, or append `"from": null` / `"expires_at":
    /// null` to an entry and drop the restriction written first. The first
    /// occurrence of a member now wins, in the hook and the cache alike.
    #[test]
    fn duplicate_members_first_occurrence_wins() {
        let body = br#"{"service":{"id":"srv-a1","type":"web_service"},
            "service":{"id":"srv-b2","type":"cron_job"},
            "keys":[{"public_key":"ssh-ed25519 AAAA","owner":"alice","owner":"mallory",
                     "from":["10.0.0.1"],"from":null,
                     "expires_at":"2030-01-01T00:00:00Z","expires_at":null}],
            "keys":[]}"#;
        let doc = ServiceDoc::parse(body, &sid("srv-a1")).unwrap();
        assert_eq!(doc.service.kind, "web_service");
        let k = doc.keys[0].as_ref().unwrap();
        assert_eq!(k.owner, "alice");
        assert_eq!(k.from.as_deref(), Some(&["10.0.0.1".to_owned()][..]));
        assert_eq!(k.expires_at.as_deref(), Some("2030-01-01T00:00:00Z"));
        assert!(
            matches!(
                ServiceDoc::parse(body, &sid("srv-b2")),
                Err(DocError::WrongService { .. })
            ),
            "the second service member is ignored"
        );
        // A broken later duplicate still makes the body malformed JSON.
        assert!(parse_json(br#"{"a":1,"a":[}"#).is_err());
        assert_eq!(
            parse_json(br#"{"n":-1,"f":2.5,"b":true,"z":null,"s":"x"}"#).unwrap(),
            serde_json::json!({"n":-1,"f":2.5,"b":true,"z":null,"s":"x"})
        );
    }
}
