//! The keys hook for the picker's login (`ssh srv@host`, issue 20): the
//! offered key is accepted when the control plane lists at least one
//! service for it (`GET /v1/keys/{fingerprint}/services`).
//!
//! The answer is cached per key like a service answer (fresh, stale while
//! the control plane fails, single flight, failure backoff, the
//! directory's caps). An empty list is stored as a negative entry: anyone
//! who can reach sshd chooses which keys are offered, so what they can make
//! the hook write is capped with the other negatives.
//!
//! The printed lines are the service lines of this key (`render_line`,
//! the same `restrict,pty`, `expiry-time` and `from` options as a direct
//! login), one per distinct line: sshd admits the login when one of them
//! holds, and the session shell checks the chosen service's own listing
//! again before entering it.

use crate::config::Config;
use crate::control_plane::cache::{self, KeyListName};
use crate::control_plane::key_services::{self, KeyService};
use crate::control_plane::keys;
use crate::keys_hook::fetch::{self, FetchError, FetchOutcome};
use crate::keys_hook::{Call, Source};
use crate::log::{elapsed_ms, Event, Logger, Severity};
use std::time::{Duration, Instant};

/// The key's services as the keys hook decided them.
enum Answer {
    Services(Vec<KeyService>, Source),
    Refused(String, Severity),
}

/// Runs one sshd call for the picker's login: the lines to print.
pub fn run(cfg: &Config, log: &Logger, call: &Call, started: Instant) -> Vec<String> {
    let base = Event::new("keys.decision", Severity::Info)
        .field("user", call.user.as_str())
        .opt("fingerprint", call.fingerprint.clone())
        .opt("key_type", call.key_type.clone());
    // The fingerprint is computed from the key itself, not taken from %f.
    let offered = match (&call.key_type, &call.key_base64) {
        (Some(t), Some(k)) if !t.is_empty() && !k.is_empty() => {
            keys::validate_public_key(&format!("{t} {k}")).ok()
        }
        _ => None,
    };
    let Some(key) = offered else {
        log.emit(
            &base
                .field("outcome", "refused")
                .field("reason", "the picker needs the offered key (%t %k)")
                .field("ms", elapsed_ms(started)),
        );
        return Vec::new();
    };
    let deadline = started + Duration::from_millis(cfg.control_plane.timeout_ms);
    let now = crate::time::now_unix();
    let (services, source) = match decide(cfg, log, &key.fingerprint, deadline) {
        Answer::Services(s, source) => (s, source),
        Answer::Refused(reason, severity) => {
            let mut e = base
                .field("source", Source::None.as_str())
                .field("outcome", "refused")
                .field("reason", reason)
                .field("ms", elapsed_ms(started));
            e.severity = severity;
            log.emit(&e);
            return Vec::new();
        }
    };
    let mut lines: Vec<String> = Vec::new();
    let mut owner = None;
    for s in &services {
        if let Some((entry, listed)) =
            keys::find_listed_key(&s.doc, &key.algorithm, &key.base64, now)
        {
            if let Ok(line) = keys::render_line(entry, &listed, now) {
                owner.get_or_insert_with(|| entry.owner.clone());
                if !lines.contains(&line) {
                    lines.push(line);
                }
            }
        }
    }
    log.emit(
        &base
            .opt("owner", owner)
            .field("source", source.as_str())
            .field(
                "outcome",
                if lines.is_empty() {
                    "no-match"
                } else {
                    "accepted"
                },
            )
            .field("services", services.len())
            .field("lines", lines.len())
            .field("ms", elapsed_ms(started)),
    );
    lines
}

fn cache_error(log: &Logger, e: &cache::CacheError) {
    log.emit(
        &Event::new("keys.cache_error", Severity::Warning)
            .field("user", crate::names::PICKER_LOGIN)
            .field("error", e.to_string()),
    );
}

/// The cached list with its freshness, problems logged as a miss.
fn cached(
    cfg: &Config,
    log: &Logger,
    fingerprint: &str,
    now: i64,
) -> Option<(cache::Freshness, Vec<KeyService>)> {
    match key_services::read_cached(&cfg.cache.dir, fingerprint, None, now) {
        Ok(Some((at, services))) => Some((
            cache::freshness_of(at, !services.is_empty(), now, &cfg.cache),
            services,
        )),
        Ok(None) => None,
        Err(e) => {
            cache_error(log, &e);
            None
        }
    }
}

fn decide(cfg: &Config, log: &Logger, fingerprint: &str, deadline: Instant) -> Answer {
    let name = KeyListName::for_fingerprint(fingerprint);
    let now = crate::time::now_unix();
    let first = cached(cfg, log, fingerprint, now);
    if let Some((cache::Freshness::Fresh, s)) = &first {
        return Answer::Services(s.clone(), Source::Cache);
    }
    let stale = |c: Option<(cache::Freshness, Vec<KeyService>)>| {
        c.filter(|(f, _)| *f == cache::Freshness::Stale)
            .map(|(_, s)| s)
    };
    let window = cfg.control_plane.failure_backoff_secs;
    if cache::recent_failure(&cfg.cache.dir, &name, now, window).is_some() {
        return unavailable(
            stale(first),
            "control plane failed for this key a moment ago".into(),
        );
    }
    let fetch_deadline = deadline
        .checked_sub(Duration::from_millis(50))
        .unwrap_or(deadline);
    let mut lock_failed = false;
    let lock = cache::lock(&cfg.cache.dir, &name, fetch_deadline).unwrap_or_else(|e| {
        cache_error(log, &e);
        lock_failed = true;
        None
    });
    let now = crate::time::now_unix();
    let again = if lock.is_some() {
        cached(cfg, log, fingerprint, now).or(first)
    } else {
        first
    };
    if let Some((cache::Freshness::Fresh, s)) = &again {
        return Answer::Services(s.clone(), Source::Cache);
    }
    if lock.is_none() && !lock_failed {
        return match stale(again) {
            Some(s) => Answer::Services(s, Source::StaleCache),
            None => Answer::Refused(
                "control plane answer pending in another login; budget exhausted".into(),
                Severity::Warning,
            ),
        };
    }
    let failure = match fetch::fetch_key_services(&cfg.control_plane, fingerprint, fetch_deadline) {
        Ok(FetchOutcome::Found(body)) => {
            match crate::control_plane::api::parse_json(&body).and_then(|v| {
                key_services::from_value(&v, fingerprint, now).map(|parsed| (v, parsed))
            }) {
                Ok((value, (services, dropped))) => {
                    for d in dropped {
                        log.emit(
                            &Event::new("keys.skipped", Severity::Warning)
                                .field("user", crate::names::PICKER_LOGIN)
                                .field("index", d.index)
                                .field("reason", d.reason),
                        );
                    }
                    cache::clear_failure(&cfg.cache.dir, &name);
                    let body = (!services.is_empty()).then_some(&value);
                    store(cfg, log, &name, body);
                    return Answer::Services(services, Source::Api);
                }
                Err(e) => e.to_string(),
            }
        }
        Ok(FetchOutcome::NotFound) => {
            cache::clear_failure(&cfg.cache.dir, &name);
            store(cfg, log, &name, None);
            return Answer::Services(Vec::new(), Source::Api);
        }
        Err(e @ (FetchError::Unauthorized(_) | FetchError::Config(_))) => {
            return Answer::Refused(e.to_string(), Severity::Error)
        }
        Err(FetchError::Unavailable(m)) => format!("control plane unavailable: {m}"),
    };
    if window > 0 {
        if let Err(e) = cache::note_failure(&cfg.cache, &name, crate::time::now_unix()) {
            cache_error(log, &e);
        }
    }
    unavailable(stale(again), failure)
}

fn unavailable(stale: Option<Vec<KeyService>>, failure: String) -> Answer {
    match stale {
        Some(s) => Answer::Services(s, Source::StaleCache),
        None => Answer::Refused(failure, Severity::Error),
    }
}

fn store(cfg: &Config, log: &Logger, name: &KeyListName, body: Option<&serde_json::Value>) {
    if let Err(e) = cache::write(&cfg.cache, name, crate::time::now_unix(), body) {
        cache_error(log, &e);
    }
}
