//! Audit and decision lines to syslog (facility authpriv).
//!
//! sshd throws away the hooks' stderr, so syslog is the admin's only window.
//! Every line is one JSON object (`{"event":"keys.decision",…}`) so that
//! tools can parse it back; serde_json escapes control characters, so a
//! hostile name or key comment cannot forge a second line. Lines longer
//! than a syslog datagram comfortably carries are split into numbered parts.
//! When the socket is missing the line goes to stderr instead of nowhere.

// Nothing here needs unsafe code; the compiler keeps it that way.
#![forbid(unsafe_code)]

use serde_json::{Map, Value};
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// LOG_AUTHPRIV (10 << 3).
const FACILITY_AUTHPRIV: u8 = 10 << 3;
/// Keep each datagram under the 2 KiB many relays still assume.
const MAX_PART: usize = 1800;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

/// One structured event. Fields keep insertion order after `event`.
#[derive(Debug, Clone)]
pub struct Event {
    pub severity: Severity,
    name: String,
    fields: Vec<(String, Value)>,
}

impl Event {
    pub fn new(name: &str, severity: Severity) -> Event {
        Event {
            severity,
            name: name.to_owned(),
            fields: Vec::new(),
        }
    }

    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.fields.push((key.to_owned(), value.into()));
        self
    }

    /// Adds the field only when there is a value.
    pub fn opt(self, key: &str, value: Option<impl Into<Value>>) -> Event {
        match value {
            Some(v) => self.field(key, v),
            None => self,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The JSON text of the event (no newline, control characters escaped).
    pub fn to_json(&self) -> String {
        let mut map = Map::new();
        map.insert("event".into(), Value::String(self.name.clone()));
        for (k, v) in &self.fields {
            map.insert(k.clone(), v.clone());
        }
        Value::Object(map).to_string()
    }
}

/// Sends events to a syslog socket as `ident[pid]`.
pub struct Logger {
    ident: &'static str,
    socket: Option<UnixDatagram>,
    /// Whether lines that cannot reach syslog go to stderr. Off for the
    /// session shell, whose stderr is the developer's terminal.
    stderr_fallback: bool,
}

impl Logger {
    /// Connects to `socket_path`; on failure, events go to stderr.
    pub fn new(ident: &'static str, socket_path: &Path) -> Logger {
        let socket = UnixDatagram::unbound()
            .and_then(|s| s.connect(socket_path).map(|()| s))
            .ok();
        Logger {
            ident,
            socket,
            stderr_fallback: true,
        }
    }

    /// Like `new`, but lines that cannot be delivered are dropped instead
    /// of shown on stderr (`porthole doctor` reports a missing socket).
    pub fn syslog_only(ident: &'static str, socket_path: &Path) -> Logger {
        Logger {
            stderr_fallback: false,
            ..Logger::new(ident, socket_path)
        }
    }

    /// A logger that writes to stderr only (before the config is known).
    pub fn stderr(ident: &'static str) -> Logger {
        Logger {
            ident,
            socket: None,
            stderr_fallback: true,
        }
    }

    pub fn emit(&self, event: &Event) {
        let json = event.to_json();
        let parts = split_message(&json, MAX_PART);
        let total = parts.len();
        for (i, part) in parts.iter().enumerate() {
            let body = if total == 1 {
                (*part).to_owned()
            } else {
                format!("[part {}/{}] {}", i + 1, total, part)
            };
            self.send_line(event.severity, &body);
        }
    }

    fn send_line(&self, severity: Severity, body: &str) {
        let pid = std::process::id();
        if let Some(sock) = &self.socket {
            let pri = FACILITY_AUTHPRIV | severity as u8;
            let line = format!("<{pri}>{}[{pid}]: {body}", self.ident);
            if sock.send(line.as_bytes()).is_ok() {
                return;
            }
        }
        if self.stderr_fallback {
            eprintln!("{}[{pid}]: {body}", self.ident);
        }
    }
}

/// Splits at character boundaries into pieces of at most `max` bytes.
fn split_message(s: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while rest.len() > max {
        let mut cut = max;
        while cut > 0 && !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            break;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}

/// Milliseconds since `start`, for the `ms` field.
pub fn elapsed_ms(start: std::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_line_with_control_characters_escaped() {
        let e = Event::new("keys.decision", Severity::Info)
            .field("service", "srv-x\nforged: yes")
            .field("ms", 3)
            .opt("owner", None::<String>);
        let j = e.to_json();
        assert!(!j.contains('\n'));
        let v: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["event"], "keys.decision");
        assert_eq!(v["service"], "srv-x\nforged: yes");
        assert!(v.get("owner").is_none());
    }

    #[test]
    fn long_messages_split_on_char_boundaries() {
        let s = "é".repeat(2000);
        let parts = split_message(&s, 1001);
        assert!(parts.iter().all(|p| p.len() <= 1001));
        assert_eq!(parts.concat(), s);
    }

    #[test]
    fn lines_reach_the_socket_with_authpriv_priority() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let logger = Logger::new("porthole-test", &path);
        logger.emit(&Event::new("x.y", Severity::Warning).field("a", 1));
        let mut buf = [0u8; 4096];
        let n = server.recv(&mut buf).unwrap();
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(line.starts_with("<84>porthole-test["), "{line}");
        assert!(line.ends_with(r#"{"event":"x.y","a":1}"#), "{line}");
    }
}
