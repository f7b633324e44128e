//! The terminal page, the refusal page and the static files (xterm.js
//! vendored under assets/xterm, compiled in: no CDN, nothing to install
//! beside the binary).

use serde_json::json;

pub const XTERM_JS: &[u8] = include_bytes!("../../assets/xterm/xterm.js");
pub const XTERM_CSS: &[u8] = include_bytes!("../../assets/xterm/xterm.css");
pub const FIT_JS: &[u8] = include_bytes!("../../assets/xterm/addon-fit.js");
pub const SHELL_JS: &[u8] = include_bytes!("../../assets/shell.js");
pub const XTERM_LICENSE: &[u8] = include_bytes!("../../assets/xterm/LICENSE.xterm");

/// A static file by name: (content type, bytes).
pub fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    match name {
        "xterm.js" => Some(("text/javascript; charset=utf-8", XTERM_JS)),
        "xterm.css" => Some(("text/css; charset=utf-8", XTERM_CSS)),
        "addon-fit.js" => Some(("text/javascript; charset=utf-8", FIT_JS)),
        "shell.js" => Some(("text/javascript; charset=utf-8", SHELL_JS)),
        "LICENSE.xterm" => Some(("text/plain; charset=utf-8", XTERM_LICENSE)),
        _ => None,
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON safe inside a `<script type="application/json">` element.
fn script_json(v: &serde_json::Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

const STYLE: &str = "body{margin:0;background:#1e1e1e;color:#ddd;font:14px system-ui,sans-serif;display:flex;flex-direction:column;height:100vh}\
header{display:flex;gap:1em;align-items:center;padding:6px 10px;background:#2d2d2d}\
#terminal{flex:1;min-height:0;padding:4px}\
#status.ended{color:#f88;font-weight:bold}\
.refusal{max-width:40em;margin:3em auto;padding:1em 2em;background:#3a2020;border:1px solid #a55}";

/// What the terminal page shows.
pub struct ShellPage<'a> {
    /// The path prefix porthole-web is served under (`/`, or a reverse
    /// proxy's prefix).
    pub base: &'a str,
    pub service: &'a str,
    pub owner: &'a str,
    /// The page grant (random, in the page only).
    pub page: &'a str,
    /// Instance slugs for the dropdown; "" first means "any (random)".
    pub instances: &'a [String],
    pub random_choice: bool,
}

pub fn shell_page(p: &ShellPage<'_>) -> String {
    let cfg = json!({"base": p.base, "service": p.service, "page": p.page});
    let mut options = String::new();
    if p.random_choice {
        options.push_str("<option value=\"\" selected>any (random)</option>");
    }
    for slug in p.instances {
        let name = format!("{}-{}", p.service, slug);
        options.push_str(&format!(
            "<option value=\"{}\">{}</option>",
            html_escape(slug),
            html_escape(&name)
        ));
    }
    let base = html_escape(p.base);
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{svc} shell</title>\
<link rel=\"stylesheet\" href=\"{base}assets/xterm.css\"><style>{STYLE}</style></head><body>\
<header><strong>{svc}</strong><label>Instance <select id=\"instance\">{options}</select></label>\
<span id=\"status\"></span><span style=\"margin-left:auto\">{owner}</span></header>\
<div id=\"terminal\"></div>\
<script type=\"application/json\" id=\"porthole-config\">{cfg}</script>\
<script src=\"{base}assets/xterm.js\"></script><script src=\"{base}assets/addon-fit.js\"></script>\
<script src=\"{base}assets/shell.js\"></script></body></html>",
        svc = html_escape(p.service),
        owner = html_escape(p.owner),
        cfg = script_json(&cfg),
    )
}

/// The page a refused ticket gets (no script, no session).
pub fn refusal_page(sentence: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>porthole: refused</title>\
<style>{STYLE}</style></head><body><div class=\"refusal\" id=\"refusal\"><h1>No shell</h1>\
<p id=\"reason\">{}</p></div></body></html>",
        html_escape(sentence)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn hostile_text_stays_text() {
        let p = shell_page(&ShellPage {
            base: "/",
            service: "srv-a1",
            owner: "<script>alert(1)</script>",
            page: "</script><script>x",
            instances: &["aaaaa".into()],
            random_choice: true,
        });
        assert!(!p.contains("<script>alert"));
        assert!(!p.contains("</script><script>x"));
        assert!(refusal_page("<b>").contains("&lt;b&gt;"));
        assert!(asset("xterm.js").is_some_and(|(_, b)| b.len() > 100_000));
        assert!(asset("../Cargo.toml").is_none());
    }
}
