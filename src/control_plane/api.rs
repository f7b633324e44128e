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
    /// Placement: where each running instance is (`None`: the answer has
    /// no `instances` field, Part-1 behaviour). Each entry is checked
    /// alone, like keys: one malformed entry is skipped and logged.
    pub instances: Option<Vec<Result<Instance, InstanceReject>>>,
    /// The service's recording mode (`"recording": "off" | "metadata" |
    /// "output" | "full"`), overriding the host's `[recording] mode`.
    /// Anything else (another type, an unknown name) is ignored: the host's
    /// mode applies, and the rest of the answer stands.
    pub recording: Option<crate::config::RecordingMode>,
}

/// Longest host name accepted in placement (a DNS name's limit). The host
/// becomes an argument of the OpenSSH client on the front door.
pub const MAX_HOST_LEN: usize = 253;

/// One running instance and the node that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub slug: String,
    /// A DNS name or an IP literal, never anything `ssh` could read as an
    /// option or a `user@` prefix.
    pub host: String,
    /// The node's sshd port; `None`: the front door's `fleet.node_port`.
    pub port: Option<u16>,
    /// `"temporary": true`: a temporary instance (one session's), never a
    /// random choice of [`route`].
    pub temporary: bool,
}

/// Why a placement entry was skipped (logged with its index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceReject {
    NotAnObject,
    /// Missing, not a string, or not a slug of the name grammar.
    Slug,
    /// Missing, not a string, or not a DNS name / IP literal.
    Host,
    /// Not an integer in 1..=65535.
    Port,
    /// The same slug as entry N, which wins (as a key listed twice).
    Duplicate(usize),
}

impl std::fmt::Display for InstanceReject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstanceReject::NotAnObject => f.write_str("the entry is not an object"),
            InstanceReject::Slug => {
                f.write_str("\"slug\" is not an instance slug (5 lowercase letters or digits)")
            }
            InstanceReject::Host => f.write_str("\"host\" is not a DNS name or an IP address"),
            InstanceReject::Port => f.write_str("\"port\" is not a number between 1 and 65535"),
            InstanceReject::Duplicate(i) => write!(f, "the slug is already placed by entry {i}"),
        }
    }
}

/// True for a DNS name (labels of letters, digits and inner hyphens, no
/// trailing dot) or an IPv4/IPv6 literal, at most [`MAX_HOST_LEN`] bytes.
/// Rules out everything `ssh` would read otherwise: a leading `-` (an
/// option), `@` (a user), spaces, `%` (a token), `[`/`:` host:port forms.
pub fn valid_host(h: &str) -> bool {
    if h.is_empty() || h.len() > MAX_HOST_LEN {
        return false;
    }
    if h.parse::<std::net::IpAddr>().is_ok() {
        // A scope id (`fe80::1%eth0`) does not parse as IpAddr: refused.
        return true;
    }
    h.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    })
}

fn parse_instance(v: Value) -> Result<Instance, InstanceReject> {
    let Value::Object(o) = v else {
        return Err(InstanceReject::NotAnObject);
    };
    let slug = match o.get("slug") {
        Some(Value::String(s)) if crate::names::is_instance_slug(s) => s.clone(),
        _ => return Err(InstanceReject::Slug),
    };
    let host = match o.get("host") {
        Some(Value::String(h)) if valid_host(h) => h.clone(),
        _ => return Err(InstanceReject::Host),
    };
    let port = match o.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
                .ok_or(InstanceReject::Port)?,
        ),
        Some(_) => return Err(InstanceReject::Port),
    };
    // Anything but `true` is an ordinary instance: a mistake here can only
    // keep an instance out of random choice, never put one in.
    let temporary = o.get("temporary") == Some(&Value::Bool(true));
    Ok(Instance {
        slug,
        host,
        port,
        temporary,
    })
}

/// Parses the `instances` array entry by entry; a slug placed twice keeps
/// its first entry (the later ones are [`InstanceReject::Duplicate`]).
fn parse_instances(items: Vec<Value>) -> Vec<Result<Instance, InstanceReject>> {
    let mut out: Vec<Result<Instance, InstanceReject>> = Vec::with_capacity(items.len());
    for item in items {
        let parsed = parse_instance(item).and_then(|inst| {
            match out
                .iter()
                .position(|p| p.as_ref().is_ok_and(|p| p.slug == inst.slug))
            {
                Some(first) => Err(InstanceReject::Duplicate(first)),
                None => Ok(inst),
            }
        });
        out.push(parsed);
    }
    out
}

impl ServiceDoc {
    /// The placement in force: `None` when the answer has none (Part 1),
    /// otherwise the good entries in the control plane's order.
    pub fn placement(&self) -> Option<Vec<&Instance>> {
        self.instances
            .as_ref()
            .map(|all| all.iter().filter_map(|i| i.as_ref().ok()).collect())
    }
}

/// Why the front door cannot route a login: the sentence the developer
/// reads (Display).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteRefusal {
    /// Placement lists no running instance.
    NoneRunning { service: String },
    /// The asked slug is not listed; `running` are the instance names that are.
    NotRunning {
        service: String,
        asked: String,
        running: Vec<String>,
    },
}

impl std::fmt::Display for RouteRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteRefusal::NoneRunning { service } => write!(
                f,
                "{service} has no running instance right now; start it (or wait for its deploy) and try again"
            ),
            RouteRefusal::NotRunning {
                service,
                asked,
                running,
            } => {
                write!(f, "{service}-{asked} is not a running instance of {service}; ")?;
                match running.as_slice() {
                    [] => write!(f, "it has no running instance right now"),
                    [one] => write!(f, "the running one is {one}"),
                    many => write!(f, "the running ones are {}", many.join(", ")),
                }
            }
        }
    }
}

/// Chooses where a login goes: the instance asked for by slug, or, with no
/// slug, one of the listed instances picked by `random` (any random number:
/// `random % len`). Pure, so the front door's choice is testable.
pub fn route<'a>(
    service: &ServiceId,
    instances: &[&'a Instance],
    asked: Option<&str>,
    random: u64,
) -> Result<&'a Instance, RouteRefusal> {
    match asked {
        Some(slug) => instances
            .iter()
            .copied()
            .find(|i| i.slug == slug)
            .ok_or_else(|| RouteRefusal::NotRunning {
                service: service.to_string(),
                asked: slug.to_owned(),
                running: instances
                    .iter()
                    .map(|i| service.instance_name(&i.slug))
                    .collect(),
            }),
        None => {
            // A temporary instance belongs to one session: never at random.
            let instances: Vec<&Instance> =
                instances.iter().copied().filter(|i| !i.temporary).collect();
            if instances.is_empty() {
                return Err(RouteRefusal::NoneRunning {
                    service: service.to_string(),
                });
            }
            let n = instances.len() as u64;
            let at = usize::try_from(random % n).unwrap_or(0);
            instances
                .get(at)
                .copied()
                .ok_or_else(|| RouteRefusal::NoneRunning {
                    service: service.to_string(),
                })
        }
    }
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
        let instances = match obj.remove("instances") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(parse_instances(items)),
            // Like "keys": a placement that is not a list is a broken
            // answer, not "no placement" (which would fall back to Part 1).
            Some(_) => return Err(DocError::Malformed("\"instances\" is not an array".into())),
        };
        let recording = obj
            .remove("recording")
            .and_then(|v| v.as_str().and_then(crate::config::RecordingMode::parse));
        Ok(ServiceDoc {
            service,
            keys,
            limits,
            instances,
            recording,
        })
    }
}

/// What the platform offers this service over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellPolicy {
    Allowed,
    /// Only in a temporary instance of the service's latest build (a cron
    /// job: nothing of it runs between its runs).
    Temporary,
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
        // A cron job has no running instance: its shell is a temporary one.
        "cron_job" => ShellPolicy::Temporary,
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
    fn recording_override_is_additive_and_lenient() {
        let doc = |extra: &str| {
            let body =
                format!(r#"{{"service":{{"id":"srv-a1","type":"web_service"}},"keys":[]{extra}}}"#);
            ServiceDoc::parse(body.as_bytes(), &sid("srv-a1")).unwrap()
        };
        use crate::config::RecordingMode;
        assert_eq!(doc("").recording, None, "old answers: the host's mode");
        assert_eq!(
            doc(r#","recording":"full""#).recording,
            Some(RecordingMode::Full)
        );
        assert_eq!(
            doc(r#","recording":"off""#).recording,
            Some(RecordingMode::Off)
        );
        for bad in [
            r#","recording":"FULL""#,
            r#","recording":3"#,
            r#","recording":null"#,
            r#","recording":{"mode":"off"}"#,
        ] {
            assert_eq!(doc(bad).recording, None, "{bad} is ignored");
        }
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
            ShellPolicy::Allowed | ShellPolicy::Temporary => String::new(),
        };
        assert!(
            msg(shell_policy(&info("web_service", Some("free")))).contains("paid instance type")
        );
        assert_eq!(
            shell_policy(&info("cron_job", None)),
            ShellPolicy::Temporary
        );
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

    fn placed(body: serde_json::Value) -> ServiceDoc {
        ServiceDoc::parse(body.to_string().as_bytes(), &sid("srv-a1")).unwrap()
    }

    fn svc() -> serde_json::Value {
        serde_json::json!({"id": "srv-a1", "type": "web_service"})
    }

    #[test]
    fn placement_is_optional_and_old_answers_are_unchanged() {
        let old = placed(serde_json::json!({"service": svc(), "keys": []}));
        assert_eq!(old.instances, None);
        assert_eq!(old.placement(), None);
        let null = placed(serde_json::json!({"service": svc(), "instances": null}));
        assert_eq!(null.placement(), None);
        let empty = placed(serde_json::json!({"service": svc(), "instances": []}));
        assert_eq!(empty.placement(), Some(vec![]), "listed, none running");
        let doc = placed(serde_json::json!({"service": svc(), "instances": [
            {"slug": "d4e5f", "host": "node-3.oregon.internal", "port": 22, "zone": "b", "new": {}},
            {"slug": "aaaaa", "host": "10.1.2.3"},
            {"slug": "bbbbb", "host": "fd00::3", "port": 2222}]}));
        let p = doc.placement().unwrap();
        assert_eq!(
            p.iter()
                .map(|i| (i.slug.as_str(), i.host.as_str(), i.port))
                .collect::<Vec<_>>(),
            [
                ("d4e5f", "node-3.oregon.internal", Some(22)),
                ("aaaaa", "10.1.2.3", None),
                ("bbbbb", "fd00::3", Some(2222))
            ]
        );
        assert!(matches!(
            ServiceDoc::parse(
                br#"{"service":{"id":"srv-a1","type":"web_service"},"instances":{"slug":"aaaaa"}}"#,
                &sid("srv-a1")
            ),
            Err(DocError::Malformed(_))
        ));
    }

    /// The hostile catalogue for placement: every bad entry is skipped with
    /// its reason, and the good ones around it still route.
    #[test]
    fn hostile_placement_entries_are_skipped_one_by_one() {
        let long = format!("{}.example.com", "a".repeat(300));
        let cases: Vec<(serde_json::Value, InstanceReject)> = vec![
            (
                serde_json::json!({"slug": "ccccc", "host": "-oProxyCommand=sh -c id"}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "-oProxyCommand=id"}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "a b"}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": long}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "root@node-1"}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "node-1:2222"}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "[::1]"}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "node-%h"}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "node-1."}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "node-.x"}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "nöde"}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "n\nx"}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": ""}),
                InstanceReject::Host,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": 10}),
                InstanceReject::Host,
            ),
            (serde_json::json!({"slug": "ccccc"}), InstanceReject::Host),
            (
                serde_json::json!({"slug": "ccccc", "host": "n", "port": 0}),
                InstanceReject::Port,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "n", "port": 70000}),
                InstanceReject::Port,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "n", "port": "22"}),
                InstanceReject::Port,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "n", "port": -22}),
                InstanceReject::Port,
            ),
            (
                serde_json::json!({"slug": "ccccc", "host": "n", "port": 22.5}),
                InstanceReject::Port,
            ),
            (
                serde_json::json!({"slug": "CCCCC", "host": "n"}),
                InstanceReject::Slug,
            ),
            (
                serde_json::json!({"slug": "cccc", "host": "n"}),
                InstanceReject::Slug,
            ),
            (
                serde_json::json!({"slug": "../..", "host": "n"}),
                InstanceReject::Slug,
            ),
            (serde_json::json!({"host": "n"}), InstanceReject::Slug),
            (serde_json::json!("aaaaa@n"), InstanceReject::NotAnObject),
            (serde_json::json!(null), InstanceReject::NotAnObject),
            // First wins, as for a key listed twice: a later entry cannot
            // move an instance to another host.
            (
                serde_json::json!({"slug": "aaaaa", "host": "evil.example.com"}),
                InstanceReject::Duplicate(0),
            ),
        ];
        for (bad, why) in cases {
            let doc = placed(serde_json::json!({"service": svc(), "instances": [
                {"slug": "aaaaa", "host": "node-1"}, bad.clone(), {"slug": "bbbbb", "host": "node-2", "port": 2200}]}));
            let all = doc.instances.as_ref().unwrap();
            assert_eq!(all[1], Err(why.clone()), "{bad}");
            assert!(!why.to_string().is_empty());
            let p = doc.placement().unwrap();
            assert_eq!(
                p.iter()
                    .map(|i| (i.host.as_str(), i.port))
                    .collect::<Vec<_>>(),
                [("node-1", None), ("node-2", Some(2200))],
                "{bad}: the good entries survive"
            );
            let r = route(&sid("srv-a1"), &p, Some("aaaaa"), 0).unwrap();
            assert_eq!(r.host, "node-1", "{bad}");
        }
        for ok in [
            "node-3.oregon.internal",
            "10.0.0.1",
            "::1",
            "fd00::3",
            "a",
            "1node",
            &"b".repeat(63),
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        assert!(!valid_host(&"b".repeat(64)), "label over 63");
        assert!(!valid_host(&["a"; 128].join(".")), "255 bytes");
    }

    #[test]
    fn route_by_slug_or_at_random_and_refuse_with_the_running_ones() {
        let doc = placed(serde_json::json!({"service": svc(), "instances": [
            {"slug": "aaaaa", "host": "node-1"}, {"slug": "bbbbb", "host": "node-2"}]}));
        let p = doc.placement().unwrap();
        let s = sid("srv-a1");
        assert_eq!(route(&s, &p, Some("bbbbb"), 0).unwrap().host, "node-2");
        assert_eq!(route(&s, &p, None, 0).unwrap().host, "node-1");
        assert_eq!(route(&s, &p, None, 1).unwrap().host, "node-2");
        assert_eq!(route(&s, &p, None, u64::MAX).unwrap().host, "node-2");
        let with_temp = placed(serde_json::json!({"service": svc(), "instances": [
            {"slug": "ttttt", "host": "node-9", "temporary": true},
            {"slug": "aaaaa", "host": "node-1", "temporary": "yes"},
            {"slug": "fresh", "host": "node-9"}]}));
        let pt = with_temp.placement().unwrap();
        assert_eq!(pt.len(), 2, "the reserved slug is no instance's");
        for r in 0..10 {
            assert_eq!(route(&s, &pt, None, r).unwrap().slug, "aaaaa");
        }
        assert_eq!(route(&s, &pt, Some("ttttt"), 0).unwrap().host, "node-9");
        let e = route(&s, &p, Some("zzzzz"), 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "srv-a1-zzzzz is not a running instance of srv-a1; the running ones are srv-a1-aaaaa, srv-a1-bbbbb"
        );
        let one = &p[..1];
        assert!(route(&s, one, Some("zzzzz"), 0)
            .unwrap_err()
            .to_string()
            .ends_with("the running one is srv-a1-aaaaa"));
        let none: Vec<&Instance> = Vec::new();
        assert_eq!(
            route(&s, &none, None, 7).unwrap_err(),
            RouteRefusal::NoneRunning {
                service: "srv-a1".into()
            }
        );
        assert!(route(&s, &none, Some("aaaaa"), 7)
            .unwrap_err()
            .to_string()
            .ends_with("it has no running instance right now"));
    }
}
