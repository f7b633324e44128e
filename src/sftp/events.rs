//! The audit lines porthole-sftp writes, one per file changed, to the pipe
//! the supervisor reads (`--events-fd`).
//!
//! The format is strict and small: `write <bytes> <hex path>`,
//! `remove <hex path>`, `rename <hex from> <hex to>`, each ending in `\n`.
//! Paths are hex so any byte (spaces, newlines) survives; each is capped at
//! [`MAX_PATH`] bytes. The writer is inside the instance, so the reader
//! ([`relay`]) parses nothing it has not bounded: lines over [`MAX_LINE`]
//! and anything malformed are counted and skipped, and after
//! [`MAX_EVENTS`] events per session the rest are only counted.

use std::io::Read;

/// Longest path a record carries (longer ones are cut, marked by `cut`).
pub const MAX_PATH: usize = 4096;
/// Longest line the reader accepts (two hex paths plus the words).
pub const MAX_LINE: usize = 4 * MAX_PATH + 64;
/// Events logged per session; more are counted, not logged.
pub const MAX_EVENTS: u64 = 100_000;

/// One file changed by the SFTP session, as porthole-sftp reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEvent {
    /// A file handle opened for writing was closed after `bytes` written.
    Write { path: String, bytes: u64 },
    /// A file or directory was removed.
    Remove { path: String },
    /// A file or directory was renamed.
    Rename { from: String, to: String },
}

fn hex(s: &str) -> String {
    let b = s.as_bytes();
    let b = &b[..b.len().min(MAX_PATH)];
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 || s.len() > 2 * MAX_PATH {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

impl FileEvent {
    /// The syslog event name (`sftp.write`, `sftp.remove`, `sftp.rename`).
    pub fn name(&self) -> &'static str {
        match self {
            FileEvent::Write { .. } => "sftp.write",
            FileEvent::Remove { .. } => "sftp.remove",
            FileEvent::Rename { .. } => "sftp.rename",
        }
    }

    /// The line, with its newline.
    pub fn encode(&self) -> String {
        match self {
            FileEvent::Write { path, bytes } => format!("write {bytes} {}\n", hex(path)),
            FileEvent::Remove { path } => format!("remove {}\n", hex(path)),
            FileEvent::Rename { from, to } => format!("rename {} {}\n", hex(from), hex(to)),
        }
    }

    /// Parses one line (without its newline); None unless exactly valid.
    pub fn decode(line: &[u8]) -> Option<FileEvent> {
        if line.len() > MAX_LINE {
            return None;
        }
        let line = std::str::from_utf8(line).ok()?;
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["write", bytes, path] if bytes.bytes().all(|b| b.is_ascii_digit()) => {
                Some(FileEvent::Write {
                    bytes: bytes.parse().ok()?,
                    path: unhex(path)?,
                })
            }
            ["remove", path] => Some(FileEvent::Remove { path: unhex(path)? }),
            ["rename", from, to] => Some(FileEvent::Rename {
                from: unhex(from)?,
                to: unhex(to)?,
            }),
            _ => None,
        }
    }
}

/// What [`relay`] could not pass on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// Lines that were too long or did not parse.
    pub malformed: u64,
    /// Valid events past [`MAX_EVENTS`].
    pub over_limit: u64,
}

/// Reads event lines from `src` until EOF (or a read error), handing each
/// valid one to `emit`, at most [`MAX_EVENTS`] of them. Memory is bounded
/// by [`MAX_LINE`] whatever the writer sends.
pub fn relay(mut src: impl Read, mut emit: impl FnMut(FileEvent)) -> Skipped {
    let mut skipped = Skipped::default();
    let mut emitted = 0u64;
    let mut line: Vec<u8> = Vec::new();
    // Inside an overlong line: drop bytes until its newline.
    let mut discarding = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in &buf[..n] {
            if b != b'\n' {
                if !discarding {
                    line.push(b);
                    if line.len() > MAX_LINE {
                        line.clear();
                        discarding = true;
                        skipped.malformed += 1;
                    }
                }
                continue;
            }
            if discarding {
                discarding = false;
                continue;
            }
            match FileEvent::decode(&line) {
                Some(e) if emitted < MAX_EVENTS => {
                    emitted += 1;
                    emit(e);
                }
                Some(_) => skipped.over_limit += 1,
                None => skipped.malformed += 1,
            }
            line.clear();
        }
    }
    if !line.is_empty() && !discarding {
        // A last line without its newline: the writer died mid-record.
        skipped.malformed += 1;
    }
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_any_byte_in_paths() {
        let evs = [
            FileEvent::Write {
                path: "/tmp/a b\nc".into(),
                bytes: 12345,
            },
            FileEvent::Remove { path: "/x".into() },
            FileEvent::Rename {
                from: "/a".into(),
                to: "/é".into(),
            },
        ];
        let text: String = evs.iter().map(FileEvent::encode).collect();
        let mut got = Vec::new();
        let skipped = relay(text.as_bytes(), |e| got.push(e));
        assert_eq!(got, evs);
        assert_eq!(skipped, Skipped::default());
    }

    #[test]
    fn hostile_lines_are_counted_and_skipped() {
        let mut input = Vec::new();
        input.extend_from_slice(b"write -1 2f61\n");
        input.extend_from_slice(b"write 1 2f6\n");
        input.extend_from_slice(b"remove zz\n");
        input.extend_from_slice(b"launch 2f61\n");
        input.extend_from_slice(b"remove 2f61 extra\n");
        input.extend(std::iter::repeat(b'a').take(MAX_LINE * 3));
        input.extend_from_slice(b"\nremove 2f61\nremove 2f");
        let mut got = Vec::new();
        let skipped = relay(&input[..], |e| got.push(e));
        assert_eq!(got, vec![FileEvent::Remove { path: "/a".into() }]);
        assert_eq!(skipped.malformed, 7);
    }

    #[test]
    fn long_paths_are_cut_not_refused() {
        let long = "x".repeat(MAX_PATH * 2);
        let line = FileEvent::Remove { path: long }.encode();
        let e = FileEvent::decode(line.trim_end().as_bytes()).unwrap();
        assert_eq!(
            e,
            FileEvent::Remove {
                path: "x".repeat(MAX_PATH)
            }
        );
    }
}
