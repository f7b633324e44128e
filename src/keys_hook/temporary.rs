//! `porthole-keys --temporary create|delete`: asks the HTTP control plane
//! for a temporary instance of a service, or to remove one, for the
//! session shell (which links no HTTP code and runs this as the keys user;
//! see src/session/temporary.rs).
//!
//! ```text
//! POST   {url}/v1/services/{id}/temporary-instances          -> 201 {"slug": …, "host": …}
//! DELETE {url}/v1/services/{id}/temporary-instances/{slug}   -> 200/204 (404: already gone)
//! ```
//!
//! The answer is printed as one JSON object on stdout, `outcome` being
//! `created` (with `slug` and `host`), `deleted`, `refused` (a 4xx, with
//! the platform's message), `bad_answer` (a 201 that is not usable: size,
//! slug, host) or `failed` (with why). The platform's answer
//! is hostile: size-capped, read before the deadline, its slug checked
//! against the name grammar and its host against the placement rules, so
//! what reaches the shell is already sane (the shell checks again).

use crate::config::Config;
use crate::keys_hook::fetch::{describe, read_capped, read_token, FetchError};
use crate::log::{elapsed_ms, Event, Logger, Severity};
use crate::names::ServiceId;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Largest platform answer read.
const MAX_BODY: u64 = 64 * 1024;

/// What the shell asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    /// Delete the instance with this slug (checked by the caller).
    Delete(String),
}

impl Action {
    fn as_str(&self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Delete(_) => "delete",
        }
    }
}

fn failed(m: impl Into<String>) -> Value {
    json!({"outcome": "failed", "message": m.into()})
}

/// The platform's reason in a 4xx body: `message` or `error` of a JSON
/// object, else the text itself (the shell cleans and shortens it).
fn reason(body: &[u8]) -> String {
    if let Ok(v) = crate::control_plane::api::parse_json(body) {
        for k in ["message", "error"] {
            if let Some(m) = v.get(k).and_then(Value::as_str) {
                return m.to_owned();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.chars().take(300).collect();
    if text.trim().is_empty() {
        "no reason given".into()
    } else {
        text
    }
}

fn bad_answer(m: &str) -> Value {
    json!({"outcome": "bad_answer", "message": m})
}

/// Checks a 201 body: `slug` an instance slug, `host` (optional) a host
/// name or address. Anything else is a `bad_answer` (the platform's
/// words are not repeated: they may be anything).
pub fn check_created(body: &[u8]) -> Value {
    let Ok(v) = crate::control_plane::api::parse_json(body) else {
        return bad_answer("not JSON");
    };
    let slug = match v.get("slug") {
        Some(Value::String(s)) if crate::names::is_instance_slug(s) => s.clone(),
        _ => return bad_answer("\"slug\" is not an instance slug"),
    };
    let host = match v.get("host") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(h)) if crate::control_plane::api::valid_host(h) => json!(h),
        Some(_) => return bad_answer("\"host\" is not a DNS name or an IP address"),
    };
    json!({"outcome": "created", "slug": slug, "host": host})
}

/// Makes the request and returns the answer for the shell (never fails:
/// a failure is an answer too), logging one `temporary.request` event.
pub fn run(
    cfg: &Config,
    log: &Logger,
    service: &ServiceId,
    action: &Action,
    started: Instant,
) -> Value {
    let deadline = started + Duration::from_millis(cfg.control_plane.timeout_ms);
    let answer = request(cfg, service, action, deadline);
    let outcome = answer
        .get("outcome")
        .and_then(Value::as_str)
        .unwrap_or("failed")
        .to_owned();
    let severity = match outcome.as_str() {
        "failed" | "bad_answer" => Severity::Warning,
        _ => Severity::Info,
    };
    log.emit(
        &Event::new("temporary.request", severity)
            .field("service", service.as_str())
            .field("action", action.as_str())
            .opt(
                "slug",
                match action {
                    Action::Delete(s) => Some(s.clone()),
                    Action::Create => answer
                        .get("slug")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                },
            )
            .field("outcome", outcome)
            .opt(
                "message",
                answer
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            )
            .field("ms", elapsed_ms(started)),
    );
    answer
}

fn request(cfg: &Config, service: &ServiceId, action: &Action, deadline: Instant) -> Value {
    let cp = &cfg.control_plane;
    if cp.url.starts_with("file://") {
        return failed("a file:// control plane has no temporary-instance API (the session shell starts them itself)");
    }
    if let Some(why) = cp.insecure_http_refusal() {
        return failed(why);
    }
    let token = match read_token(cp) {
        Ok(t) => t,
        Err(e) => return failed(e.to_string()),
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(10) {
        return failed("no time left in the budget");
    }
    let base = format!(
        "{}/v1/services/{}/temporary-instances",
        cp.url.trim_end_matches('/'),
        service.as_str()
    );
    let client = match reqwest::blocking::Client::builder()
        .timeout(left)
        .connect_timeout(left)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("porthole-keys/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("client: {e}")),
    };
    let mut req = match action {
        Action::Create => client
            .post(&base)
            .header("Content-Type", "application/json")
            .body("{}"),
        Action::Delete(slug) => client.delete(format!("{base}/{slug}")),
    };
    req = req.header("Accept", "application/json");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = match req.send() {
        Ok(r) => r,
        Err(e) => return failed(format!("control plane unavailable: {}", describe(&e))),
    };
    let status = resp.status().as_u16();
    if resp.content_length().is_some_and(|n| n > MAX_BODY) {
        return bad_answer(&format!("answer larger than {MAX_BODY} bytes"));
    }
    let body = match read_capped(resp, MAX_BODY, Some(deadline)) {
        Ok(b) => b,
        Err(FetchError::Unavailable(m)) if m.contains("larger than") => return bad_answer(&m),
        Err(FetchError::Unavailable(m)) => return failed(m),
        Err(e) => return failed(e.to_string()),
    };
    match (action, status) {
        (Action::Create, 200 | 201) => check_created(&body),
        (Action::Delete(_), 200 | 202 | 204 | 404) => json!({"outcome": "deleted"}),
        (_, 401 | 403) => failed(FetchError::Unauthorized(status).to_string()),
        (_, 400..=499) => json!({"outcome": "refused", "message": reason(&body)}),
        (_, s) => failed(format!("control plane answered HTTP {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_answers_are_checked() {
        assert_eq!(
            check_created(br#"{"slug":"abcde","host":"node-1.internal","extra":1}"#),
            json!({"outcome":"created","slug":"abcde","host":"node-1.internal"})
        );
        for bad in [
            &br#"{"slug":"abc"}"#[..],
            br#"{"slug":"fresh"}"#,
            br#"{"slug":"abcde","host":"-oProxyCommand=id"}"#,
            br#"{"slug":"abcde","host":"a b"}"#,
            br#"{"host":"n"}"#,
            b"<html>",
        ] {
            assert_eq!(check_created(bad)["outcome"], "bad_answer", "{bad:?}");
        }
        assert_eq!(reason(br#"{"message":"quota exceeded"}"#), "quota exceeded");
        assert_eq!(reason(b"plain words"), "plain words");
        assert_eq!(reason(b""), "no reason given");
    }
}
