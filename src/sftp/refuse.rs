//! Refusing an `sftp` session in the protocol, so the client shows why.
//!
//! A refused session (drained, limit reached, instance stopped, key not
//! listed...) ends with a sentence on stderr; an `sftp` or `scp` client
//! that only sees its server go away reports "Connection closed". So for
//! the sftp subsystem the setuid shell also plays a server that can do one
//! thing: answer the client's INIT with VERSION 3 (no extensions), then
//! every request with `SSH_FX_FAILURE` carrying the sentence, until the
//! client gives up. `sftp` prints it where it prints server errors
//! (`realpath .: porthole: ...`), and so does `scp` in SFTP mode.
//!
//! Hand-encoded on purpose (two packet types, a dozen lines): the setuid
//! shell must not link the protocol crate. The unit tests decode what it
//! writes with that crate (russh-sftp), so the bytes are checked against an
//! independent implementation. Bounded: at most [`MAX_REQUESTS`] packets,
//! each at most [`MAX_PACKET`] bytes, and [`DEADLINE`] in all.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::time::{Duration, Instant};

const SSH_FXP_INIT: u8 = 1;
const SSH_FXP_VERSION: u8 = 2;
const SSH_FXP_STATUS: u8 = 101;
const SSH_FX_FAILURE: u32 = 4;
/// Packets answered before the shell stops playing server.
pub const MAX_REQUESTS: usize = 16;
/// The largest packet read (the rest of a longer one ends the exchange).
pub const MAX_PACKET: usize = 256 * 1024;
/// The whole exchange, however slow the client.
pub const DEADLINE: Duration = Duration::from_secs(10);

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn framed(body: Vec<u8>) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// `SSH_FXP_VERSION` 3 without extensions.
pub fn version_packet() -> Vec<u8> {
    let mut body = vec![SSH_FXP_VERSION];
    body.extend_from_slice(&3u32.to_be_bytes());
    framed(body)
}

/// `SSH_FXP_STATUS` FAILURE for request `id` with `message` (UTF-8, "en").
pub fn failure_packet(id: u32, message: &str) -> Vec<u8> {
    let mut body = vec![SSH_FXP_STATUS];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&SSH_FX_FAILURE.to_be_bytes());
    put_string(&mut body, message.as_bytes());
    put_string(&mut body, b"en");
    framed(body)
}

/// The replies to the packets in `input` (complete ones only): VERSION for
/// INIT, the failure for anything with a request id. Pure, for the tests.
pub fn replies(input: &[u8], message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = input;
    for _ in 0..MAX_REQUESTS {
        let Some(len) = rest
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            break;
        };
        let len = len as usize;
        let Some(body) = rest.get(4..4 + len) else {
            break;
        };
        out.extend(reply(body, message));
        rest = &rest[4 + len..];
    }
    out
}

fn reply(body: &[u8], message: &str) -> Vec<u8> {
    match body.first() {
        Some(&SSH_FXP_INIT) => version_packet(),
        Some(_) if body.len() >= 5 => {
            let id = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
            failure_packet(id, message)
        }
        _ => failure_packet(0, message),
    }
}

/// Waits until `fd` is readable or `deadline` passes.
fn wait_readable(fd: RawFd, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, its count, a timeout; no memory is shared.
    let n = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
    n > 0
}

/// Plays the refusing server on `input_fd`/`output` (the shell's stdin and
/// stdout, sshd's channel): reads each packet whole and answers it, until
/// EOF, [`MAX_REQUESTS`], an oversized packet or [`DEADLINE`]. Errors end
/// it quietly: the sentence also went to stderr and syslog. The fd is read
/// unbuffered (each read follows a `poll` of it) and not closed.
pub fn answer(input_fd: RawFd, mut output: impl Write, message: &str) {
    // SAFETY: the caller lends us `input_fd` for the call; ManuallyDrop
    // keeps it open afterwards (we only read through it).
    let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(input_fd) });
    let mut input: &std::fs::File = &file;
    let deadline = Instant::now() + DEADLINE;
    let mut read_exact = |buf: &mut [u8]| -> bool {
        let mut got = 0;
        while got < buf.len() {
            if !wait_readable(input_fd, deadline) {
                return false;
            }
            match input.read(&mut buf[got..]) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got += n,
            }
        }
        true
    };
    for _ in 0..MAX_REQUESTS {
        let mut len = [0u8; 4];
        if !read_exact(&mut len) {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_PACKET {
            let _ = output.write_all(&failure_packet(0, message));
            let _ = output.flush();
            return;
        }
        let mut body = vec![0u8; len];
        if !read_exact(&mut body) {
            return;
        }
        if output.write_all(&reply(&body, message)).is_err() || output.flush().is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[cfg(feature = "sftp")]
mod tests {
    use super::*;
    use bytes::Bytes;
    use russh_sftp::protocol::{Packet, StatusCode};

    fn decode_all(mut b: &[u8]) -> Vec<Packet> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let mut body = Bytes::copy_from_slice(&b[4..4 + len]);
            out.push(Packet::try_from(&mut body).unwrap());
            b = &b[4 + len..];
        }
        out
    }

    #[test]
    fn the_refusal_decodes_with_an_independent_implementation() {
        // INIT version 3, then REALPATH id 7 ".", as OpenSSH's sftp sends.
        let mut input = framed(vec![1, 0, 0, 0, 3]);
        let mut rp = vec![16, 0, 0, 0, 7];
        put_string(&mut rp, b".");
        input.extend(framed(rp));
        let out = replies(&input, "porthole: drained");
        let packets = decode_all(&out);
        assert_eq!(packets.len(), 2);
        match &packets[0] {
            Packet::Version(v) => assert_eq!(v.version, 3),
            p => panic!("{p:?}"),
        }
        match &packets[1] {
            Packet::Status(s) => {
                assert_eq!(s.id, 7);
                assert_eq!(s.status_code, StatusCode::Failure);
                assert_eq!(s.error_message, "porthole: drained");
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn the_refusal_answers_over_pipes_and_stops_at_eof() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (r, mut w) = (std::fs::File::from(r), std::fs::File::from(w));
        let mut input = framed(vec![1, 0, 0, 0, 3]);
        input.extend(framed(vec![17, 0, 0, 0, 9, 0, 0, 0, 1, b'/']));
        w.write_all(&input).unwrap();
        drop(w);
        let mut out = Vec::new();
        use std::os::fd::AsRawFd;
        answer(r.as_raw_fd(), &mut out, "no");
        assert_eq!(decode_all(&out).len(), 2);
    }
}
