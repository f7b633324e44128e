//! Text from records, containers and the control plane, made safe to print
//! on an admin's terminal.
//!
//! Client commands, key owners, drain messages and container ids are chosen
//! by tenants or developers. Printed raw to root's terminal, an escape
//! sequence in one of them could retitle the window, rewrite what the
//! admin sees, or (on some terminals) answer back as typed input. Every
//! line the admin CLI prints goes through [`printable`] (tables, doctor,
//! errors) or [`json_printable`] (`--json`).

use std::borrow::Cow;
use std::fmt::Write;

/// Characters that act on a terminal instead of being shown: C0 controls
/// (TAB and newline included: a table cell must stay on its line), DEL, C1
/// controls (U+0080–U+009F, e.g. U+009B is a one-character CSI), and the
/// Unicode formatting characters that reorder or hide text (bidirectional
/// overrides and isolates, line and paragraph separators).
fn acts_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every terminal-active character escaped: `\e` for ESC, `\t`,
/// `\n`, `\r`, `\xNN` for the other C0 controls and DEL, `\u{NNNN}` for
/// C1 and formatting characters, and `\\` for a backslash (so an escape in
/// the output always means the character, never text that looked like one).
/// Borrowed when there is nothing to escape.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || acts_on_terminal(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\u{1b}' => out.push_str("\\e"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            // Writing to a String cannot fail.
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if acts_on_terminal(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON text (from serde_json) with the terminal-active characters that
/// serde_json leaves raw (DEL, C1, formatting characters; it escapes C0
/// itself) written as `\uXXXX` escapes. Those characters can only occur
/// inside JSON strings, where the escape means the same character, so the
/// document is unchanged for a JSON reader.
pub fn json_printable(json: &str) -> Cow<'_, str> {
    // C0 outside strings is the document's own whitespace (pretty printing).
    let raw = |c: char| acts_on_terminal(c) && u32::from(c) >= 0x7f;
    if !json.chars().any(raw) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if raw(c) {
            // All of these are in the Basic Multilingual Plane: one \u escape.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(
            printable("rails db:migrate:status ünïcode ✓"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            printable("echo \u{1b}]0;pwned\u{7}\u{1b}[2J"),
            "echo \\e]0;pwned\\x07\\e[2J"
        );
        assert_eq!(printable("a\tb\nc\rd\0e\u{7f}"), "a\\tb\\nc\\rd\\x00e\\x7f");
        assert_eq!(printable("\u{9b}31m"), "\\u{009b}31m", "C1 CSI");
        assert_eq!(printable("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(
            printable(r"C:\e"),
            r"C:\\e",
            "a literal backslash-e stays distinguishable"
        );
        for c in (0u32..0x20).chain(0x7f..0xa0) {
            let s = char::from_u32(c).unwrap().to_string();
            let p = printable(&s);
            assert!(
                p.chars().all(|c| c.is_ascii_graphic()),
                "U+{c:04X} printed as {p:?}"
            );
        }
    }

    #[test]
    fn json_stays_the_same_document_without_raw_controls() {
        let v = serde_json::json!({"command": "a\u{1b}[31m\u{7f}\u{9b}b\u{2066}", "n": 1});
        let text = serde_json::to_string_pretty(&v).unwrap();
        let safe = json_printable(&text);
        assert!(
            safe.chars().all(|c| !acts_on_terminal(c) || c == '\n'),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, v);
    }
}
