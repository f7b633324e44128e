//! porthole-picker: the menu of `ssh srv@host` (issue 20). Never setuid:
//! the session shell runs it as the session account, with the client's
//! terminal on stdin/stdout/stderr, the menu's data (JSON) on fd 3 and a
//! pipe on fd 4 for the one choice line. It holds no privilege and the
//! shell checks its answer again; this program only draws and reads keys.

use porthole::picker::menu::{self, Action, Menu};
use porthole::picker::{self, Choice, MenuInput, Mode};
use std::io::{BufRead, Read, Write};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest menu input read from fd 3.
const MAX_INPUT: u64 = 8 * 1024 * 1024;

static RESIZED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_winch(_: libc::c_int) {
    RESIZED.store(true, Ordering::SeqCst);
}

fn main() {
    // Other processes of the session account (every service's picker runs
    // as it) may not ptrace or read this one.
    // SAFETY: a process-wide flag with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let args: Vec<String> = std::env::args().collect();
    let parsed = match args.as_slice() {
        [_, flag, m] if flag == "--mode" => Mode::parse(m).map(|m| (m, 0)),
        [_, flag, m, idle, secs] if flag == "--mode" && idle == "--idle-secs" => {
            Mode::parse(m).zip(secs.parse::<u64>().ok())
        }
        _ => None,
    };
    let Some((mode, idle_secs)) = parsed else {
        eprintln!(
            "usage: porthole-picker --mode menu|dumb|table|json [--idle-secs N] (run by porthole-shell)"
        );
        std::process::exit(2);
    };
    // SAFETY: fd 3 is the input the session shell set up for us; nothing
    // else in this process owns it.
    let input_file = unsafe { std::fs::File::from_raw_fd(picker::INPUT_FD) };
    let mut text = Vec::new();
    if input_file.take(MAX_INPUT).read_to_end(&mut text).is_err() {
        eprintln!("porthole: the menu could not be read");
        std::process::exit(1);
    }
    let input: MenuInput = match serde_json::from_slice(&text) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("porthole: the menu could not be read: {e}");
            std::process::exit(1);
        }
    };
    let choice = match mode {
        Mode::Table => {
            say(&picker::table(&input));
            None
        }
        Mode::Json => {
            let text = serde_json::to_string_pretty(&picker::json(&input)).unwrap_or_default();
            say(&format!("{text}\n"));
            None
        }
        Mode::Dumb => dumb(&input),
        Mode::Menu => run_menu(&input, idle_secs),
    };
    let _ = std::io::stdout().flush();
    if let Some(c) = choice {
        // SAFETY: fd 4 is the choice pipe the session shell set up for us.
        let mut out = unsafe { std::fs::File::from_raw_fd(picker::CHOICE_FD) };
        if out.write_all(c.line().as_bytes()).is_err() {
            std::process::exit(1);
        }
    }
}

/// Writes to stdout; a client that went away (EPIPE) is not an error
/// worth more than ending quietly (`print!` would panic).
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(1);
    }
}

/// `TERM=dumb`: numbers typed on a line.
fn dumb(input: &MenuInput) -> Option<Choice> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    let mut ask = |prompt: &str| -> Option<String> {
        say(prompt);
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) if line.trim().eq_ignore_ascii_case("q") => None,
            Ok(_) => Some(line),
        }
    };
    let service = loop {
        let line = ask(&menu::dumb_services(input))?;
        match menu::dumb_answer(&line, input.services.len()).and_then(|i| input.services.get(i)) {
            Some(s) if s.selectable => break s,
            Some(s) => say(&format!(
                "{}\n",
                picker::escape(s.reason.as_deref().unwrap_or("no SSH"), 300)
            )),
            None => say("Type one of the numbers, or q.\n"),
        }
    };
    let id = porthole::names::ServiceId::parse(&service.id)?;
    loop {
        let line = ask(&menu::dumb_instances(service))?;
        match menu::dumb_answer(&line, service.instances.len() + 1) {
            Some(0) => {
                return Some(Choice {
                    service: id,
                    slug: None,
                })
            }
            Some(i) => {
                return Some(Choice {
                    service: id,
                    slug: service.instances.get(i - 1).cloned(),
                })
            }
            None => say("Type one of the numbers, or q.\n"),
        }
    }
}

fn window_size() -> (u16, u16) {
    // SAFETY: TIOCGWINSZ writes one winsize into a valid local.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above; fd 1 is our terminal (or the call fails).
    let rc = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
        (ws.ws_row, ws.ws_col)
    } else {
        (24, 80)
    }
}

/// Puts the terminal back as it was, whatever way the menu ends.
struct Restore(Option<nix::sys::termios::Termios>);

impl Drop for Restore {
    fn drop(&mut self) {
        let mut out = std::io::stdout();
        let _ = out.write_all(b"\x1b[0m\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// Arrow keys and Enter; redrawn on every key and on SIGWINCH. Left
/// alone for `idle_secs` (0: never), it leaves like `q`.
fn run_menu(input: &MenuInput, idle_secs: u64) -> Option<Choice> {
    let choice = menu_loop(input, idle_secs);
    if let Err(secs) = choice {
        eprintln!("porthole: the menu was left alone for {secs} s; closing it");
        return None;
    }
    choice.ok().flatten()
}

fn menu_loop(input: &MenuInput, idle_secs: u64) -> Result<Option<Choice>, u64> {
    use nix::sys::termios;
    let saved = termios::tcgetattr(std::io::stdin()).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(std::io::stdin(), termios::SetArg::TCSANOW, &raw);
    }
    let _restore = Restore(saved);
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_winch),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    let _ = unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGWINCH, &action) };
    let mut out = std::io::stdout();
    let _ = out.write_all(b"\x1b[?1049h\x1b[?25l");
    let mut m = Menu::new(input);
    let mut size = window_size();
    let mut draw = |m: &Menu, size: (u16, u16)| {
        let _ = out.write_all(m.render(size.0, size.1).as_bytes());
        let _ = out.flush();
    };
    draw(&m, size);
    let mut buf = [0u8; 256];
    let mut last_key = std::time::Instant::now();
    loop {
        if idle_secs > 0 && last_key.elapsed().as_secs() >= idle_secs {
            return Err(idle_secs);
        }
        let mut fds = [libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll on one valid pollfd for at most 500 ms.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 500) };
        let now = window_size();
        if RESIZED.swap(false, Ordering::SeqCst) || now != size {
            size = now;
            draw(&m, size);
        }
        if ready <= 0 {
            continue;
        }
        let n = match std::io::stdin().read(&mut buf) {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => n,
        };
        last_key = std::time::Instant::now();
        for k in menu::parse_keys(buf.get(..n).unwrap_or_default()) {
            match m.key(k) {
                Action::Redraw => {}
                Action::Quit => return Ok(None),
                Action::Chosen(c) => return Ok(Some(c)),
            }
        }
        draw(&m, size);
    }
}
