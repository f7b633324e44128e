//! Asking the control plane (API v1) one question: which keys may enter
//! this service. Only the keys hook and the admin CLI link this module.
//!
//! The whole request, connect to last body byte, fits in the time left
//! until the caller's deadline, and the body is read incrementally up to a
//! cap: a slow or hostile server costs a login at most the budget and a
//! bounded amount of memory. Redirects are not followed (the token must not
//! travel to another host).

use crate::config::ControlPlane;
use crate::names::ServiceId;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the control plane said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// 200 with this body (at most max_body_bytes).
    Found(Vec<u8>),
    /// 404: the service does not exist.
    NotFound,
}

/// Why there is no answer, and what the caller does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// 401/403: our token is wrong. Log loudly and fail closed (no stale
    /// cache: the platform may have revoked this bastion on purpose).
    Unauthorized(u16),
    /// 5xx, timeout, refused connection, oversize or cut body: the control
    /// plane is unhealthy. Serve the cache if it is young enough.
    Unavailable(String),
    /// Our own configuration is unusable (token file): an admin problem.
    Config(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Unauthorized(s) => {
                write!(f, "control plane refused this bastion's token (HTTP {s}); check control_plane.token_file")
            }
            FetchError::Unavailable(m) => write!(f, "control plane unavailable: {m}"),
            FetchError::Config(m) => write!(f, "configuration: {m}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// Reads the bearer token (root-owned file, readable by the hook's group).
pub fn read_token(cfg: &ControlPlane) -> Result<Option<String>, FetchError> {
    let Some(path) = &cfg.token_file else {
        return Ok(None);
    };
    let bytes = crate::config::read_root_owned(path, 4096)
        .map_err(|e| FetchError::Config(format!("token file {}: {e}", path.display())))?;
    let token = String::from_utf8(bytes)
        .map_err(|_| FetchError::Config(format!("token file {} is not UTF-8", path.display())))?;
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FetchError::Config(format!(
            "token file {} holds no usable token",
            path.display()
        )));
    }
    Ok(Some(token.to_owned()))
}

/// Asks for `service` before `deadline`.
pub fn fetch(
    cfg: &ControlPlane,
    service: &ServiceId,
    deadline: Instant,
) -> Result<FetchOutcome, FetchError> {
    let max = cfg.max_body_bytes;
    if let Some(dir) = cfg.url.strip_prefix("file://") {
        return fetch_file(
            PathBuf::from(dir).join(format!("{}.json", service.as_str())),
            max,
        );
    }
    let path = format!("/v1/services/{}/ssh", service.as_str());
    get(cfg, &path, deadline)
}

/// Asks which services the key with this fingerprint (`SHA256:…`) may
/// enter (the picker's question). `file://` answers by scanning its
/// directory; the body is always `{"services": […]}`.
pub fn fetch_key_services(
    cfg: &ControlPlane,
    fingerprint: &str,
    deadline: Instant,
) -> Result<FetchOutcome, FetchError> {
    if let Some(dir) = cfg.url.strip_prefix("file://") {
        let now = crate::time::now_unix();
        return crate::control_plane::key_services::scan_dir(
            std::path::Path::new(dir),
            fingerprint,
            cfg.max_body_bytes,
            now,
        )
        .map(|v| FetchOutcome::Found(v.to_string().into_bytes()))
        .map_err(|e| FetchError::Config(format!("{dir}: {e}")));
    }
    let path = format!("/v1/keys/{}/services", percent_encode(fingerprint));
    get(cfg, &path, deadline)
}

/// Everything but unreserved characters (RFC 3986) escaped: the
/// fingerprint's base64 has `/` and `+`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One GET of `path` under the control plane's URL, within the deadline.
fn get(cfg: &ControlPlane, path: &str, deadline: Instant) -> Result<FetchOutcome, FetchError> {
    let max = cfg.max_body_bytes;
    let left = deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(10) {
        return Err(FetchError::Unavailable("no time left in the budget".into()));
    }
    // Config::load refuses this already; checked again here because the
    // token must never leave in clear whatever built `cfg`.
    if let Some(why) = cfg.insecure_http_refusal() {
        return Err(FetchError::Config(why));
    }
    let token = read_token(cfg)?;
    let url = format!("{}{path}", cfg.url.trim_end_matches('/'));
    let client = reqwest::blocking::Client::builder()
        .timeout(left)
        .connect_timeout(left)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("porthole-keys/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Unavailable(format!("client: {e}")))?;
    let mut req = client.get(&url).header("Accept", "application/json");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .map_err(|e| FetchError::Unavailable(describe(&e)))?;
    let status = resp.status().as_u16();
    match status {
        200 => {}
        404 => return Ok(FetchOutcome::NotFound),
        401 | 403 => return Err(FetchError::Unauthorized(status)),
        s => return Err(FetchError::Unavailable(format!("HTTP {s}"))),
    }
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(FetchError::Unavailable(format!(
            "answer larger than {max} bytes"
        )));
    }
    read_capped(resp, max, Some(deadline)).map(FetchOutcome::Found)
}

/// Reads at most `max` bytes, checking the deadline between reads: the
/// client's own timeout bounds each read, not a body that drips slowly.
pub(crate) fn read_capped(
    mut r: impl Read,
    max: u64,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, FetchError> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(FetchError::Unavailable(
                "timed out reading the answer".into(),
            ));
        }
        let n = match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FetchError::Unavailable(format!("reading the answer: {e}"))),
        };
        body.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if body.len() as u64 > max {
            return Err(FetchError::Unavailable(format!(
                "answer larger than {max} bytes"
            )));
        }
    }
    Ok(body)
}

/// The `file://` source decides who may log in, so its files are trusted
/// only when root-owned and not writable by others, like the config.
fn fetch_file(path: PathBuf, max: u64) -> Result<FetchOutcome, FetchError> {
    match crate::config::read_root_owned(&path, max) {
        Ok(body) => Ok(FetchOutcome::Found(body)),
        Err(crate::config::SecureReadError::Missing) => Ok(FetchOutcome::NotFound),
        Err(e) => Err(FetchError::Config(format!("{}: {e}", path.display()))),
    }
}

pub(crate) fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            src = inner.source();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A one-shot HTTP server on 127.0.0.1 that answers with `reply` after
    /// reading the request head; returns the base URL.
    fn serve(reply: Vec<u8>, drip: Option<Duration>) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            match drip {
                None => {
                    let _ = s.write_all(&reply);
                }
                Some(every) => {
                    for c in reply.chunks(4) {
                        if s.write_all(c).is_err() {
                            break;
                        }
                        std::thread::sleep(every);
                    }
                }
            }
            String::from_utf8_lossy(&head).into_owned()
        });
        (url, h)
    }

    fn cfg(url: String) -> ControlPlane {
        ControlPlane {
            url,
            max_body_bytes: 2048,
            ..ControlPlane::default()
        }
    }

    fn sid() -> ServiceId {
        ServiceId::parse("srv-a1").unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(3)
    }

    #[test]
    fn ok_not_found_unauthorized_and_server_errors() {
        let (url, h) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            None,
        );
        assert_eq!(
            fetch(&cfg(url), &sid(), soon()),
            Ok(FetchOutcome::Found(b"{}".to_vec()))
        );
        assert!(h
            .join()
            .unwrap()
            .starts_with("GET /v1/services/srv-a1/ssh HTTP/1.1"));
        let (url, _) = serve(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            None,
        );
        assert_eq!(fetch(&cfg(url), &sid(), soon()), Ok(FetchOutcome::NotFound));
        let (url, _) = serve(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_vec(),
            None,
        );
        assert_eq!(
            fetch(&cfg(url), &sid(), soon()),
            Err(FetchError::Unauthorized(401))
        );
        let (url, _) = serve(
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n".to_vec(),
            None,
        );
        assert!(matches!(
            fetch(&cfg(url), &sid(), soon()),
            Err(FetchError::Unavailable(_))
        ));
        let (url, _) = serve(
            b"HTTP/1.1 302 Found\r\nLocation: http://example.com/\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
            None,
        );
        assert!(matches!(
            fetch(&cfg(url), &sid(), soon()),
            Err(FetchError::Unavailable(_))
        ));
    }

    #[test]
    fn key_services_ask_with_the_fingerprint_escaped() {
        let (url, h) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"services\":[]}".to_vec(),
            None,
        );
        assert_eq!(
            fetch_key_services(&cfg(url), "SHA256:ab/c+d=", soon()),
            Ok(FetchOutcome::Found(br#"{"services":[]}"#.to_vec()))
        );
        let head = h.join().unwrap();
        assert!(
            head.starts_with("GET /v1/keys/SHA256%3Aab%2Fc%2Bd%3D/services HTTP/1.1"),
            "{head}"
        );
    }

    #[test]
    fn oversize_and_slow_bodies_are_cut() {
        let big = [b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), vec![b'x'; 5000]].concat();
        let (url, _) = serve(big, None);
        let e = fetch(&cfg(url), &sid(), soon()).unwrap_err();
        assert!(e.to_string().contains("larger than 2048"), "{e}");
        let slow = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n".to_vec(),
            vec![b' '; 400],
        ]
        .concat();
        let (url, _) = serve(slow, Some(Duration::from_millis(20)));
        let start = Instant::now();
        let r = fetch(
            &cfg(url),
            &sid(),
            Instant::now() + Duration::from_millis(300),
        );
        assert!(matches!(r, Err(FetchError::Unavailable(_))), "{r:?}");
        assert!(
            start.elapsed() < Duration::from_millis(1000),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn file_source_and_refused_connections() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("srv-a1.json"), "{}").unwrap();
        let c = cfg(format!("file://{}", dir.path().display()));
        assert_eq!(
            fetch(&c, &sid(), soon()),
            Ok(FetchOutcome::Found(b"{}".to_vec()))
        );
        let other = ServiceId::parse("srv-b2").unwrap();
        assert_eq!(fetch(&c, &other, soon()), Ok(FetchOutcome::NotFound));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        assert!(matches!(
            fetch(&cfg(url), &sid(), soon()),
            Err(FetchError::Unavailable(_))
        ));
    }

    #[test]
    fn plain_http_to_a_remote_host_with_a_token_is_never_asked() {
        // 192.0.2.1 (TEST-NET-1) is never routed: were a request attempted,
        // the error would be Unavailable, not this Config refusal.
        let mut c = cfg("http://192.0.2.1:9/".into());
        c.token_file = Some("/nonexistent/token".into());
        c.timeout_ms = 200;
        let e = fetch(&c, &sid(), soon()).unwrap_err();
        assert!(
            matches!(&e, FetchError::Config(m) if m.contains("bearer token would cross the network in clear")),
            "{e}"
        );
        // Allowed explicitly, it goes on to read the token (which is absent).
        c.allow_insecure_http = true;
        let e = fetch(&c, &sid(), soon()).unwrap_err();
        assert!(
            matches!(&e, FetchError::Config(m) if m.contains("token file")),
            "{e}"
        );
    }
}
