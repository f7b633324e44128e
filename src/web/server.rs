//! The HTTP side of porthole-web (axum): the page a ticket opens, the
//! websocket a page opens sessions on, the static files.
//!
//! A ticket is single use, but a page may open several sessions one after
//! the other (the user picks another instance): the page load consumes the
//! ticket and gets a *page grant*, a random 128-bit token kept in the page
//! only (never a cookie), bound to the ticket's service, owner and pinned
//! instance, valid `web.page_secs`, for one live session at a time.

use crate::config::Config;
use crate::control_plane::api::{self, ServiceDoc};
use crate::fleet::cert::HopIdentity;
use crate::keys_hook::fetch::{fetch, FetchOutcome};
use crate::log::{Event, Logger, Severity};
use crate::names::{is_slug, ServiceId};
use crate::web::page;
use crate::web::session::{self, Tail, Target, VIA};
use crate::web::ticket::{random_hex, Replay, Ticket, Verifier};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use ssh_key::PrivateKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Websocket close codes (documented in ARCHITECTURE.md, "web shell").
pub mod close {
    /// The session ended with exit status 0.
    pub const NORMAL: u16 = 1000;
    /// A control message was not valid JSON of the protocol, or its
    /// values were out of range.
    pub const INVALID: u16 = 1007;
    /// A message was larger than `web.max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// porthole-web could not start the session (admin: see web.error).
    pub const INTERNAL: u16 = 1011;
    /// porthole-web has `web.max_sessions` open.
    pub const BUSY: u16 = 1013;
    /// Refused before any session: no valid page grant, or the instance
    /// is not one porthole-web may route to.
    pub const REFUSED: u16 = 4403;
    /// The session ended with exit status N: 4000 + N (4255: the OpenSSH
    /// client could not connect or log in).
    pub const EXIT_BASE: u16 = 4000;
}

/// Largest terminal accepted in a resize.
pub const MAX_COLS: u16 = 1000;
pub const MAX_ROWS: u16 = 1000;

struct PageGrant {
    service: ServiceId,
    ticket: Ticket,
    expires: u64,
    busy: bool,
    /// Ends the page's live session when the page opens another (the user
    /// picked another instance): a new one per session.
    stop: Arc<tokio::sync::Notify>,
}

/// Everything the handlers share.
pub struct App {
    pub cfg: Config,
    verifier: Verifier,
    replay: Replay,
    ca: PrivateKey,
    /// The path prefix links in the page use.
    base: String,
    pages: Mutex<HashMap<String, PageGrant>>,
    live: AtomicUsize,
}

fn now() -> u64 {
    u64::try_from(crate::time::now_unix()).unwrap_or(0)
}

impl App {
    pub fn new(cfg: Config, verifier: Verifier, ca: PrivateKey) -> App {
        App {
            cfg,
            verifier,
            replay: Replay::default(),
            ca,
            // Relative to /shell/<service>: works under a proxy's prefix.
            base: "../".into(),
            pages: Mutex::new(HashMap::new()),
            live: AtomicUsize::new(0),
        }
    }

    pub fn live_sessions(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    fn pages(&self) -> std::sync::MutexGuard<'_, HashMap<String, PageGrant>> {
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Emits one event. The syslog socket is connected per event (events
    /// are per page and per session, not per keystroke), so a syslog
    /// daemon that started late or restarted still gets every event.
    fn emit(&self, event: &Event) {
        Logger::new("porthole-web", &self.cfg.log.socket).emit(event);
    }

    fn rejected(&self, service: &str, reason: &str, sentence: &str) {
        self.emit(
            &Event::new("web.rejected", Severity::Warning)
                .field("service", service)
                .field("reason", reason)
                .field("message", sentence),
        );
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/shell/{service}", get(shell_page))
        .route("/ws/{service}", get(websocket))
        .route("/assets/{name}", get(asset))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(app)
}

async fn asset(Path(name): Path<String>) -> Response {
    match page::asset(&name) {
        Some((ct, body)) => (
            [
                (header::CONTENT_TYPE, ct),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Headers of both pages: never cached, the ticket in the URL never sent
/// as a referrer, only our own scripts.
const PAGE_HEADERS: [(header::HeaderName, &str); 3] = [
    (header::CACHE_CONTROL, "no-store"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data:",
    ),
];

fn refusal(status: StatusCode, sentence: &str) -> Response {
    (status, PAGE_HEADERS, Html(page::refusal_page(sentence))).into_response()
}

#[derive(Deserialize)]
struct PageQuery {
    ticket: Option<String>,
}

/// What placement says about a service, for the page and for routing.
enum Placement {
    /// The control plane lists these instances (possibly none).
    Listed(Vec<api::Instance>),
    /// No `instances` field (Part 1): the dashboard names the instance in
    /// the ticket and the session goes to `web.ssh_host`.
    None,
}

/// Why there is no placement to show: the platform gives this service no
/// shell (its own sentence), or the control plane could not answer.
enum NoPlacement {
    NoShell(String),
    Unavailable(String),
}

impl NoPlacement {
    fn parts(self) -> (StatusCode, &'static str, String) {
        match self {
            NoPlacement::NoShell(s) => (StatusCode::FORBIDDEN, "no_shell", s),
            NoPlacement::Unavailable(s) => (StatusCode::SERVICE_UNAVAILABLE, "placement", s),
        }
    }
}

fn placement(cfg: &Config, service: &ServiceId) -> Result<Placement, NoPlacement> {
    use NoPlacement::Unavailable;
    let deadline = Instant::now() + Duration::from_millis(cfg.control_plane.timeout_ms);
    match fetch(&cfg.control_plane, service, deadline) {
        Ok(FetchOutcome::Found(body)) => {
            let doc = ServiceDoc::parse(&body, service).map_err(|e| {
                Unavailable(format!("the control plane's answer is unusable: {e:?}"))
            })?;
            // The node would refuse with the same sentence (free web
            // services, databases): say it on the page already.
            match api::shell_policy(&doc.service) {
                api::ShellPolicy::Refused(sentence) => return Err(NoPlacement::NoShell(sentence)),
                // A cron job has no running instance: its shell is a
                // temporary instance of its latest build (issue 16), asked
                // for by the reserved slug at this host's sshd, which
                // starts it and removes it when the terminal closes.
                api::ShellPolicy::Temporary => {
                    return Ok(Placement::Listed(vec![api::Instance {
                        slug: crate::names::TEMPORARY_SLUG.to_owned(),
                        host: cfg.web.ssh_host.clone(),
                        port: Some(cfg.web.ssh_port),
                        // The one choice offered: it may be picked.
                        temporary: false,
                    }]));
                }
                api::ShellPolicy::Allowed => {}
            }
            Ok(match doc.placement() {
                Some(list) => Placement::Listed(list.into_iter().cloned().collect()),
                None => Placement::None,
            })
        }
        Ok(FetchOutcome::NotFound) => {
            Err(NoPlacement::NoShell(format!("{service} does not exist")))
        }
        Err(e) => Err(Unavailable(format!(
            "the control plane is unavailable: {e}"
        ))),
    }
}

async fn placement_async(app: &Arc<App>, service: &ServiceId) -> Result<Placement, NoPlacement> {
    let a = app.clone();
    let s = service.clone();
    tokio::task::spawn_blocking(move || placement(&a.cfg, &s))
        .await
        .unwrap_or_else(|e| Err(NoPlacement::Unavailable(format!("internal error: {e}"))))
}

async fn shell_page(
    State(app): State<Arc<App>>,
    Path(service): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let Some(svc) = ServiceId::parse(&service) else {
        let s = "this is not a service's shell address";
        app.rejected(
            &service.chars().take(64).collect::<String>(),
            "bad_service",
            s,
        );
        return refusal(StatusCode::NOT_FOUND, s);
    };
    let Some(token) = q.ticket else {
        let s = "this link has no ticket; open the shell from the dashboard";
        app.rejected(svc.as_str(), "no_ticket", s);
        return refusal(StatusCode::FORBIDDEN, s);
    };
    let t = now();
    let ticket = match app
        .verifier
        .verify(&token, &svc, t)
        .and_then(|tk| app.replay.consume(&tk, t).map(|()| tk))
    {
        Ok(tk) => tk,
        Err(r) => {
            let s = r.to_string();
            app.rejected(svc.as_str(), r.code(), &s);
            return refusal(StatusCode::FORBIDDEN, &s);
        }
    };
    let listed = match placement_async(&app, &svc).await {
        Ok(Placement::Listed(l)) => Some(l),
        Ok(Placement::None) => None,
        Err(e) => {
            let (status, code, s) = e.parts();
            app.rejected(svc.as_str(), code, &s);
            return refusal(status, &s);
        }
    };
    let (instances, random_choice): (Vec<String>, bool) = match (&ticket.instance, &listed) {
        (Some(pin), _) => (vec![pin.clone()], false),
        (None, Some(l)) => (l.iter().map(|i| i.slug.clone()).collect(), true),
        (None, None) => {
            let s = format!(
                "the control plane lists no instances for {svc}; the dashboard must name the instance in the ticket"
            );
            app.rejected(svc.as_str(), "no_instance", &s);
            return refusal(StatusCode::FORBIDDEN, &s);
        }
    };
    let grant = match random_hex(16) {
        Ok(g) => g,
        Err(e) => {
            return refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("no randomness: {e}"),
            )
        }
    };
    {
        let mut pages = app.pages();
        pages.retain(|_, p| p.busy || p.expires > t);
        pages.insert(
            grant.clone(),
            PageGrant {
                service: svc.clone(),
                ticket: ticket.clone(),
                expires: t + app.cfg.web.page_secs,
                busy: false,
                stop: Arc::new(tokio::sync::Notify::new()),
            },
        );
    }
    app.emit(
        &Event::new("web.page", Severity::Info)
            .field("service", svc.as_str())
            .field("owner", ticket.owner.as_str())
            .field("fingerprint", ticket.fingerprint())
            .opt("instance", ticket.instance.as_deref()),
    );
    let html = page::shell_page(&page::ShellPage {
        base: &app.base,
        service: svc.as_str(),
        owner: &ticket.owner,
        page: &grant,
        instances: &instances,
        random_choice,
    });
    (PAGE_HEADERS, Html(html)).into_response()
}

#[derive(Deserialize)]
struct WsQuery {
    page: Option<String>,
    instance: Option<String>,
    cols: Option<String>,
    rows: Option<String>,
}

/// A resize message: `{"type":"resize","cols":C,"rows":R}`, each 1..=1000.
#[derive(Debug, PartialEq, Eq)]
pub struct Resize {
    pub cols: u16,
    pub rows: u16,
}

/// Parses a browser's text frame (the only kind is `resize`).
pub fn parse_control(text: &str) -> Result<Resize, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Msg {
        #[serde(rename = "type")]
        kind: String,
        cols: serde_json::Value,
        rows: serde_json::Value,
    }
    let m: Msg = serde_json::from_str(text).map_err(|_| {
        "control messages are {\"type\":\"resize\",\"cols\":C,\"rows\":R}".to_owned()
    })?;
    if m.kind != "resize" {
        return Err("the only control message is resize".into());
    }
    let dim = |v: &serde_json::Value, max: u16, what: &str| {
        v.as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| format!("{what} must be a whole number from 1 to {max}"))
    };
    Ok(Resize {
        cols: dim(&m.cols, MAX_COLS, "cols")?,
        rows: dim(&m.rows, MAX_ROWS, "rows")?,
    })
}

fn query_dim(v: Option<&str>, default: u16, max: u16) -> u16 {
    v.and_then(|s| s.parse::<u16>().ok())
        .filter(|n| (1..=max).contains(n))
        .unwrap_or(default)
}

async fn websocket(
    State(app): State<Arc<App>>,
    Path(service): Path<String>,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    // The protocol layer reads messages up to 4x the limit (memory stays
    // bounded) so that one over the limit is answered with a clean close
    // 1009 by the relay; beyond 4x the connection is simply dropped.
    let hard = app.cfg.web.max_message_bytes.saturating_mul(4);
    let ws = ws.max_message_size(hard).max_frame_size(hard);
    // Refusals are sent as close frames: a browser cannot read the HTTP
    // status of a failed upgrade.
    ws.on_upgrade(move |socket| async move {
        let mut checked = check_grant(&app, &service, &q);
        // The page's previous session ends first (at most a few seconds).
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(Checked::Busy(stop)) = &checked {
            stop.notify_one();
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            checked = check_grant(&app, &service, &q);
        }
        let checked = checked.map_err(|c| match c {
            Checked::Refused(r) => r,
            Checked::Busy(_) => (
                close::REFUSED,
                "page_busy",
                "this page's previous session did not end".to_owned(),
            ),
        });
        match checked {
            Ok((svc, ticket, slug, stop)) => {
                let grant = q.page.unwrap_or_default();
                let size = (
                    query_dim(q.cols.as_deref(), 80, MAX_COLS),
                    query_dim(q.rows.as_deref(), 24, MAX_ROWS),
                );
                run(&app, socket, &svc, &ticket, slug, size, stop).await;
                if let Some(p) = app.pages().get_mut(&grant) {
                    p.busy = false;
                }
            }
            Err((code, reason, sentence)) => {
                app.rejected(
                    &service.chars().take(64).collect::<String>(),
                    reason,
                    &sentence,
                );
                end(socket, code, &sentence).await;
            }
        }
    })
}

type Refusal = (u16, &'static str, String);

enum Checked {
    Refused(Refusal),
    /// The page has a live session; notifying this ends it.
    Busy(Arc<tokio::sync::Notify>),
}

impl From<Refusal> for Checked {
    fn from(r: Refusal) -> Checked {
        Checked::Refused(r)
    }
}

type Granted = (ServiceId, Ticket, Option<String>, Arc<tokio::sync::Notify>);

fn check_grant(app: &App, service: &str, q: &WsQuery) -> Result<Granted, Checked> {
    let no_page = || {
        (
            close::REFUSED,
            "page_grant",
            "this page may not open a session (expired or unknown); open the shell again from the dashboard"
                .to_owned(),
        )
    };
    let svc = ServiceId::parse(service).ok_or_else(no_page)?;
    let no_page = || Checked::Refused(no_page());
    let asked = q.instance.as_deref().filter(|s| !s.is_empty());
    if asked.is_some_and(|s| !is_slug(s)) {
        return Err(Checked::Refused((
            close::REFUSED,
            "bad_instance",
            "the instance is not an instance slug (5 lowercase letters or digits)".into(),
        )));
    }
    let grant = q.page.as_deref().ok_or_else(no_page)?;
    let mut pages = app.pages();
    let p = pages.get_mut(grant).ok_or_else(no_page)?;
    if p.service != svc || p.expires <= now() {
        return Err(no_page());
    }
    if p.busy {
        return Err(Checked::Busy(p.stop.clone()));
    }
    let slug = match (&p.ticket.instance, asked) {
        (Some(pin), Some(a)) if pin != a => {
            return Err(Checked::Refused((
                close::REFUSED,
                "instance_not_in_ticket",
                format!("this page may open {} only", svc.instance_name(pin)),
            )))
        }
        (Some(pin), _) => Some(pin.clone()),
        (None, a) => a.map(str::to_owned),
    };
    if app.live.load(Ordering::SeqCst) >= app.cfg.web.max_sessions as usize {
        return Err(Checked::Refused((
            close::BUSY,
            "capacity",
            "the web shell has too many open terminals; try again later".into(),
        )));
    }
    p.busy = true;
    p.stop = Arc::new(tokio::sync::Notify::new());
    Ok((svc, p.ticket.clone(), slug, p.stop.clone()))
}

/// Sends the end message and closes.
async fn end(mut socket: WebSocket, code: u16, reason: &str) {
    let msg = serde_json::json!({"type": "end", "reason": reason, "code": code}).to_string();
    let _ = socket.send(Message::Text(msg.into())).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: session::close_reason(reason).into(),
        })))
        .await;
    // Wait briefly for the browser's close reply, then drop.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn pick_target(
    cfg: &Config,
    svc: &ServiceId,
    placed: Placement,
    slug: Option<&str>,
) -> Result<Target, String> {
    match placed {
        Placement::Listed(list) => {
            let refs: Vec<&api::Instance> = list.iter().collect();
            let mut r = [0u8; 8];
            crate::fleet::cert::random_bytes(&mut r).map_err(|e| e.to_string())?;
            let i = api::route(svc, &refs, slug, u64::from_le_bytes(r)).map_err(|e| e.to_string())?;
            // An instance on this host goes to the local sshd.
            let (host, port) = if cfg.fleet.is_own_name(&i.host) || i.host == cfg.web.ssh_host {
                (cfg.web.ssh_host.clone(), cfg.web.ssh_port)
            } else {
                (i.host.clone(), i.port.unwrap_or(cfg.fleet.node_port))
            };
            Ok(Target {
                login: svc.instance_name(&i.slug),
                host,
                port,
            })
        }
        Placement::None => match slug {
            Some(s) => Ok(Target {
                login: svc.instance_name(s),
                host: cfg.web.ssh_host.clone(),
                port: cfg.web.ssh_port,
            }),
            None => Err(format!(
                "the control plane lists no instances for {svc}; the dashboard must name the instance in the ticket"
            )),
        },
    }
}

async fn run(
    app: &Arc<App>,
    socket: WebSocket,
    svc: &ServiceId,
    ticket: &Ticket,
    slug: Option<String>,
    (cols, rows): (u16, u16),
    stop: Arc<tokio::sync::Notify>,
) {
    let placed = match placement_async(app, svc).await {
        Ok(p) => p,
        Err(e) => {
            let (_, code, s) = e.parts();
            app.rejected(svc.as_str(), code, &s);
            return end(socket, close::REFUSED, &s).await;
        }
    };
    let target = match pick_target(&app.cfg, svc, placed, slug.as_deref()) {
        Ok(t) => t,
        Err(s) => {
            app.rejected(svc.as_str(), "route", &s);
            return end(socket, close::REFUSED, &s).await;
        }
    };
    let session_id = match random_hex(8) {
        Ok(s) => s,
        Err(e) => return end(socket, close::INTERNAL, &format!("no randomness: {e}")).await,
    };
    let identity = HopIdentity {
        owner: ticket.owner.clone(),
        fingerprint: ticket.fingerprint(),
        session_id: session_id.clone(),
        via: VIA.to_owned(),
    };
    let timeout = app.cfg.fleet.hop_timeout_ms.div_ceil(1000);
    let started = session::prepare(
        &app.cfg.web,
        &app.cfg.fleet,
        &app.ca,
        &target,
        &identity,
        now(),
    )
    .and_then(|files| session::spawn(&app.cfg.web, files, &target, cols, rows, timeout));
    let running = match started {
        Ok(r) => r,
        Err(e) => {
            app.emit(
                &Event::new("web.error", Severity::Error)
                    .field("session", session_id.as_str())
                    .field("service", svc.as_str())
                    .field("error", e.to_string()),
            );
            return end(
                socket,
                close::INTERNAL,
                "the web shell could not start the session (the administrator has the details)",
            )
            .await;
        }
    };
    app.live.fetch_add(1, Ordering::SeqCst);
    let t0 = Instant::now();
    app.emit(
        &Event::new("web.session.start", Severity::Info)
            .field("session", session_id.as_str())
            .field("service", svc.as_str())
            .field("instance", target.login.as_str())
            .field("owner", ticket.owner.as_str())
            .field("host", target.host.as_str())
            .field("port", target.port),
    );
    let (code, reason) = relay(
        socket_with_hello(socket, &target).await,
        running,
        app.cfg.web.max_message_bytes,
        stop,
    )
    .await;
    app.live.fetch_sub(1, Ordering::SeqCst);
    app.emit(
        &Event::new("web.session.end", Severity::Info)
            .field("session", session_id.as_str())
            .field("service", svc.as_str())
            .field("instance", target.login.as_str())
            .field("owner", ticket.owner.as_str())
            .field("code", code)
            .field("reason", reason.as_str())
            .field("duration_ms", crate::log::elapsed_ms(t0)),
    );
}

async fn socket_with_hello(mut socket: WebSocket, target: &Target) -> WebSocket {
    let msg = serde_json::json!({"type": "instance", "name": target.login}).to_string();
    let _ = socket.send(Message::Text(msg.into())).await;
    socket
}

/// Relays until the client exits or the browser leaves; returns the close
/// code and reason it sent (or would have).
async fn relay(
    mut socket: WebSocket,
    running: session::Running,
    max_message: usize,
    stop: Arc<tokio::sync::Notify>,
) -> (u16, String) {
    let session::Running {
        pty,
        mut child,
        files,
    } = running;
    let (mut rd, mut wr) = pty.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    let mut tail = Tail::default();
    let mut exit: Option<i32> = None;
    // Set when the browser side ends the session.
    let mut browser_end: Option<(u16, String)> = None;
    loop {
        tokio::select! {
            _ = stop.notified() => {
                browser_end = Some((close::NORMAL, "the page opened another session".into()));
                break;
            }
            msg = socket.recv() => match msg {
                None | Some(Ok(Message::Close(_))) => {
                    browser_end = Some((close::NORMAL, "the browser closed the terminal".into()));
                    break;
                }
                Some(Err(e)) => {
                    let text = e.to_string();
                    browser_end = Some(if text.contains("too long") || text.contains("Space limit") {
                        (close::TOO_BIG, "a message was too large".into())
                    } else {
                        (close::INVALID, "the browser broke the websocket protocol".into())
                    });
                    break;
                }
                Some(Ok(Message::Binary(b))) if b.len() > max_message => {
                    browser_end = Some((close::TOO_BIG, format!("a message was larger than {max_message} bytes")));
                    break;
                }
                Some(Ok(Message::Text(t))) if t.len() > max_message => {
                    browser_end = Some((close::TOO_BIG, format!("a message was larger than {max_message} bytes")));
                    break;
                }
                Some(Ok(Message::Binary(b))) => {
                    if wr.write_all(&b).await.is_err() {
                        // The client is gone; its exit is read below.
                        continue;
                    }
                }
                Some(Ok(Message::Text(t))) => match parse_control(t.as_str()) {
                    Ok(r) => {
                        let _ = wr.resize(pty_process::Size::new(r.rows, r.cols));
                    }
                    Err(why) => {
                        browser_end = Some((close::INVALID, why));
                        break;
                    }
                },
                Some(Ok(_)) => {}
            },
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    tail.push(&buf[..n]);
                    if socket.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        browser_end = Some((close::NORMAL, "the browser left".into()));
                        break;
                    }
                }
            },
            st = child.wait(), if exit.is_none() => {
                exit = st.ok().and_then(|s| s.code());
                // Drain what the client printed last, briefly.
                let drain = async {
                    while let Ok(n) = rd.read(&mut buf).await {
                        if n == 0 { break; }
                        tail.push(&buf[..n]);
                        let _ = socket.send(Message::Binary(buf[..n].to_vec().into())).await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(300), drain).await;
                break;
            }
        }
    }
    if let Some((code, reason)) = browser_end {
        // Hang up: the node sees the connection drop and ends the session.
        let _ = child.start_kill();
        let _ = child.wait().await;
        drop(files);
        if code != close::NORMAL {
            end(socket, code, &reason).await;
        }
        return (code, reason);
    }
    if exit.is_none() {
        let st = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        exit = match st {
            Ok(Ok(s)) => s.code(),
            _ => {
                let _ = child.start_kill();
                None
            }
        };
    }
    drop(files);
    let reason = session::end_reason(&tail, exit);
    let code = match exit {
        Some(0) => close::NORMAL,
        Some(n) => close::EXIT_BASE + u16::try_from(n.clamp(1, 255)).unwrap_or(255),
        None => close::EXIT_BASE + 255,
    };
    end(socket, code, &reason).await;
    (code, reason)
}

/// Serves until SIGTERM/SIGINT.
pub async fn serve(app: Arc<App>) -> std::io::Result<()> {
    let listen = app.cfg.web.listen.clone();
    let router = router(app);
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    match listen.strip_prefix("unix:") {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            let l = tokio::net::UnixListener::bind(path)?;
            // Anyone local may connect, as to a loopback port: the ticket
            // is the authority, not the socket.
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
            axum::serve(l, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            use axum::serve::ListenerExt;
            // Keystrokes and their echo are tiny writes: no Nagle delay.
            let l = tokio::net::TcpListener::bind(&listen).await?.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(l, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn resize_messages() {
        assert_eq!(
            parse_control(r#"{"type":"resize","cols":120,"rows":40}"#),
            Ok(Resize {
                cols: 120,
                rows: 40
            })
        );
        for bad in [
            r#"{"type":"resize","cols":0,"rows":40}"#,
            r#"{"type":"resize","cols":1001,"rows":40}"#,
            r#"{"type":"resize","cols":-1,"rows":40}"#,
            r#"{"type":"resize","cols":80.5,"rows":40}"#,
            r#"{"type":"resize","cols":"80","rows":40}"#,
            r#"{"type":"resize","cols":70000,"rows":40}"#,
            r#"{"type":"paste","cols":80,"rows":40}"#,
            r#"{"type":"resize","cols":80,"rows":40,"x":1}"#,
            "not json",
        ] {
            assert!(parse_control(bad).is_err(), "{bad}");
        }
    }
}
