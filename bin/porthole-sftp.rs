//! porthole-sftp: the SFTP server porthole runs inside an instance for the
//! `sftp` subsystem (issue 17). Not setuid, not run by hand: the session
//! shell executes it from a sealed memfd copy, inside the instance, as the
//! container user, with the client's channel on stdin/stdout and, with
//! `--events-fd N`, a pipe for the per-file audit lines (src/sftp/events.rs).
//! A static executable (build.rs), so images without a libc can run it.

use std::os::fd::{FromRawFd, RawFd};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut events: Option<std::fs::File> = None;
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--events-fd", Some(n)) => {
                let Ok(fd) = n.parse::<RawFd>() else {
                    eprintln!("porthole-sftp: --events-fd takes a number");
                    std::process::exit(2);
                };
                // Only a pipe (or nothing) is taken: the flag comes from the
                // session shell, which passes the write end it made.
                // SAFETY: all-zero is a valid `stat` (integers only).
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: fstat on an integer fd with a pointer to a live,
                // writable local struct.
                let fstat_ok = fd > 2 && unsafe { libc::fstat(fd, &mut st) } == 0;
                if fstat_ok && st.st_mode & libc::S_IFMT == libc::S_IFIFO {
                    // SAFETY: the fd is open (fstat succeeded) and nothing
                    // else in this process owns it.
                    events = Some(unsafe { std::fs::File::from_raw_fd(fd) });
                }
            }
            _ => {
                eprintln!("porthole-sftp: usage: porthole-sftp [--events-fd N]");
                std::process::exit(2);
            }
        }
    }
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    match porthole::sftp::server::serve(stdin, stdout, events) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("porthole-sftp: {e}");
            std::process::exit(1);
        }
    }
}
