//! The control-plane answer (API v1) and what it means for a login.
//!
//! Both hooks read the same document: the keys hook fresh from the control
//! plane, the session shell from the keys hook's cache. Parsing is lenient
//! where the contract says so (unknown fields, unknown service types, one bad
//! key among good ones) and strict where a mistake would open a door (the
//! service ID must be the one asked for).

use crate::names::ServiceId;
use serde::Deserialize;
use serde_json::Value;

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

impl ServiceDoc {
    /// Parses a body for `asked`.
    pub fn parse(body: &[u8], asked: &ServiceId) -> Result<ServiceDoc, DocError> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| DocError::Malformed(e.to_string()))?;
        ServiceDoc::from_value(v, asked)
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
}
