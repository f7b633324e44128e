//! The keys hook `porthole-keys`: sshd's AuthorizedKeysCommand.
//!
//! Runs as the unprivileged keys user (`AuthorizedKeysCommandUser`), before
//! authentication, for any name of the grammar. It trusts `porthole.toml`
//! and the token file; the name, the offered key and every byte of the
//! control plane's answer are hostile. The only HTTP client of porthole
//! lives here ([`fetch`]).
//!
//! This module is the decision for one sshd call: which answer to trust
//! (fresh cache, control plane, stale cache, nothing) and which lines to
//! print, with one audit event for the admin. sshd calls it for every key a
//! client offers, at least twice per login, and waits without a timeout of
//! its own, so the common path is a cache read and the slow path is
//! bounded by one deadline.

// Nothing here needs unsafe code; the compiler keeps it that way.
#![forbid(unsafe_code)]

pub mod fetch;
pub mod picker;
pub mod temporary;

use crate::config::Config;
use crate::control_plane::api::ServiceDoc;
use crate::control_plane::cache::{self, CachedAnswer, Freshness};
use crate::control_plane::keys;
use crate::log::{elapsed_ms, Event, Logger, Severity};
use crate::names::Target;
use fetch::{FetchError, FetchOutcome};
use std::time::{Duration, Instant};

/// What sshd passed: `%u %f %t %k`.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub user: String,
    pub fingerprint: Option<String>,
    pub key_type: Option<String>,
    pub key_base64: Option<String>,
}

/// Where the answer came from (the `source` field of the audit event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    Cache,
    StaleCache,
    Negative,
    None,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Cache => "cache",
            Source::StaleCache => "stale-cache",
            Source::Negative => "negative",
            Source::None => "none",
        }
    }
}

/// The answer in force, or why there is none.
enum Answer {
    Doc(ServiceDoc, Source),
    NoService(Source),
    Refused(String, Severity),
}

/// Runs one call; returns the lines to print (empty: sshd denies).
pub fn run(cfg: &Config, log: &Logger, call: &Call, started: Instant) -> Vec<String> {
    if crate::names::is_picker(call.user.as_bytes()) {
        return picker::run(cfg, log, call, started);
    }
    let Some(target) = Target::parse(&call.user) else {
        log.emit(
            &Event::new("keys.decision", Severity::Notice)
                .field("user", call.user.as_str())
                .field("outcome", "refused")
                .field("reason", "not a service or instance name")
                .field("ms", elapsed_ms(started)),
        );
        return Vec::new();
    };
    let budget = Duration::from_millis(cfg.control_plane.timeout_ms);
    let deadline = started + budget;
    let answer = decide(cfg, log, &target, deadline);
    let now = crate::time::now_unix();
    let base = Event::new("keys.decision", Severity::Info)
        .field("service", target.service.as_str())
        .opt(
            "instance",
            target
                .slug
                .as_ref()
                .map(|s| target.service.instance_name(s)),
        )
        .opt("fingerprint", call.fingerprint.clone())
        .opt("key_type", call.key_type.clone());
    let (doc, source) = match answer {
        Answer::Doc(doc, source) => (doc, source),
        Answer::NoService(source) => {
            log.emit(
                &base
                    .field("source", source.as_str())
                    .field("outcome", "refused")
                    .field("reason", "no such service")
                    .field("ms", elapsed_ms(started)),
            );
            return Vec::new();
        }
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
    let checked = keys::check_all(&doc, now);
    if source == Source::Api {
        for c in checked.iter().filter(|c| c.result.is_err()) {
            if let Err(why) = &c.result {
                log.emit(
                    &Event::new("keys.skipped", Severity::Warning)
                        .field("service", target.service.as_str())
                        .field("index", c.index)
                        .opt("owner", c.entry.map(|e| e.owner.clone()))
                        .opt("name", c.entry.and_then(|e| e.name.clone()))
                        .field("reason", why.to_string()),
                );
            }
        }
        // A malformed placement entry is skipped like a bad key: the
        // others still route; the admin learns which one and why.
        for (index, why) in doc
            .instances
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        {
            log.emit(
                &Event::new("instances.skipped", Severity::Warning)
                    .field("service", target.service.as_str())
                    .field("index", index)
                    .field("reason", why.to_string()),
            );
        }
    }
    let offered = match (&call.key_type, &call.key_base64) {
        (Some(t), Some(k)) if !t.is_empty() && !k.is_empty() => Some((t.as_str(), k.as_str())),
        _ => None,
    };
    let mut lines = Vec::new();
    let mut owner = None;
    for c in &checked {
        let Ok((key, line)) = &c.result else { continue };
        match offered {
            Some((t, k)) if key.algorithm != t || key.base64 != k => continue,
            Some(_) => {
                // check_all leaves at most one line per key (its first
                // listing decides), the one the session shell attributes.
                owner = c.entry.map(|e| e.owner.clone());
                lines.push(line.clone());
                break;
            }
            None => lines.push(line.clone()),
        }
    }
    let outcome = if lines.is_empty() {
        "no-match"
    } else {
        "accepted"
    };
    log.emit(
        &base
            .opt("owner", owner)
            .field("source", source.as_str())
            .field("outcome", outcome)
            .field("lines", lines.len())
            .field("ms", elapsed_ms(started)),
    );
    lines
}

/// `porthole-keys --refresh <service>`: brings the cached answer up to date
/// the way a login would (fresh cache first, else the control plane under
/// the single-flight lock, with the failure backoff) and prints nothing.
/// Session supervisors run it to notice revoked keys (src/session/revoke.rs).
/// True when a fresh answer is cached now.
pub fn refresh(cfg: &Config, log: &Logger, target: &Target, started: Instant) -> bool {
    let deadline = started + Duration::from_millis(cfg.control_plane.timeout_ms);
    let base = Event::new("keys.refresh", Severity::Info).field("service", target.service.as_str());
    let (outcome, source) = match decide(cfg, log, target, deadline) {
        Answer::Doc(_, source) => ("found", source),
        Answer::NoService(source) => ("no-service", source),
        Answer::Refused(reason, severity) => {
            let mut e = base
                .field("source", Source::None.as_str())
                .field("outcome", "unavailable")
                .field("reason", reason)
                .field("ms", elapsed_ms(started));
            e.severity = severity;
            log.emit(&e);
            return false;
        }
    };
    log.emit(
        &base
            .field("source", source.as_str())
            .field("outcome", outcome)
            .field("ms", elapsed_ms(started)),
    );
    // A stale answer served means the control plane did not answer.
    source != Source::StaleCache
}

/// A cache problem never decides a login: it is logged and treated as a miss.
fn cache_error(log: &Logger, target: &Target, e: &cache::CacheError) {
    log.emit(
        &Event::new("keys.cache_error", Severity::Warning)
            .field("service", target.service.as_str())
            .field("error", e.to_string()),
    );
}

fn read_cache(cfg: &Config, log: &Logger, target: &Target) -> Option<CachedAnswer> {
    cache::read(&cfg.cache.dir, &target.service, None).unwrap_or_else(|e| {
        cache_error(log, target, &e);
        None
    })
}

fn from_cache(a: CachedAnswer, source: Source) -> Answer {
    match a.doc {
        Some(d) => Answer::Doc(d, source),
        None => Answer::NoService(Source::Negative),
    }
}

fn decide(cfg: &Config, log: &Logger, target: &Target, deadline: Instant) -> Answer {
    let now = crate::time::now_unix();
    let cached = read_cache(cfg, log, target);
    if let Some(a) = cached
        .as_ref()
        .filter(|a| cache::freshness(a, now, &cfg.cache) == Freshness::Fresh)
    {
        return from_cache(a.clone(), Source::Cache);
    }
    // The control plane failed for this service a moment ago: do not make
    // this login wait out the budget again.
    if let Some(failure) = remembered_failure(cfg, target, now) {
        let stale = cached.filter(|a| cache::freshness(a, now, &cfg.cache) == Freshness::Stale);
        return unavailable(log, target, stale, failure);
    }
    // Leave a sliver of the budget for serving the stale answer after a
    // control plane that used all of it.
    let fetch_deadline = deadline
        .checked_sub(Duration::from_millis(50))
        .unwrap_or(deadline);
    // A lock that cannot even be created (full or read-only cache
    // filesystem) means no single flight, not "someone else is asking":
    // ask the control plane ourselves rather than refuse.
    let mut lock_failed = false;
    let lock = cache::lock(&cfg.cache.dir, &target.service, fetch_deadline).unwrap_or_else(|e| {
        cache_error(log, target, &e);
        lock_failed = true;
        None
    });
    // Whoever held the lock before us may have refreshed the answer.
    let cached = if lock.is_some() {
        read_cache(cfg, log, target).or(cached)
    } else {
        cached
    };
    let now = crate::time::now_unix();
    if let Some(a) = cached
        .as_ref()
        .filter(|a| cache::freshness(a, now, &cfg.cache) == Freshness::Fresh)
    {
        return from_cache(a.clone(), Source::Cache);
    }
    let stale = cached.filter(|a| cache::freshness(a, now, &cfg.cache) == Freshness::Stale);
    if lock.is_none() && !lock_failed {
        // Another process is still asking and our budget is gone.
        return match stale {
            Some(a) => from_cache(a, Source::StaleCache),
            None => Answer::Refused(
                "control plane answer pending in another login; budget exhausted".into(),
                Severity::Warning,
            ),
        };
    }
    // Whoever held the lock before us may have just seen it fail.
    if let Some(failure) = remembered_failure(cfg, target, now) {
        return unavailable(log, target, stale, failure);
    }
    let fetched = fetch::fetch(&cfg.control_plane, &target.service, fetch_deadline);
    let failure = match fetched {
        Ok(FetchOutcome::Found(body)) => match crate::control_plane::api::parse_json(&body)
            .and_then(|v| ServiceDoc::from_value(v.clone(), &target.service).map(|d| (v, d)))
        {
            Ok((value, doc)) => {
                cache::clear_failure(&cfg.cache.dir, &target.service);
                write_cache(cfg, log, target, Some(&value));
                return Answer::Doc(doc, Source::Api);
            }
            Err(e) => e.to_string(),
        },
        Ok(FetchOutcome::NotFound) => {
            cache::clear_failure(&cfg.cache.dir, &target.service);
            write_cache(cfg, log, target, None);
            return Answer::NoService(Source::Api);
        }
        Err(FetchError::Unauthorized(s)) => {
            return Answer::Refused(FetchError::Unauthorized(s).to_string(), Severity::Error);
        }
        Err(e @ FetchError::Config(_)) => return Answer::Refused(e.to_string(), Severity::Error),
        Err(FetchError::Unavailable(m)) => format!("control plane unavailable: {m}"),
    };
    if cfg.control_plane.failure_backoff_secs > 0 {
        match cache::note_failure(&cfg.cache, &target.service, crate::time::now_unix()) {
            Ok(swept) => log_sweep(log, cfg, swept),
            Err(e) => cache_error(log, target, &e),
        }
    }
    unavailable(log, target, stale, failure)
}

/// The control plane failed for this service less than
/// `failure_backoff_secs` ago: the reason, for the log.
fn remembered_failure(cfg: &Config, target: &Target, now: i64) -> Option<String> {
    let window = cfg.control_plane.failure_backoff_secs;
    let age = cache::recent_failure(&cfg.cache.dir, &target.service, now, window)?;
    Some(format!(
        "control plane failed for this service {age} s ago; not asking again for {window} s"
    ))
}

/// No usable answer from the control plane: serve the stale cache if
/// there is one, else refuse.
fn unavailable(
    log: &Logger,
    target: &Target,
    stale: Option<CachedAnswer>,
    failure: String,
) -> Answer {
    match stale {
        Some(a) => {
            log.emit(
                &Event::new("keys.control_plane_error", Severity::Warning)
                    .field("service", target.service.as_str())
                    .field("error", failure)
                    .field("serving", "stale-cache"),
            );
            from_cache(a, Source::StaleCache)
        }
        None => Answer::Refused(failure, Severity::Error),
    }
}

fn write_cache(cfg: &Config, log: &Logger, target: &Target, body: Option<&serde_json::Value>) {
    match cache::write(&cfg.cache, &target.service, crate::time::now_unix(), body) {
        Ok(swept) => log_sweep(log, cfg, swept),
        Err(e) => cache_error(log, target, &e),
    }
}

/// A sweep that removed usable entries is worth the admin's attention (a
/// cap reached: many names tried, or caps too small); one that only
/// expired old ones is routine.
fn log_sweep(log: &Logger, cfg: &Config, swept: Option<cache::Sweep>) {
    let Some(s) = swept else { return };
    if s.expired == 0 && s.evicted == 0 && s.leftovers == 0 {
        return;
    }
    let severity = if s.evicted > 0 {
        Severity::Notice
    } else {
        Severity::Info
    };
    log.emit(
        &Event::new("keys.cache_swept", severity)
            .field("expired", s.expired)
            .field("evicted", s.evicted)
            .field("leftovers", s.leftovers)
            .field("entries", s.counts.entries)
            .field("negatives", s.counts.negatives)
            .field("bytes", s.counts.bytes)
            .field("max_entries", cfg.cache.max_entries)
            .field("max_negative_entries", cfg.cache.max_negative_entries)
            .field("max_bytes", cfg.cache.max_bytes),
    );
}
