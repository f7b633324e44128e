//! A syslog socket for one test: the hooks' `log.socket` points here.
//!
//! Lines look like `<PRI>ident[pid]: {json}` (see `src/log.rs`); long ones
//! come as `[part i/n] …` pieces that are joined back before parsing.

use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// One syslog line that carried a JSON object.
#[derive(Debug, Clone)]
pub struct LogEvent {
    /// The datagram(s) as received (parts joined).
    pub raw: String,
    /// Facility (`pri >> 3`; authpriv is 10).
    pub facility: u8,
    /// Severity (`pri & 7`; 3 error, 4 warning, 5 notice, 6 info).
    pub severity: u8,
    pub ident: String,
    pub pid: u32,
    pub json: Value,
}

impl LogEvent {
    /// The `event` field (`keys.decision`, …), or "" when absent.
    pub fn name(&self) -> &str {
        self.json.get("event").and_then(Value::as_str).unwrap_or("")
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key)
    }

    /// A string field, `None` when absent or not a string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.json.get(key).and_then(Value::as_str)
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        self.json.get(key).and_then(Value::as_u64)
    }

    /// `name == event && every (key, value) string field matches`.
    pub fn is(&self, event: &str, fields: &[(&str, &str)]) -> bool {
        self.name() == event && fields.iter().all(|(k, v)| self.str(k) == Some(v))
    }
}

#[derive(Default)]
struct Store {
    events: Vec<LogEvent>,
    /// Every line, also the ones that are not JSON.
    lines: Vec<String>,
    partial: HashMap<(String, u32), Vec<String>>,
}

/// Owns the bound socket and the reader thread; dropping stops it.
pub struct SyslogCapture {
    path: PathBuf,
    store: Arc<Mutex<Store>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SyslogCapture {
    /// Binds `path` (mode 0666 like /dev/log, so the unprivileged keys-hook
    /// user can send) and starts reading.
    pub fn bind(path: &Path) -> SyslogCapture {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path)
            .unwrap_or_else(|e| panic!("bind syslog socket {}: {e}", path.display()));
        super::util::set_owner_mode(path, 0o666, 0, 0);
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set_read_timeout");
        let store = Arc::new(Mutex::new(Store::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (store.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name("syslog-capture".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !sp.load(Ordering::Relaxed) {
                    match sock.recv(&mut buf) {
                        Ok(n) => {
                            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                            let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                            ingest(&mut s, line);
                        }
                        Err(_) => continue,
                    }
                }
            })
            .expect("spawn syslog thread");
        SyslogCapture {
            path: path.to_owned(),
            store,
            stop,
            thread: Some(thread),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every JSON event received so far, in order.
    pub fn events(&self) -> Vec<LogEvent> {
        self.lock().events.clone()
    }

    /// Every raw line received so far (JSON or not).
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Waits until an event satisfies `pred`; `None` after `timeout`.
    pub fn wait_event(
        &self,
        pred: impl Fn(&LogEvent) -> bool,
        timeout: Duration,
    ) -> Option<LogEvent> {
        super::util::wait_for(timeout, || {
            self.lock().events.iter().find(|e| pred(e)).cloned()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for SyslogCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Parses `<PRI>ident[pid]: body`.
fn split_line(line: &str) -> Option<(u8, String, u32, &str)> {
    let rest = line.strip_prefix('<')?;
    let (pri, rest) = rest.split_once('>')?;
    let pri: u8 = pri.parse().ok()?;
    let (head, body) = rest.split_once(": ")?;
    let (ident, pid) = head.strip_suffix(']')?.rsplit_once('[')?;
    Some((pri, ident.to_owned(), pid.parse().ok()?, body))
}

fn ingest(store: &mut Store, line: String) {
    store.lines.push(line.clone());
    let Some((pri, ident, pid, body)) = split_line(&line) else {
        return;
    };
    let body = if let Some(rest) = body.strip_prefix("[part ") {
        // "[part i/n] piece"
        let Some((nums, piece)) = rest.split_once("] ") else {
            return;
        };
        let Some((i, n)) = nums.split_once('/') else {
            return;
        };
        let (Ok(i), Ok(n)) = (i.parse::<usize>(), n.parse::<usize>()) else {
            return;
        };
        let key = (ident.clone(), pid);
        let parts = store.partial.entry(key.clone()).or_default();
        parts.push(piece.to_owned());
        if i < n {
            return;
        }
        let joined = parts.concat();
        store.partial.remove(&key);
        joined
    } else {
        body.to_owned()
    };
    if let Ok(json @ Value::Object(_)) = serde_json::from_str::<Value>(&body) {
        store.events.push(LogEvent {
            raw: line,
            facility: pri >> 3,
            severity: pri & 7,
            ident,
            pid,
            json,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_split_lines() {
        let mut s = Store::default();
        ingest(
            &mut s,
            r#"<86>porthole-keys[42]: {"event":"keys.decision","outcome":"accepted"}"#.into(),
        );
        ingest(
            &mut s,
            r#"<83>porthole-keys[43]: [part 1/2] {"event":"x","#.into(),
        );
        ingest(&mut s, r#"<83>porthole-keys[43]: [part 2/2] "a":1}"#.into());
        ingest(&mut s, "<86>other[1]: not json".into());
        assert_eq!(s.events.len(), 2);
        assert_eq!(s.events[0].severity, 6);
        assert_eq!(s.events[0].facility, 10);
        assert!(s.events[0].is("keys.decision", &[("outcome", "accepted")]));
        assert_eq!(s.events[1].u64("a"), Some(1));
        assert_eq!(s.events[1].severity, 3);
        assert_eq!(s.lines.len(), 4);
    }
}
