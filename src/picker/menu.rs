//! The menu as pure functions: keys in, a screen out. The picker binary
//! only reads the terminal, calls these and writes what they return, so
//! everything about what is shown and chosen is testable here.

use super::{escape, Choice, MenuInput, MenuService, ANY};
use crate::names::ServiceId;

/// A key the menu understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    Enter,
    /// Esc, Left, Backspace: back to the services.
    Back,
    /// `q` or Ctrl-C.
    Quit,
    Other,
}

/// Decodes what the terminal sent (raw mode) into keys. An escape
/// sequence cut at the end of `buf` is read as Esc (Back), which is
/// harmless.
pub fn parse_keys(buf: &[u8]) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut i = 0;
    while let Some(&b) = buf.get(i) {
        i += 1;
        let k = match b {
            b'\r' | b'\n' => Key::Enter,
            b'q' | b'Q' | 0x03 | 0x04 => Key::Quit,
            b'k' => Key::Up,
            b'j' => Key::Down,
            0x7f | 0x08 | b'h' => Key::Back,
            b'l' => Key::Enter,
            0x1b => match (buf.get(i), buf.get(i + 1)) {
                (Some(b'[' | b'O'), Some(c)) => {
                    i += 2;
                    match c {
                        b'A' => Key::Up,
                        b'B' => Key::Down,
                        b'C' => Key::Enter,
                        b'D' => Key::Back,
                        _ => {
                            // Skip the rest of a longer CSI sequence.
                            while let Some(c) = buf.get(i - 1) {
                                if (0x40..=0x7e).contains(c) {
                                    break;
                                }
                                i += 1;
                            }
                            Key::Other
                        }
                    }
                }
                _ => Key::Back,
            },
            _ => Key::Other,
        };
        keys.push(k);
    }
    keys
}

/// Where the menu is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Services,
    /// The instances of the service at this index.
    Instances(usize),
}

/// What a key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Redraw and read on.
    Redraw,
    Chosen(Choice),
    Quit,
}

/// The menu's state.
pub struct Menu<'a> {
    input: &'a MenuInput,
    level: Level,
    cursor: usize,
    /// A sentence under the list (why a service cannot be chosen).
    message: Option<String>,
}

impl<'a> Menu<'a> {
    pub fn new(input: &'a MenuInput) -> Menu<'a> {
        Menu {
            input,
            level: Level::Services,
            cursor: 0,
            message: None,
        }
    }

    fn entries(&self) -> usize {
        match self.level {
            Level::Services => self.input.services.len(),
            Level::Instances(i) => 1 + self.service(i).map_or(0, |s| s.instances.len()),
        }
    }

    fn service(&self, i: usize) -> Option<&'a MenuService> {
        self.input.services.get(i)
    }

    pub fn key(&mut self, k: Key) -> Action {
        let n = self.entries();
        match k {
            Key::Quit => return Action::Quit,
            Key::Up => {
                self.cursor = self.cursor.saturating_sub(1);
                self.message = None;
            }
            Key::Down => {
                if self.cursor + 1 < n {
                    self.cursor += 1;
                }
                self.message = None;
            }
            Key::Back => {
                if let Level::Instances(i) = self.level {
                    self.level = Level::Services;
                    self.cursor = i;
                }
                self.message = None;
            }
            Key::Enter => match self.level {
                Level::Services => {
                    let Some(s) = self.service(self.cursor) else {
                        return Action::Redraw;
                    };
                    if s.selectable {
                        self.level = Level::Instances(self.cursor);
                        self.cursor = 0;
                        self.message = None;
                    } else {
                        self.message = Some(
                            s.reason
                                .clone()
                                .unwrap_or_else(|| format!("{} has no SSH", s.id)),
                        );
                    }
                }
                Level::Instances(i) => {
                    let Some(s) = self.service(i) else {
                        return Action::Redraw;
                    };
                    let Some(service) = ServiceId::parse(&s.id) else {
                        return Action::Redraw;
                    };
                    let slug = match self.cursor {
                        0 => None,
                        c => s.instances.get(c - 1).cloned(),
                    };
                    return Action::Chosen(Choice { service, slug });
                }
            },
            Key::Other => {}
        }
        Action::Redraw
    }

    /// The whole screen for a terminal of `rows`×`cols`: ANSI text that
    /// clears and redraws, every line cut to `cols`.
    pub fn render(&self, rows: u16, cols: u16) -> String {
        let rows = usize::from(rows.max(6));
        let cols = usize::from(cols.max(20));
        let mut lines: Vec<(String, Style)> = Vec::new();
        let owner = escape(&self.input.owner, 40);
        let (title, items) = match self.level {
            Level::Services => (
                format!("porthole: services your key ({owner}) may enter"),
                self.input
                    .services
                    .iter()
                    .map(|s| {
                        let name = s
                            .name
                            .as_deref()
                            .map(|n| format!("  {}", escape(n, 30)))
                            .unwrap_or_default();
                        if s.selectable {
                            (
                                format!("{}{name}  [{}]", s.id, escape(&s.kind, 20)),
                                Style::Plain,
                            )
                        } else {
                            let why = s.reason.as_deref().unwrap_or("no SSH");
                            (
                                format!("{}{name}  (no SSH: {})", s.id, escape(why, 200)),
                                Style::Dim,
                            )
                        }
                    })
                    .collect::<Vec<_>>(),
            ),
            Level::Instances(i) => {
                let s = self.service(i);
                let id = s.map(|s| s.id.as_str()).unwrap_or("");
                let mut items = vec![(
                    format!("{ANY}  (a running instance, chosen for you)"),
                    Style::Plain,
                )];
                for slug in s.map(|s| s.instances.as_slice()).unwrap_or_default() {
                    items.push((format!("{id}-{}", escape(slug, 8)), Style::Plain));
                }
                (format!("porthole: instances of {id}"), items)
            }
        };
        lines.push((title, Style::Bold));
        lines.push((String::new(), Style::Plain));
        let footer = match self.level {
            Level::Services => "Up/Down move   Enter instances   q quit",
            Level::Instances(_) => "Up/Down move   Enter connect   Esc back   q quit",
        };
        let message_lines = usize::from(self.message.is_some());
        let room = rows.saturating_sub(4 + message_lines).max(1);
        let top = if self.cursor >= room {
            self.cursor + 1 - room
        } else {
            0
        };
        for (n, (text, style)) in items.iter().enumerate().skip(top).take(room) {
            let marker = if n == self.cursor { "> " } else { "  " };
            let style = if n == self.cursor {
                Style::Reverse
            } else {
                *style
            };
            lines.push((format!("{marker}{text}"), style));
        }
        if items.is_empty() {
            lines.push(("  (no services)".into(), Style::Dim));
        }
        while lines.len() < rows.saturating_sub(2 + message_lines) {
            lines.push((String::new(), Style::Plain));
        }
        if let Some(m) = &self.message {
            lines.push((escape(m, 300), Style::Bold));
        }
        lines.push((String::new(), Style::Plain));
        lines.push((footer.into(), Style::Dim));
        let mut out = String::from("\x1b[H\x1b[2J");
        for (i, (text, style)) in lines.iter().take(rows).enumerate() {
            if i > 0 {
                out.push_str("\r\n");
            }
            let cut: String = text.chars().take(cols - 1).collect();
            match style {
                Style::Plain => out.push_str(&cut),
                Style::Bold => out.push_str(&format!("\x1b[1m{cut}\x1b[0m")),
                Style::Dim => out.push_str(&format!("\x1b[2m{cut}\x1b[0m")),
                Style::Reverse => out.push_str(&format!("\x1b[7m{cut}\x1b[0m")),
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    Bold,
    Dim,
    Reverse,
}

/// `TERM=dumb`: the services as a numbered list.
pub fn dumb_services(input: &MenuInput) -> String {
    let mut out = format!(
        "Services your key ({}) may enter:\n",
        escape(&input.owner, 60)
    );
    for (n, s) in input.services.iter().enumerate() {
        let name = s
            .name
            .as_deref()
            .map(|n| format!(" ({})", escape(n, 40)))
            .unwrap_or_default();
        if s.selectable {
            out.push_str(&format!("{:>3}) {}{name}\n", n + 1, s.id));
        } else {
            let why = s.reason.as_deref().unwrap_or("no SSH");
            out.push_str(&format!(
                "  -  {}{name}: no SSH: {}\n",
                s.id,
                escape(why, 200)
            ));
        }
    }
    out.push_str("Number (q to quit): ");
    out
}

/// `TERM=dumb`: the instances of a service, 1 being "any".
pub fn dumb_instances(s: &MenuService) -> String {
    let mut out = format!("Instances of {}:\n  1) {ANY}\n", s.id);
    for (n, slug) in s.instances.iter().enumerate() {
        out.push_str(&format!("{:>3}) {}-{}\n", n + 2, s.id, escape(slug, 8)));
    }
    out.push_str("Number (q to quit): ");
    out
}

/// A typed answer: `Some(index)` (0-based) for a number in 1..=n.
pub fn dumb_answer(line: &str, n: usize) -> Option<usize> {
    let k: usize = line.trim().parse().ok()?;
    (1..=n).contains(&k).then(|| k - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> MenuInput {
        let svc = |id: &str, ok: bool, inst: &[&str]| MenuService {
            id: id.into(),
            name: Some(format!("{id}-app")),
            kind: "web_service".into(),
            selectable: ok,
            reason: (!ok).then(|| format!("{id} is a static site")),
            instances: inst.iter().map(|s| (*s).to_owned()).collect(),
        };
        MenuInput {
            owner: "alice".into(),
            host: "h".into(),
            port: None,
            services: vec![
                svc("srv-a1", true, &["aaaaa"]),
                svc("srv-s1", false, &[]),
                svc("srv-b2", true, &["ccccc", "ddddd"]),
            ],
        }
    }

    #[test]
    fn keys_decode_arrows_enter_and_quit() {
        assert_eq!(
            parse_keys(b"\x1b[A\x1b[B\x1bOB\r\x1b[Dq\x03\x1b"),
            [
                Key::Up,
                Key::Down,
                Key::Down,
                Key::Enter,
                Key::Back,
                Key::Quit,
                Key::Quit,
                Key::Back
            ]
        );
        assert_eq!(parse_keys(b"\x1b[1;5A"), [Key::Other]);
    }

    #[test]
    fn down_down_enter_down_down_enter_chooses_the_second_instance() {
        let i = input();
        let mut m = Menu::new(&i);
        assert_eq!(m.key(Key::Down), Action::Redraw);
        // The static site says why instead of opening.
        assert_eq!(m.key(Key::Enter), Action::Redraw);
        assert!(m.render(24, 80).contains("srv-s1 is a static site"));
        m.key(Key::Down);
        m.key(Key::Enter);
        let screen = m.render(24, 80);
        assert!(screen.contains("> any"), "{screen}");
        assert!(screen.contains("srv-b2-ddddd"), "{screen}");
        m.key(Key::Down);
        m.key(Key::Down);
        m.key(Key::Down); // stays on the last
        assert_eq!(
            m.key(Key::Enter),
            Action::Chosen(Choice {
                service: ServiceId::parse("srv-b2").unwrap(),
                slug: Some("ddddd".into())
            })
        );
        let mut m = Menu::new(&i);
        m.key(Key::Enter);
        m.key(Key::Back);
        assert_eq!(m.key(Key::Enter), Action::Redraw);
        assert_eq!(
            m.key(Key::Enter),
            Action::Chosen(Choice {
                service: ServiceId::parse("srv-a1").unwrap(),
                slug: None
            })
        );
        assert_eq!(m.key(Key::Quit), Action::Quit);
    }

    #[test]
    fn the_screen_fits_80x24_and_scrolls_to_the_cursor() {
        let mut i = input();
        for n in 0..60 {
            i.services.push(MenuService {
                id: format!("srv-x{n}"),
                name: Some("n".repeat(200)),
                kind: "web_service".into(),
                selectable: true,
                reason: None,
                instances: vec![],
            });
        }
        let mut m = Menu::new(&i);
        for _ in 0..50 {
            m.key(Key::Down);
        }
        let screen = m.render(24, 80);
        let lines: Vec<&str> = screen.split("\r\n").collect();
        assert!(lines.len() <= 24, "{} lines", lines.len());
        let visible = |l: &str| {
            let mut s = String::new();
            let mut esc = false;
            for c in l.chars() {
                match (esc, c) {
                    (false, '\x1b') => esc = true,
                    (true, c) if c.is_ascii_alphabetic() => esc = false,
                    (true, _) => {}
                    (false, c) => s.push(c),
                }
            }
            s
        };
        assert!(lines.iter().all(|l| visible(l).chars().count() < 80));
        assert!(screen.contains("> srv-x47"), "the cursor's line is shown");
    }

    #[test]
    fn the_dumb_terminal_gets_numbers() {
        let i = input();
        let text = dumb_services(&i);
        assert!(
            text.contains("  1) srv-a1") && text.contains("  3) srv-b2"),
            "{text}"
        );
        assert!(text.contains("srv-s1 (srv-s1-app): no SSH"), "{text}");
        assert_eq!(dumb_answer(" 3\n", 3), Some(2));
        assert_eq!(dumb_answer("4", 3), None);
        assert_eq!(dumb_answer("x", 3), None);
        assert!(dumb_instances(&i.services[2]).contains("  3) srv-b2-ddddd"));
    }
}
