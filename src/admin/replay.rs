//! `porthole replay` and `porthole sessions --history`: reading the
//! recordings the session shell wrote (src/session/record.rs).
//!
//! A recording holds what a tenant's processes printed: hostile input for
//! root's terminal. It is read line by line with a cap on each line (no
//! line of any size is held in memory), every line must be JSON of the
//! asciicast v2 shape or replay stops there with the line's number, and
//! what is played goes through [`TerminalFilter`]: the sequences that make
//! a terminal answer as if typed (status and attribute reports, window
//! reports), set its title or clipboard, or start device-control strings
//! are dropped; colours and cursor movement pass. (`asciinema play` shows a
//! recording unfiltered, for a trusted one.)

use serde_json::Value;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest line read from a recording. The writer produces lines of at
/// most a 64 KiB read, JSON-escaped (6 bytes per byte at worst).
pub const MAX_LINE: usize = 1024 * 1024;

/// Why a recording cannot be played or listed. All for the admin: the CLI
/// prints the message and exits non-zero.
#[derive(Debug)]
pub enum ReplayError {
    /// Not a session id (16 hex digits): nothing was opened.
    BadId(String),
    /// The file cannot be opened or read.
    Io { path: PathBuf, err: std::io::Error },
    /// The first line is not an asciicast v2 header.
    BadHeader(String),
    /// Line `line` is longer than [`MAX_LINE`]: replay stops there.
    LineTooLong { line: usize },
    /// Line `line` is not an asciicast event (truncated file, not JSON,
    /// wrong shape): replay stops there.
    BadEvent { line: usize, why: String },
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::BadId(id) => {
                write!(f, "{id:?} is not a session id (16 hex digits, from `porthole sessions --history`)")
            }
            ReplayError::Io { path, err } => write!(f, "cannot read {}: {err}", path.display()),
            ReplayError::BadHeader(why) => write!(f, "not an asciicast v2 recording: {why}"),
            ReplayError::LineTooLong { line } => {
                write!(
                    f,
                    "line {line} is longer than {MAX_LINE} bytes; the recording is damaged"
                )
            }
            ReplayError::BadEvent { line, why } => {
                write!(f, "line {line} is not a recording event ({why}); the recording is damaged or was cut short")
            }
        }
    }
}

impl std::error::Error for ReplayError {}

/// The recording of session `id` under `dir`.
pub fn path_of(dir: &Path, id: &str) -> Result<PathBuf, ReplayError> {
    let name = format!("{id}{}", crate::session::record::SUFFIX);
    if !crate::session::record::is_recording_name(&name) {
        return Err(ReplayError::BadId(id.to_owned()));
    }
    Ok(dir.join(name))
}

/// Opens a recording without following a symlink.
pub fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>, ReplayError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map(|f| std::io::BufReader::with_capacity(256 * 1024, f))
        .map_err(|err| ReplayError::Io {
            path: path.to_owned(),
            err,
        })
}

/// One line, at most [`MAX_LINE`] bytes; None at the end of the file.
fn read_line(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    line: usize,
) -> Result<Option<()>, ReplayError> {
    buf.clear();
    let n = std::io::Read::take(&mut *r, MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(|e| ReplayError::BadEvent {
            line,
            why: e.to_string(),
        })?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(ReplayError::LineTooLong { line });
    }
    Ok(Some(()))
}

/// The parts of a header replay and the history use.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub width: u64,
    pub height: u64,
    pub timestamp: Option<i64>,
    /// The `porthole` object (session id, owner, instance, …), if any.
    pub porthole: Value,
}

/// Parses the header line.
pub fn parse_header(line: &[u8]) -> Result<Header, ReplayError> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| ReplayError::BadHeader(format!("the first line is not JSON ({e})")))?;
    if v.get("version").and_then(Value::as_u64) != Some(2) {
        return Err(ReplayError::BadHeader("version is not 2".into()));
    }
    let dim = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ReplayError::BadHeader(format!("no valid {k}")))
    };
    Ok(Header {
        width: dim("width")?,
        height: dim("height")?,
        timestamp: v.get("timestamp").and_then(Value::as_i64),
        porthole: v.get("porthole").cloned().unwrap_or(Value::Null),
    })
}

/// One event line: time, code, data.
pub fn parse_event(line: &[u8], n: usize) -> Result<(f64, String, String), ReplayError> {
    let bad = |why: String| ReplayError::BadEvent { line: n, why };
    let v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Some([t, code, data]) = v.as_array().map(Vec::as_slice) else {
        return Err(bad("not a 3-element array".into()));
    };
    let t = t
        .as_f64()
        .filter(|t| t.is_finite() && *t >= 0.0)
        .ok_or_else(|| bad("bad time".into()))?;
    let (Some(code), Some(data)) = (code.as_str(), data.as_str()) else {
        return Err(bad("code and data must be strings".into()));
    };
    Ok((t, code.to_owned(), data.to_owned()))
}

/// How to play.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// 2.0 plays twice as fast.
    pub speed: f64,
    /// Longer pauses are shortened to this.
    pub idle_limit: Option<f64>,
    /// Sleep between events (false: print at once, for tests and pipes).
    pub sleep: bool,
}

/// Plays the recording from `r` to `out`: output events at their pace,
/// filtered for the terminal. Returns the number of output events played.
pub fn play(r: &mut impl BufRead, out: &mut impl Write, pace: Pace) -> Result<u64, ReplayError> {
    let io = |err: std::io::Error| ReplayError::Io {
        path: PathBuf::from("(output)"),
        err,
    };
    let mut buf = Vec::new();
    if read_line(r, &mut buf, 1)?.is_none() {
        return Err(ReplayError::BadHeader("the file is empty".into()));
    }
    parse_header(&buf)?;
    let mut filter = TerminalFilter::default();
    let (mut prev, mut played, mut n) = (0.0f64, 0u64, 1usize);
    loop {
        n += 1;
        if read_line(r, &mut buf, n)?.is_none() {
            break;
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (t, code, data) = parse_event(&buf, n)?;
        if code != "o" {
            continue;
        }
        let mut wait = (t - prev).max(0.0);
        if let Some(limit) = pace.idle_limit {
            wait = wait.min(limit);
        }
        prev = t;
        if pace.sleep && wait > 0.0 {
            out.flush().map_err(io)?;
            std::thread::sleep(Duration::from_secs_f64((wait / pace.speed).min(3600.0)));
        }
        out.write_all(filter.filter(&data).as_bytes()).map_err(io)?;
        played += 1;
    }
    out.flush().map_err(io)?;
    Ok(played)
}

/// Drops what would act on the admin's terminal beyond drawing: OSC
/// (titles, clipboard, colours), DCS/APC/PM/SOS strings, C1 controls,
/// `ESC Z`, and the CSI sequences a terminal answers (device status and
/// attributes `n`/`c`, window reports `t`, `x`, mode requests with `$`).
/// Keeps state across events: a sequence may be split between two.
#[derive(Debug, Default)]
pub struct TerminalFilter {
    state: FState,
    csi: String,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum FState {
    #[default]
    Text,
    Esc,
    Csi,
    /// Inside a string sequence; `true` after its ESC (maybe the ST).
    Str(bool),
}

impl TerminalFilter {
    pub fn filter(&mut self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            match self.state {
                FState::Text => match c {
                    '\u{1b}' => self.state = FState::Esc,
                    '\u{80}'..='\u{9f}' => {}
                    c => out.push(c),
                },
                FState::Esc => match c {
                    '[' => {
                        self.csi.clear();
                        self.state = FState::Csi;
                    }
                    ']' | 'P' | '_' | '^' | 'X' => self.state = FState::Str(false),
                    'Z' => self.state = FState::Text,
                    c => {
                        out.push('\u{1b}');
                        out.push(c);
                        self.state = FState::Text;
                    }
                },
                FState::Csi => {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        let answers = matches!(c, 'n' | 'c' | 't' | 'x') || self.csi.contains('$');
                        if !answers {
                            out.push_str("\u{1b}[");
                            out.push_str(&self.csi);
                            out.push(c);
                        }
                        self.state = FState::Text;
                    } else if ('\u{20}'..='\u{3f}').contains(&c) && self.csi.len() < 64 {
                        self.csi.push(c);
                    } else {
                        // Not a well-formed CSI: drop it.
                        self.state = FState::Text;
                    }
                }
                FState::Str(after_esc) => match c {
                    '\u{7}' => self.state = FState::Text,
                    '\\' if after_esc => self.state = FState::Text,
                    '\u{1b}' => self.state = FState::Str(true),
                    _ => self.state = FState::Str(false),
                },
            }
        }
        out
    }
}

/// One recorded session, for `porthole sessions --history`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryEntry {
    pub session_id: String,
    pub owner: String,
    pub instance: String,
    pub command: String,
    pub mode: String,
    /// Unix time the session started.
    pub start: Option<i64>,
    /// Seconds from the start to the last line.
    pub duration_secs: f64,
    /// From the end line; "unfinished" without one (still running, or the
    /// supervisor died).
    pub end_reason: String,
    pub bytes: u64,
}

/// The recordings under `dir`, oldest first. Files that are not
/// recordings, or whose header does not parse, are left out.
pub fn history(dir: &Path) -> Result<Vec<HistoryEntry>, ReplayError> {
    let entries = std::fs::read_dir(dir).map_err(|err| ReplayError::Io {
        path: dir.to_owned(),
        err,
    })?;
    let mut out: Vec<HistoryEntry> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            if !crate::session::record::is_recording_name(&name) {
                return None;
            }
            summarize(&e.path(), &name).ok()
        })
        .collect();
    out.sort_by(|a, b| a.start.cmp(&b.start).then(a.session_id.cmp(&b.session_id)));
    Ok(out)
}

/// Header and last line of one recording.
fn summarize(path: &Path, name: &str) -> Result<HistoryEntry, ReplayError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut r = open(path)?;
    let mut buf = Vec::new();
    read_line(&mut r, &mut buf, 1)?;
    let header = parse_header(&buf)?;
    let command = serde_json::from_slice::<Value>(&buf)
        .ok()
        .and_then(|v| v.get("command").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let f = r.get_mut();
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // A finished recording ends with its short end line: the last 64 KiB
    // hold it (a longer last line is an unfinished recording's output).
    const TAIL: u64 = 64 * 1024;
    let from = len.saturating_sub(TAIL);
    let mut tail = Vec::new();
    let _ = f
        .seek(SeekFrom::Start(from))
        .and_then(|_| f.take(TAIL).read_to_end(&mut tail));
    let last = tail
        .split(|b| *b == b'\n')
        .rev()
        .find(|l| !l.is_empty())
        .and_then(|l| parse_event(l, 0).ok());
    let (duration_secs, end_reason) = match &last {
        Some((t, code, data)) => {
            let reason = (code == "m")
                .then(|| data.strip_prefix(crate::session::record::END_PREFIX))
                .flatten()
                .and_then(|j| serde_json::from_str::<Value>(j).ok())
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned));
            (*t, reason.unwrap_or_else(|| "unfinished".into()))
        }
        None => (0.0, "unfinished".into()),
    };
    let p = &header.porthole;
    let field = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    Ok(HistoryEntry {
        session_id: name
            .strip_suffix(crate::session::record::SUFFIX)
            .unwrap_or(name)
            .to_owned(),
        owner: field("owner"),
        instance: field("instance"),
        command,
        mode: field("mode"),
        start: header.timestamp,
        duration_secs,
        end_reason,
        bytes: len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<String, ReplayError> {
        let mut out = Vec::new();
        play(
            &mut std::io::Cursor::new(text.as_bytes().to_vec()),
            &mut out,
            Pace {
                speed: 1.0,
                idle_limit: None,
                sleep: false,
            },
        )?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn plays_output_events_only() {
        let cast = "{\"version\":2,\"width\":80,\"height\":24}\n[0.1, \"o\", \"a\"]\n[0.2, \"i\", \"x\"]\n[0.3, \"r\", \"90x30\"]\n[0.4, \"o\", \"b\\r\\n\"]\n[0.5, \"m\", \"porthole.end {}\"]\n";
        assert_eq!(run(cast).unwrap(), "ab\r\n");
    }

    #[test]
    fn damaged_recordings_are_named_errors() {
        assert!(matches!(run(""), Err(ReplayError::BadHeader(_))));
        assert!(matches!(
            run("{\"version\":1,\"width\":80,\"height\":24}\n"),
            Err(ReplayError::BadHeader(_))
        ));
        let h = "{\"version\":2,\"width\":80,\"height\":24}\n";
        assert!(matches!(
            run(&format!("{h}[0.1, \"o\", \"a")),
            Err(ReplayError::BadEvent { line: 2, .. })
        ));
        assert!(matches!(
            run(&format!("{h}[0.1, \"o\"]\n")),
            Err(ReplayError::BadEvent { line: 2, .. })
        ));
        assert!(matches!(
            run(&format!("{h}[-1, \"o\", \"a\"]\n")),
            Err(ReplayError::BadEvent { .. })
        ));
        let huge = format!("{h}[0.1, \"o\", \"{}\"]\n", "a".repeat(MAX_LINE + 10));
        assert!(matches!(
            run(&huge),
            Err(ReplayError::LineTooLong { line: 2 })
        ));
    }

    #[test]
    fn filter_keeps_drawing_and_drops_answers_titles_and_strings() {
        let mut f = TerminalFilter::default();
        assert_eq!(
            f.filter("\u{1b}[1;31mred\u{1b}[0m\u{1b}[2J\u{1b}[H"),
            "\u{1b}[1;31mred\u{1b}[0m\u{1b}[2J\u{1b}[H"
        );
        assert_eq!(
            f.filter("a\u{1b}[6nb\u{1b}[cc\u{1b}[21td\u{1b}[?1$pe"),
            "abcde"
        );
        assert_eq!(
            f.filter("t\u{1b}]0;title\u{7}u\u{1b}]52;c;ZXZpbA==\u{1b}\\v"),
            "tuv"
        );
        assert_eq!(f.filter("\u{1b}P$q\"p\u{1b}\\w\u{9b}6n\u{1b}Zx"), "w6nx");
        // Split across events.
        assert_eq!(f.filter("a\u{1b}]0;ti"), "a");
        assert_eq!(f.filter("tle\u{7}b\u{1b}["), "b");
        assert_eq!(f.filter("1mc"), "\u{1b}[1mc");
    }
}
