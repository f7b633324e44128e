#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! porthole-web end to end (issue 15): a ticket opens the page, the page's
//! grant opens websocket sessions that are real porthole sessions on a
//! real sshd, reached through a hop certificate porthole-web minted, into
//! busybox instances placed by the control plane. The protocol: binary
//! frames both ways, JSON resize, the end message and the close codes.
//! A real Chromium drives the page in `a_browser_types_into_xterm`.

mod common;

use common::web::{node, place, runtime, Term, WebShell, OWNER, SERVICE};
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[test]
fn web_sessions_relay_bytes_resize_and_close_with_the_reason() {
    let host = node();
    let _a = Instance::start(&host, SERVICE, "aaaaa", InstanceOpts::default());
    let _b = Instance::start(&host, SERVICE, "bbbbb", InstanceOpts::default());
    place(&host, &["aaaaa", "bbbbb"]);
    let web = WebShell::start(&host);

    // The page lists the placed instances, random first.
    let ticket = web.ticket(None);
    let (st, page) = web.page(SERVICE, &ticket);
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("any (random)"), "{page}");
    assert!(page.contains("srv-web1-aaaaa") && page.contains("srv-web1-bbbbb"), "{page}");
    let grant = WebShell::grant_of(&page);
    // The ticket was single use: the same link is refused now.
    let (st, again) = web.page(SERVICE, &ticket);
    assert_eq!(st, 403);
    assert!(again.contains("used already"), "{again}");

    let rt = runtime();
    rt.block_on(async {
        let mut t = Term::open(&web.ws_url(&grant, "bbbbb", 100, 30)).await;
        t.send(b"echo $((6*7))-$(hostname); stty size\r").await;
        assert!(
            t.until(T, |s| s.contains("42-srv-web1-bbbbb") && s.contains("30 100")).await,
            "{}",
            t.screen
        );
        assert!(t.texts.iter().any(|m| m.contains("srv-web1-bbbbb")), "{:?}", t.texts);
        // Resize: the pty and, through ssh, the session's pty follow.
        t.send_text(r#"{"type":"resize","cols":132,"rows":43}"#).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        t.send(b"stty size\r").await;
        assert!(t.until(T, |s| s.contains("43 132")).await, "{}", t.screen);
        // Binary data both ways, byte-exact (UTF-8 and a control byte).
        t.send("printf '\\303\\251\\001|\\n'\r".as_bytes()).await;
        assert!(t.until(T, |s| s.contains("é\u{1}|")).await, "{}", t.screen);
        t.send(b"exit 3\r").await;
        let (code, reason) = t.closed(T).await;
        assert_eq!(code, 4003, "{reason}");
        assert_eq!(reason, "the session ended (exit status 3)");
        assert_eq!(t.end_reason().as_deref(), Some(reason.as_str()));
    });

    // The node's own audit: the session belongs to the ticket's owner,
    // came via "web", with the fingerprint derived from the ticket id.
    let start = host.expect_event(
        "session.start via web",
        |e| e.is("session.start", &[("via", "web"), ("owner", OWNER)]),
        T,
    );
    assert_eq!(start.str("instance"), Some("srv-web1-bbbbb"));
    assert!(start.str("fingerprint").unwrap().starts_with("SHA256:"));
    host.expect_event(
        "web.session.end",
        |e| e.is("web.session.end", &[("instance", "srv-web1-bbbbb")]) && e.u64("code") == Some(4003),
        T,
    );

    // The same page opens the next session (the user picked another
    // instance); its files are gone after each session.
    rt.block_on(async {
        let mut t = Term::open(&web.ws_url(&grant, "aaaaa", 80, 24)).await;
        t.send(b"hostname; exit\r").await;
        let (code, reason) = t.closed(T).await;
        assert!(t.screen.contains("srv-web1-aaaaa"), "{}", t.screen);
        assert_eq!((code, reason.as_str()), (1000, "the session ended"));
    });
    let left: Vec<_> = std::fs::read_dir(web.dir.join("run")).unwrap().collect();
    assert!(left.is_empty(), "session files left: {left:?}");
}
