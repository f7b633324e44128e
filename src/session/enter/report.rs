//! What the children tell the supervisor over the status pipe, typed: the
//! inner child's pid once it exists, or which step failed and why.
//!
//! Written by the two children (root, before exec: the pipe is
//! close-on-exec, so nothing the container runs can write to it) and read
//! by the setuid shell on the host side. The reader still decodes strictly
//! and treats anything malformed as a failure, never as a pid.
//!
//! One frame per report, each written with a single `write` of at most
//! [`MAX_FRAME`] bytes (under `PIPE_BUF`, so frames of the two children
//! never interleave): `kind: u8`, `len: u16` little-endian, `len` bytes:
//! - `Started`: kind 1, `pid: i32` LE (> 0);
//! - `Failed`: kind 2, `step: u8` (see [`Step::code`]), `errno: i32` LE
//!   (0 when the failure is not an OS error), then UTF-8 text.

#![forbid(unsafe_code)]

use super::steps::Step;

/// Longest frame: well under `PIPE_BUF` (4096), so one write is atomic.
pub const MAX_FRAME: usize = 1024;
const HEADER: usize = 3;
const STARTED: u8 = 1;
const FAILED: u8 = 2;

/// One message of a child to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildReport {
    /// The inner child exists (host pid); sent by the outer child.
    Started { pid: i32 },
    /// A step failed; the child exits after sending this.
    Failed(ChildError),
}

/// A failed step of a child: which, the OS error if there was one, and
/// the sentence the user sees (the same sentences as ever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildError {
    pub step: Step,
    /// What was being done ("setuid", "cannot run /bin/sh", …).
    pub what: String,
    /// The errno, when the kernel refused.
    pub errno: Option<i32>,
}

impl ChildError {
    /// A failure that is not an OS error.
    pub fn new(step: Step, what: impl Into<String>) -> ChildError {
        ChildError {
            step,
            what: what.into(),
            errno: None,
        }
    }

    /// A failure with its `io::Error`: the errno when it is an OS error,
    /// else its text folded into `what`.
    pub fn io(step: Step, what: impl Into<String>, e: &std::io::Error) -> ChildError {
        let what = what.into();
        match e.raw_os_error() {
            Some(n) if n != 0 => ChildError {
                step,
                what,
                errno: Some(n),
            },
            _ => ChildError::new(step, format!("{what}: {e}")),
        }
    }

    /// The instance's init was gone when we tried to join it.
    pub fn is_vanished(&self) -> bool {
        self.step == Step::SetNs && self.errno == Some(libc::ESRCH)
    }
}

impl std::fmt::Display for ChildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.errno {
            Some(n) => write!(f, "{}: {}", self.what, std::io::Error::from_raw_os_error(n)),
            None => f.write_str(&self.what),
        }
    }
}

impl std::error::Error for ChildError {}

/// Why a byte stream is not a sequence of reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl ChildReport {
    /// The frame for this report, at most [`MAX_FRAME`] bytes (a long text
    /// is cut at a character boundary).
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body) = match self {
            ChildReport::Started { pid } => (STARTED, pid.to_le_bytes().to_vec()),
            ChildReport::Failed(e) => {
                let mut b = Vec::with_capacity(MAX_FRAME);
                b.push(e.step.code());
                b.extend_from_slice(&e.errno.unwrap_or(0).to_le_bytes());
                let room = MAX_FRAME - HEADER - b.len();
                let mut end = e.what.len().min(room);
                while !e.what.is_char_boundary(end) {
                    end -= 1;
                }
                b.extend_from_slice(&e.what.as_bytes()[..end]);
                (FAILED, b)
            }
        };
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.push(kind);
        // body.len() <= MAX_FRAME - HEADER, which fits in u16.
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Every report in `bytes`, which must be whole frames and nothing else.
    pub fn decode_all(mut bytes: &[u8]) -> Result<Vec<ChildReport>, Malformed> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let [kind, l0, l1, rest @ ..] = bytes else {
                return Err(Malformed("truncated header"));
            };
            let len = usize::from(u16::from_le_bytes([*l0, *l1]));
            if len > MAX_FRAME - HEADER || len > rest.len() {
                return Err(Malformed("bad length"));
            }
            let (body, next) = rest.split_at(len);
            out.push(Self::decode_body(*kind, body)?);
            bytes = next;
        }
        Ok(out)
    }

    fn decode_body(kind: u8, body: &[u8]) -> Result<ChildReport, Malformed> {
        match (kind, body) {
            (STARTED, [a, b, c, d]) => {
                let pid = i32::from_le_bytes([*a, *b, *c, *d]);
                if pid <= 0 {
                    return Err(Malformed("pid not positive"));
                }
                Ok(ChildReport::Started { pid })
            }
            (STARTED, _) => Err(Malformed("bad length")),
            (FAILED, [step, a, b, c, d, text @ ..]) => {
                let step = Step::from_code(*step).ok_or(Malformed("unknown step"))?;
                let errno = match i32::from_le_bytes([*a, *b, *c, *d]) {
                    0 => None,
                    n if n > 0 => Some(n),
                    _ => return Err(Malformed("negative errno")),
                };
                let what = std::str::from_utf8(text)
                    .map_err(|_| Malformed("text not UTF-8"))?
                    .to_owned();
                Ok(ChildReport::Failed(ChildError { step, what, errno }))
            }
            (FAILED, _) => Err(Malformed("bad length")),
            _ => Err(Malformed("unknown kind")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(step: Step, what: &str, errno: Option<i32>) -> ChildReport {
        ChildReport::Failed(ChildError {
            step,
            what: what.into(),
            errno,
        })
    }

    #[test]
    fn reports_round_trip_one_after_another() {
        let reports = vec![
            ChildReport::Started { pid: 4242 },
            failed(Step::SetUid, "setuid", Some(libc::EPERM)),
            failed(Step::CheckParent, "supervisor gone", None),
            failed(
                Step::Exec,
                "cannot run /bin/zsh – ünïcode",
                Some(libc::ENOENT),
            ),
        ];
        let bytes: Vec<u8> = reports.iter().flat_map(|r| r.encode()).collect();
        assert_eq!(ChildReport::decode_all(&bytes), Ok(reports));
        assert_eq!(ChildReport::decode_all(&[]), Ok(vec![]));
    }

    #[test]
    fn started_has_a_fixed_encoding() {
        assert_eq!(
            ChildReport::Started { pid: 0x0102_0304 }.encode(),
            vec![1, 4, 0, 4, 3, 2, 1]
        );
    }

    #[test]
    fn the_sentence_is_the_one_the_user_always_saw() {
        let e = ChildError::io(
            Step::SetUid,
            "setuid",
            &std::io::Error::from_raw_os_error(libc::EPERM),
        );
        assert_eq!(
            e.to_string(),
            format!("setuid: {}", std::io::Error::from_raw_os_error(libc::EPERM))
        );
        let e = ChildError::io(Step::Seccomp, "x", &std::io::Error::other("no"));
        assert_eq!((e.errno, e.to_string().as_str()), (None, "x: no"));
        assert_eq!(
            ChildError::new(Step::CheckCreds, "credentials did not change").to_string(),
            "credentials did not change"
        );
    }

    #[test]
    fn only_a_failed_setns_with_esrch_is_a_vanished_instance() {
        let esrch = std::io::Error::from_raw_os_error(libc::ESRCH);
        assert!(ChildError::io(Step::SetNs, "setns", &esrch).is_vanished());
        assert!(!ChildError::io(Step::Chroot, "chroot", &esrch).is_vanished());
        let eperm = std::io::Error::from_raw_os_error(libc::EPERM);
        assert!(!ChildError::io(Step::SetNs, "setns", &eperm).is_vanished());
    }

    #[test]
    fn long_texts_are_cut_to_one_atomic_frame_at_a_char_boundary() {
        let what = "é".repeat(4000);
        let bytes = failed(Step::Exec, &what, None).encode();
        assert!(bytes.len() <= MAX_FRAME);
        match ChildReport::decode_all(&bytes).as_deref() {
            Ok([ChildReport::Failed(e)]) => assert!(what.starts_with(&e.what)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_streams_are_refused() {
        let good = ChildReport::Started { pid: 7 }.encode();
        let mut cases: Vec<Vec<u8>> = vec![
            vec![1],                                   // truncated header
            vec![1, 4, 0, 7, 0, 0],                    // truncated body
            vec![1, 3, 0, 7, 0, 0],                    // Started of the wrong size
            vec![1, 4, 0, 0, 0, 0, 0],                 // pid 0
            vec![1, 4, 0, 0xff, 0xff, 0xff, 0xff],     // pid -1
            vec![3, 0, 0],                             // unknown kind
            vec![2, 4, 0, 18, 1, 0, 0],                // Failed too short
            vec![2, 5, 0, 99, 1, 0, 0, 0],             // unknown step
            vec![2, 5, 0, 18, 0xff, 0xff, 0xff, 0xff], // negative errno
            vec![2, 6, 0, 18, 1, 0, 0, 0, 0xff],       // text not UTF-8
            vec![1, 0xff, 0xff],                       // length beyond a frame
        ];
        let mut trailing = good.clone();
        trailing.push(1);
        cases.push(trailing);
        for c in cases {
            assert!(ChildReport::decode_all(&c).is_err(), "{c:?}");
        }
        assert!(ChildReport::decode_all(&good).is_ok());
    }
}
