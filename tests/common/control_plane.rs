//! A real HTTP/1.1 control plane on 127.0.0.1 (std only, one thread per
//! connection) serving `GET /v1/services/{id}/ssh` with programmable replies,
//! and `GET /v1/keys/{fingerprint}/services` (the picker's question),
//! derived from those replies unless set per fingerprint.

use super::ssh::ClientKey;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What the server answers for one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: String,
    /// Sleep this long before sending anything (headers included).
    pub delay: Duration,
    /// Send the body in chunks of `.0` bytes, sleeping `.1` before each.
    pub drip: Option<(usize, Duration)>,
    /// Announce the whole Content-Length, send this many body bytes, close.
    pub close_after: Option<usize>,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn json(v: &Value) -> Reply {
        Reply::raw(200, v.to_string())
    }

    /// Any status with a small JSON error body.
    pub fn status(code: u16) -> Reply {
        Reply::raw(code, json!({"error": reason(code)}).to_string())
    }

    /// Any status and body bytes (`application/json` content type).
    pub fn raw(code: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: code,
            body: body.into(),
            content_type: "application/json".into(),
            delay: Duration::ZERO,
            drip: None,
            close_after: None,
        }
    }

    pub fn content_type(mut self, ct: &str) -> Reply {
        self.content_type = ct.into();
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }

    pub fn drip(mut self, chunk: usize, every: Duration) -> Reply {
        self.drip = Some((chunk.max(1), every));
        self
    }

    pub fn close_after(mut self, body_bytes: usize) -> Reply {
        self.close_after = Some(body_bytes);
        self
    }
}

/// One key of a v1 answer.
#[derive(Clone, Debug)]
pub struct KeySpec {
    pub public_key: String,
    pub owner: String,
    pub name: Option<String>,
    pub expires_at: Option<String>,
    pub from: Option<Vec<String>>,
}

impl KeySpec {
    pub fn new(key: &ClientKey, owner: &str) -> KeySpec {
        KeySpec::raw(&key.public_line, owner)
    }

    /// Any `public_key` string (for malformed-key cases).
    pub fn raw(public_key: &str, owner: &str) -> KeySpec {
        KeySpec {
            public_key: public_key.into(),
            owner: owner.into(),
            name: None,
            expires_at: None,
            from: None,
        }
    }

    pub fn name(mut self, n: &str) -> KeySpec {
        self.name = Some(n.into());
        self
    }

    pub fn expires_at(mut self, rfc3339: &str) -> KeySpec {
        self.expires_at = Some(rfc3339.into());
        self
    }

    pub fn from(mut self, cidrs: &[&str]) -> KeySpec {
        self.from = Some(cidrs.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({"public_key": self.public_key, "owner": self.owner});
        if let Some(n) = &self.name {
            v["name"] = json!(n);
        }
        if let Some(e) = &self.expires_at {
            v["expires_at"] = json!(e);
        }
        if let Some(f) = &self.from {
            v["from"] = json!(f);
        }
        v
    }
}

/// An API v1 answer body: `{"service": {...}, "keys": [...]}`.
pub fn v1_body(service: &str, kind: &str, plan: &str, keys: &[KeySpec]) -> Value {
    json!({
        "service": {"id": service, "name": format!("{service}-app"), "type": kind, "plan": plan},
        "keys": keys.iter().map(KeySpec::to_json).collect::<Vec<_>>(),
    })
}

/// A paid web service (`web_service`, `starter`) with these keys.
pub fn web_service(service: &str, keys: &[KeySpec]) -> Value {
    v1_body(service, "web_service", "starter", keys)
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Set when the path is `/v1/services/{id}/ssh`.
    pub service: Option<String>,
    /// Set when the path is `/v1/keys/{fingerprint}/services` (decoded).
    pub key: Option<String>,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    token: String,
    /// Per service: replies served in order; the last one repeats.
    replies: HashMap<String, (Vec<Reply>, usize)>,
    /// Per key fingerprint: the reply to `/v1/keys/{fp}/services`, when
    /// set; otherwise it is derived from the service replies.
    key_replies: HashMap<String, Reply>,
    requests: Vec<Request>,
    /// Per service: the answer to `POST …/temporary-instances`, and to
    /// `DELETE …/temporary-instances/{slug}` (default 404 and 204).
    temporary_create: HashMap<String, Reply>,
    temporary_delete: HashMap<String, Reply>,
}

struct Server {
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    active: Arc<AtomicUsize>,
}

/// The control plane. Stopping it closes the port (connections are refused);
/// `restart` binds the same port again.
pub struct ControlPlane {
    port: u16,
    state: Arc<Mutex<State>>,
    server: Mutex<Option<Server>>,
}

impl ControlPlane {
    /// Starts on a free loopback port, expecting `Authorization: Bearer <token>`.
    pub fn start(token: &str) -> ControlPlane {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind control plane");
        let port = listener.local_addr().expect("local_addr").port();
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            ..State::default()
        }));
        let cp = ControlPlane {
            port,
            state,
            server: Mutex::new(None),
        };
        cp.serve(listener);
        cp
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (the `control_plane.url` base).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answer every request for `service` with `reply`.
    pub fn set_reply(&self, service: &str, reply: Reply) {
        self.set_replies(service, vec![reply]);
    }

    /// Answer with `replies` in order; the last one repeats.
    pub fn set_replies(&self, service: &str, replies: Vec<Reply>) {
        assert!(!replies.is_empty(), "set_replies needs at least one reply");
        self.lock().replies.insert(service.into(), (replies, 0));
    }

    /// 200 with `body` (usually from [`v1_body`]).
    pub fn set_body(&self, service: &str, body: &Value) {
        self.set_reply(service, Reply::json(body));
    }

    /// Answer `/v1/keys/{fingerprint}/services` with `reply` (instead of
    /// the list derived from the service answers).
    pub fn set_key_services(&self, fingerprint: &str, reply: Reply) {
        self.lock().key_replies.insert(fingerprint.into(), reply);
    }

    /// Requests for the services of the key with this fingerprint so far.
    pub fn key_requests(&self, fingerprint: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.key.as_deref() == Some(fingerprint))
            .count()
    }

    /// The answer to `POST /v1/services/{service}/temporary-instances`.
    pub fn set_temporary_create(&self, service: &str, reply: Reply) {
        self.lock().temporary_create.insert(service.into(), reply);
    }

    /// The answer to `DELETE /v1/services/{service}/temporary-instances/…`.
    pub fn set_temporary_delete(&self, service: &str, reply: Reply) {
        self.lock().temporary_delete.insert(service.into(), reply);
    }

    /// `(method, path, authorization)` of every temporary-instance request.
    pub fn temporary_requests(&self) -> Vec<(String, String, Option<String>)> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path.contains("/temporary-instances"))
            .map(|r| (r.method.clone(), r.path.clone(), r.authorization.clone()))
            .collect()
    }

    /// Back to the default answer (404) for `service`.
    pub fn clear(&self, service: &str) {
        self.lock().replies.remove(service);
    }

    /// The token the server expects from now on (a mismatch answers 401).
    pub fn set_token(&self, token: &str) {
        self.lock().token = token.into();
    }

    /// Requests for `service` so far (authorized or not).
    pub fn requests(&self, service: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.service.as_deref() == Some(service))
            .count()
    }

    pub fn total_requests(&self) -> usize {
        self.lock().requests.len()
    }

    pub fn request_log(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    pub fn reset_counts(&self) {
        self.lock().requests.clear();
    }

    pub fn is_running(&self) -> bool {
        self.server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Closes the port and ends in-flight answers (their sockets close).
    pub fn stop(&self) {
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(server) = server else { return };
        server.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = server.accept.join();
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Listens on the same port again (after [`stop`](Self::stop)).
    pub fn restart(&self) {
        if self.is_running() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("control plane cannot rebind port {}: {e}", self.port),
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let (st, sp, ac) = (self.state.clone(), stop.clone(), active.clone());
        let accept = thread::Builder::new()
            .name(format!("control-plane-{}", self.port))
            .spawn(move || {
                for conn in listener.incoming() {
                    if sp.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (st, sp, ac2) = (st.clone(), sp.clone(), ac.clone());
                    ac.fetch_add(1, Ordering::SeqCst);
                    let spawned = thread::Builder::new()
                        .name("control-plane-conn".into())
                        .spawn(move || {
                            handle(conn, &st, &sp);
                            ac2.fetch_sub(1, Ordering::SeqCst);
                        });
                    if spawned.is_err() {
                        ac.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })
            .expect("spawn control plane");
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(Server {
            stop,
            accept,
            active,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// `/v1/services/{id}/ssh` → `id` (any id: the server does not judge names).
fn service_of(path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or("");
    let id = path.strip_prefix("/v1/services/")?.strip_suffix("/ssh")?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
}

/// `/v1/keys/{fingerprint}/services` → the fingerprint, percent-decoded.
fn key_of(path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or("");
    let enc = path.strip_prefix("/v1/keys/")?.strip_suffix("/services")?;
    let mut out = Vec::new();
    let b = enc.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.is_empty()).then_some(s)
}

/// What the platform would answer for the key: every service whose
/// current 200 answer lists it, with only its entries of this key.
fn derived_key_services(st: &State, fingerprint: &str) -> Reply {
    let mut ids: Vec<&String> = st.replies.keys().collect();
    ids.sort();
    let mut services = Vec::new();
    for id in ids {
        let (list, next) = &st.replies[id];
        let r = &list[(*next).min(list.len() - 1)];
        if r.status != 200 {
            continue;
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(&r.body) else {
            continue;
        };
        let Some(Value::Array(keys)) = v.get_mut("keys") else {
            continue;
        };
        keys.retain(|k| {
            k.get("public_key")
                .and_then(Value::as_str)
                .and_then(|p| porthole::control_plane::keys::validate_public_key(p).ok())
                .is_some_and(|key| key.fingerprint == fingerprint)
        });
        if !keys.is_empty() {
            services.push(v);
        }
    }
    Reply::json(&json!({ "services": services }))
}

/// `/v1/services/{id}/temporary-instances[/{slug}]` → (id, slug).
fn temporary_of(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix("/v1/services/")?;
    let (id, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("temporary-instances")?;
    match rest {
        "" => Some((id.to_owned(), None)),
        r => Some((id.to_owned(), Some(r.strip_prefix('/')?.to_owned()))),
    }
}

/// Sleeps `d` in small steps; false when the server is stopping.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep(Duration::from_millis(5).min(deadline - Instant::now()));
    }
    !stop.load(Ordering::SeqCst)
}

fn handle(conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    if stop.load(Ordering::SeqCst) {
        return;
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut rd = BufReader::new(read_half.take(64 * 1024));
    let mut request_line = String::new();
    if rd.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut authorization = None;
    let mut user_agent = None;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim().to_owned();
            match k.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(v),
                "user-agent" => user_agent = Some(v),
                "content-length" => content_length = v.parse().unwrap_or(0).min(64 * 1024),
                _ => {}
            }
        }
    }
    // Read the request body: closing with unread bytes would reset the
    // connection before the client reads the answer.
    let mut body = vec![0u8; content_length];
    let _ = rd.read_exact(&mut body);
    let service = service_of(&path);
    let key = key_of(&path);
    let temporary = temporary_of(&path);
    let reply = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.requests.push(Request {
            method: method.clone(),
            path: path.clone(),
            service: service.clone(),
            key: key.clone(),
            authorization: authorization.clone(),
            user_agent,
            at: Instant::now(),
        });
        let expected = format!("Bearer {}", st.token);
        if let Some((svc, slug)) = temporary {
            match (method.as_str(), slug) {
                _ if authorization.as_deref() != Some(expected.as_str()) => Reply::status(401),
                ("POST", None) => st
                    .temporary_create
                    .get(&svc)
                    .cloned()
                    .unwrap_or_else(|| Reply::status(404)),
                ("DELETE", Some(_)) => st
                    .temporary_delete
                    .get(&svc)
                    .cloned()
                    .unwrap_or_else(|| Reply::raw(204, "")),
                _ => Reply::status(405),
            }
        } else if method != "GET" {
            Reply::status(405)
        } else if authorization.as_deref() != Some(expected.as_str()) {
            Reply::status(401)
        } else if let Some(fp) = key {
            match st.key_replies.get(&fp) {
                Some(r) => r.clone(),
                None => derived_key_services(&st, &fp),
            }
        } else {
            match service.and_then(|s| st.replies.get_mut(&s)) {
                Some((list, next)) => {
                    let r = list[(*next).min(list.len() - 1)].clone();
                    *next += 1;
                    r
                }
                None => Reply::status(404),
            }
        }
    };
    respond(conn, &reply, stop);
}

fn respond(mut conn: TcpStream, r: &Reply, stop: &AtomicBool) {
    if !nap(r.delay, stop) {
        let _ = conn.shutdown(Shutdown::Both);
        return;
    }
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let body = match r.close_after {
        Some(n) => &r.body[..n.min(r.body.len())],
        None => &r.body[..],
    };
    match r.drip {
        Some((chunk, every)) => {
            for piece in body.chunks(chunk) {
                if !nap(every, stop) || conn.write_all(piece).is_err() {
                    break;
                }
                let _ = conn.flush();
            }
        }
        None => {
            let _ = conn.write_all(body);
        }
    }
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(port: u16, path: &str, token: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (code, body)
    }

    #[test]
    fn control_plane_serves_counts_checks_token_and_restarts() {
        let cp = ControlPlane::start("tok");
        cp.set_body("srv-a1", &v1_body("srv-a1", "web_service", "starter", &[]));
        let (code, body) = get(cp.port(), "/v1/services/srv-a1/ssh", "tok");
        assert_eq!(code, 200);
        assert!(body.contains("\"srv-a1\""), "{body}");
        assert_eq!(get(cp.port(), "/v1/services/srv-a1/ssh", "bad").0, 401);
        assert_eq!(get(cp.port(), "/v1/services/srv-zz/ssh", "tok").0, 404);
        assert_eq!(cp.requests("srv-a1"), 2);
        cp.stop();
        assert!(!cp.is_running());
        // Nothing serves the port any more. (A bare connect is no proof
        // either way: another test may bind the freed port, and a connect
        // to a free ephemeral port can, rarely, connect to itself.)
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", cp.port())) {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let _ = write!(s, "GET /v1/services/srv-a1/ssh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            assert!(
                !out.contains("\"srv-a1\""),
                "a stopped control plane answered: {out}"
            );
        }
        assert_eq!(
            cp.requests("srv-a1"),
            2,
            "a stopped control plane counted a request"
        );
        cp.restart();
        cp.set_replies("srv-a1", vec![Reply::status(503), Reply::raw(200, "x")]);
        assert_eq!(get(cp.port(), "/v1/services/srv-a1/ssh", "tok").0, 503);
        assert_eq!(get(cp.port(), "/v1/services/srv-a1/ssh", "tok").0, 200);
        assert_eq!(get(cp.port(), "/v1/services/srv-a1/ssh", "tok").0, 200);
        cp.set_reply("srv-a1", Reply::raw(200, "0123456789").close_after(4));
        let (code, body) = get(cp.port(), "/v1/services/srv-a1/ssh", "tok");
        assert_eq!((code, body.as_str()), (200, "0123"));
    }
}
