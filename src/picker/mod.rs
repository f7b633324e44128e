//! The picker (`ssh srv@host`, issue 20): what the session shell hands the
//! unprivileged `porthole-picker` binary, what comes back, and the
//! listings without a terminal.
//!
//! The shell (root) builds a [`MenuInput`] from the cached list of the
//! key's services and the instances it may see, and runs the picker as the
//! session account with the client's terminal. The picker answers with at
//! most one [`Choice`] line, which the shell parses strictly and checks
//! again against the cache: nothing the picker says is believed beyond
//! "this user pointed at that entry". Names and owners in the input come
//! from the control plane and are shown only through [`escape`].
//!
//! No terminal crate here or anywhere in the library: the menu itself
//! (`menu`) is plain ANSI, drawn by the picker binary.

// Nothing here needs unsafe code; the compiler keeps it that way.
#![forbid(unsafe_code)]

pub mod menu;

use crate::names::{ServiceId, Target};
use serde::{Deserialize, Serialize};

/// The fd the picker reads its [`MenuInput`] JSON from.
pub const INPUT_FD: i32 = 3;
/// The fd the picker writes its one [`Choice`] line to.
pub const CHOICE_FD: i32 = 4;
/// Longest choice line the shell reads.
pub const MAX_CHOICE_LINE: usize = 128;
/// The word for "any running instance" in a choice line and the menu.
pub const ANY: &str = "any";

/// How the picker shows the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Arrow keys and Enter on a terminal.
    Menu,
    /// `TERM=dumb` (or none): a numbered list, answered by number.
    Dumb,
    /// No terminal or a command: a table with the `ssh` line of each.
    Table,
    /// `ssh srv@host --json`.
    Json,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Menu => "menu",
            Mode::Dumb => "dumb",
            Mode::Table => "table",
            Mode::Json => "json",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Menu, Mode::Dumb, Mode::Table, Mode::Json]
            .into_iter()
            .find(|m| m.as_str() == s)
    }

    /// True for the modes that may answer with a choice.
    pub fn interactive(self) -> bool {
        matches!(self, Mode::Menu | Mode::Dumb)
    }
}

/// One service of the menu.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MenuService {
    pub id: String,
    /// The dashboard name (control plane text: escape before showing).
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether a session can start from here.
    pub selectable: bool,
    /// Why not, when not (shell_policy's sentence, or the picker's own).
    pub reason: Option<String>,
    /// Running instance slugs, in the order to show them.
    pub instances: Vec<String>,
}

/// Everything the picker shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MenuInput {
    /// Who the key belongs to (control plane text).
    pub owner: String,
    /// How to reach this host again: `ssh [-p PORT] <login>@<host>`.
    pub host: String,
    pub port: Option<u16>,
    pub services: Vec<MenuService>,
}

impl MenuInput {
    /// The `ssh` command line for a login name.
    pub fn ssh_line(&self, login: &str) -> String {
        match self.port {
            Some(p) if p != 22 => format!("ssh -p {p} {login}@{}", self.host),
            _ => format!("ssh {login}@{}", self.host),
        }
    }
}

/// What the user chose: a service and an instance slug, or any instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub service: ServiceId,
    pub slug: Option<String>,
}

impl Choice {
    /// `<service> <slug|any>\n`
    pub fn line(&self) -> String {
        format!("{} {}\n", self.service, self.slug.as_deref().unwrap_or(ANY))
    }

    /// Parses exactly one line `<service> <slug|any>\n` (what the shell
    /// accepts back; anything else is no choice).
    pub fn parse(bytes: &[u8]) -> Option<Choice> {
        if bytes.len() > MAX_CHOICE_LINE {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?.strip_suffix('\n')?;
        let (svc, slug) = text.split_once(' ')?;
        let service = ServiceId::parse(svc)?;
        let slug = match slug {
            ANY => None,
            s if crate::names::is_slug(s) => Some(s.to_owned()),
            _ => return None,
        };
        Some(Choice { service, slug })
    }

    /// The login name it stands for.
    pub fn target(&self) -> Target {
        Target {
            service: self.service.clone(),
            slug: self.slug.clone(),
        }
    }
}

/// Control-plane text made safe for a terminal: control characters
/// (C0, DEL, C1), bidirectional overrides and other invisible format
/// characters become `\u{…}`, a backslash is doubled, and the result is
/// cut at `max` characters (with `…`).
pub fn escape(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        let invisible = c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}');
        if c == '\\' {
            out.push_str("\\\\");
        } else if invisible {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The table printed without a terminal: one line per instance (and per
/// service with its "any" line), with the `ssh` line that reaches it.
pub fn table(input: &MenuInput) -> String {
    let mut out = format!(
        "Services your key ({}) may enter:\n",
        escape(&input.owner, 60)
    );
    if input.services.is_empty() {
        out.push_str("  (none)\n");
    }
    for s in &input.services {
        let name = s
            .name
            .as_deref()
            .map(|n| format!(" ({})", escape(n, 40)))
            .unwrap_or_default();
        out.push_str(&format!("\n{}{} [{}]\n", s.id, name, escape(&s.kind, 30)));
        if !s.selectable {
            let why = s.reason.as_deref().unwrap_or("no SSH");
            out.push_str(&format!("  no SSH: {}\n", escape(why, 200)));
            continue;
        }
        out.push_str(&format!("  {:<8} {}\n", ANY, input.ssh_line(&s.id)));
        if s.instances.is_empty() {
            out.push_str("  (no running instance right now)\n");
        }
        for slug in &s.instances {
            out.push_str(&format!(
                "  {:<8} {}\n",
                escape(slug, 8),
                input.ssh_line(&format!("{}-{}", s.id, escape(slug, 8)))
            ));
        }
    }
    out
}

/// The JSON printed for `--json`: the services with their `ssh` lines.
pub fn json(input: &MenuInput) -> serde_json::Value {
    let services: Vec<serde_json::Value> = input
        .services
        .iter()
        .map(|s| {
            let instances: Vec<serde_json::Value> = s
                .instances
                .iter()
                .map(|slug| {
                    let login = format!("{}-{slug}", s.id);
                    serde_json::json!({"slug": slug, "login": login, "ssh": input.ssh_line(&login)})
                })
                .collect();
            serde_json::json!({
                "id": s.id,
                "name": s.name,
                "type": s.kind,
                "ssh_capable": s.selectable,
                "reason": s.reason,
                "ssh": s.selectable.then(|| input.ssh_line(&s.id)),
                "instances": if s.selectable { instances } else { Vec::new() },
            })
        })
        .collect();
    serde_json::json!({"owner": input.owner, "services": services})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> MenuInput {
        MenuInput {
            owner: "alice\u{1b}]0;pwned\u{7}".into(),
            host: "bastion.example.com".into(),
            port: Some(2222),
            services: vec![
                MenuService {
                    id: "srv-a1".into(),
                    name: Some("api\u{202e}txt.exe".into()),
                    kind: "web_service".into(),
                    selectable: true,
                    reason: None,
                    instances: vec!["aaaaa".into(), "bbbbb".into()],
                },
                MenuService {
                    id: "srv-c3".into(),
                    name: None,
                    kind: "cron_job".into(),
                    selectable: false,
                    reason: Some("srv-c3 is a cron job".into()),
                    instances: vec![],
                },
            ],
        }
    }

    #[test]
    fn choice_lines_round_trip_and_nothing_else_parses() {
        let c = Choice {
            service: ServiceId::parse("srv-a1").unwrap(),
            slug: Some("bbbbb".into()),
        };
        assert_eq!(c.line(), "srv-a1 bbbbb\n");
        assert_eq!(Choice::parse(c.line().as_bytes()), Some(c));
        assert_eq!(
            Choice::parse(b"srv-a1 any\n").unwrap().slug,
            None,
            "any instance"
        );
        for bad in [
            &b"srv-a1 bbbbb"[..],
            b"srv-a1 bbbbb\n\n",
            b"srv-a1  bbbbb\n",
            b"srv-a1 BBBBB\n",
            b"srv-a1-bbbbb any\n",
            b"srv any\n",
            b"root any\n",
            b"srv-a1 bbbbb\nsrv-b2 any\n",
            b"srv-a1 \xff\n",
            b"",
        ] {
            assert_eq!(
                Choice::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            Choice::parse(format!("srv-a1 {}\n", "a".repeat(200)).as_bytes()),
            None
        );
    }

    #[test]
    fn hostile_text_is_escaped_and_cut() {
        assert_eq!(escape("a\u{1b}[2Jb", 50), "a\\u{1b}[2Jb");
        assert_eq!(escape("x\u{202e}y\u{9b}z\\", 50), "x\\u{202e}y\\u{9b}z\\\\");
        assert_eq!(escape("abcdef", 3), "abc…");
        assert_eq!(escape("é ok", 9), "é ok");
    }

    #[test]
    fn table_and_json_list_every_instance_with_its_ssh_line() {
        let t = table(&input());
        assert!(
            t.contains("ssh -p 2222 srv-a1-bbbbb@bastion.example.com"),
            "{t}"
        );
        assert!(
            t.contains("any      ssh -p 2222 srv-a1@bastion.example.com"),
            "{t}"
        );
        assert!(t.contains("no SSH: srv-c3 is a cron job"), "{t}");
        assert!(!t.contains('\u{1b}') && !t.contains('\u{202e}'), "{t:?}");
        let j = json(&input());
        assert_eq!(j["services"][0]["instances"][1]["login"], "srv-a1-bbbbb");
        assert_eq!(j["services"][1]["ssh_capable"], false);
        assert!(j["services"][1]["ssh"].is_null());
    }
}
