//! porthole-web against a real node: a [`TestHost`] whose sshd trusts the
//! web shell's own user CA for srv-* (the shipped drop-in's
//! `TrustedUserCAKeys` line, enabled, and `fleet.trusted_user_ca`), busybox
//! instances placed on it by the control plane, and the real porthole-web
//! binary on a loopback port with a ticket key made by openssl.

use super::*;
use futures_util::{SinkExt, StreamExt};
use porthole::web::ticket::{Claims, Signer};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

pub const SERVICE: &str = "srv-web1";
pub const OWNER: &str = "alice@example.com";

pub struct WebShell {
    pub dir: PathBuf,
    pub port: u16,
    pub signer: Signer,
    child: Child,
}

impl Drop for WebShell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node for web sessions: trusts `web_ca.pub` for srv-* logins.
pub fn node() -> TestHost {
    let mut host = TestHost::start(TestHostOpts::default());
    let keys = host.dir().join("keys");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "web_ca", "-f"])
        .arg(keys.join("web_ca"))
        .status()
        .unwrap();
    assert!(st.success());
    fs::copy(
        keys.join("web_ca.pub"),
        host.dir().join("etc/porthole/user_ca.pub"),
    )
    .unwrap();
    let drop_in = host.dir().join("etc/ssh/sshd_config.d/10-porthole.conf");
    let text = fs::read_to_string(&drop_in).unwrap();
    let shipped = "\t#TrustedUserCAKeys /etc/porthole/user_ca.pub\n";
    assert!(
        text.contains(shipped),
        "no commented TrustedUserCAKeys line"
    );
    fs::write(
        &drop_in,
        text.replace(shipped, "\tTrustedUserCAKeys /etc/porthole/user_ca.pub\n"),
    )
    .unwrap();
    host.set_config("fleet.trusted_user_ca", "/etc/porthole/user_ca.pub");
    host.restart_sshd();
    host
}

/// The control plane's answer for [`SERVICE`]: no keys at all (web
/// sessions need none), these instances placed on the node.
pub fn place(host: &TestHost, slugs: &[&str]) {
    place_with_keys(host, slugs, &[]);
}

/// Like [`place`], with these SSH keys listed too.
pub fn place_with_keys(host: &TestHost, slugs: &[&str], keys: &[KeySpec]) {
    let mut body = web_service(SERVICE, keys);
    body["instances"] = Value::Array(
        slugs
            .iter()
            .map(|s| serde_json::json!({"slug": s, "host": "127.0.0.1", "port": host.port()}))
            .collect(),
    );
    host.control_plane().set_body(SERVICE, &body);
}

impl WebShell {
    /// Starts porthole-web with the node's porthole.toml plus a `[web]`
    /// section (same control plane, same syslog socket).
    pub fn start(host: &TestHost) -> WebShell {
        let dir = host.dir().join("web");
        util::mkdir(&dir, 0o700, 0, 0);
        util::mkdir(&dir.join("run"), 0o700, 0, 0);
        let key = dir.join("ticket.key");
        util::run_ok(
            Command::new("openssl")
                .args(["genpkey", "-algorithm", "ed25519", "-out"])
                .arg(&key),
        );
        util::run_ok(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(dir.join("ticket.pub")),
        );
        let port = free_port();
        let text = format!(
            "{}\n[web]\n{}",
            host.config_text(),
            format_args!(
                r#"listen = "127.0.0.1:{port}"
ticket_public_key = "{d}/ticket.pub"
ticket_signing_key = "{d}/ticket.key"
user_ca_key = "{k}/web_ca"
ssh_host = "127.0.0.1"
ssh_port = {sshd}
host_keys_dir = "{e}/etc/ssh"
runtime_dir = "{d}/run"
max_message_bytes = 65536
"#,
                d = dir.display(),
                k = host.dir().join("keys").display(),
                e = host.dir().display(),
                sshd = host.port(),
            )
        );
        let config = dir.join("porthole.toml");
        util::write_file(&config, text, 0o644, 0, 0);
        let child = Command::new(env!("CARGO_BIN_EXE_porthole-web"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let signer = Signer::load(&key).unwrap();
        let up = util::wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(
            up.is_some(),
            "porthole-web did not listen: {}",
            fs::read_to_string(dir.join("stderr")).unwrap_or_default()
        );
        WebShell {
            dir,
            port,
            signer,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ticket(&self, instance: Option<&str>) -> String {
        let now = u64::try_from(porthole::time::now_unix()).unwrap();
        self.signer
            .mint(
                &porthole::names::ServiceId::parse(SERVICE).unwrap(),
                instance,
                OWNER,
                60,
                now,
            )
            .unwrap()
    }

    pub fn sign(&self, c: &Claims) -> String {
        self.signer.sign(c).unwrap()
    }

    /// GET the page for `ticket`: (status, body).
    pub fn page(&self, service: &str, ticket: &str) -> (u16, String) {
        let r =
            reqwest::blocking::get(self.url(&format!("/shell/{service}?ticket={ticket}"))).unwrap();
        let status = r.status().as_u16();
        (status, r.text().unwrap())
    }

    /// The page grant embedded in a page.
    pub fn grant_of(page: &str) -> String {
        let at = page.find("\"page\":\"").expect("no page grant in the page") + 8;
        page[at..].chars().take_while(|c| *c != '"').collect()
    }

    /// A fresh ticket's page grant.
    pub fn grant(&self, instance: Option<&str>) -> String {
        let (st, body) = self.page(SERVICE, &self.ticket(instance));
        assert_eq!(st, 200, "{body}");
        WebShell::grant_of(&body)
    }

    pub fn ws_url(&self, grant: &str, instance: &str, cols: u16, rows: u16) -> String {
        format!(
            "ws://127.0.0.1:{}/ws/{SERVICE}?page={grant}&instance={instance}&cols={cols}&rows={rows}",
            self.port
        )
    }
}

/// A websocket terminal client.
pub struct Term {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Everything received as binary so far (lossy text).
    pub screen: String,
    /// Text frames received.
    pub texts: Vec<String>,
    /// (code, reason) once closed.
    pub closed: Option<(u16, String)>,
}

impl Term {
    pub async fn open(url: &str) -> Term {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .unwrap();
        Term {
            ws,
            screen: String::new(),
            texts: Vec::new(),
            closed: None,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// Reads until `pred(screen)` or the socket closes or `timeout`.
    pub async fn until(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !pred(&self.screen) && self.closed.is_none() {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await;
            match next {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => {
                    self.closed.get_or_insert((0, String::new()));
                }
                Ok(Some(Ok(m))) => match m {
                    Message::Binary(b) => self.screen.push_str(&String::from_utf8_lossy(&b)),
                    Message::Text(t) => self.texts.push(t.to_string()),
                    Message::Close(f) => {
                        self.closed = Some(match f {
                            Some(f) => (u16::from(f.code), f.reason.to_string()),
                            None => (u16::from(CloseCode::Status), String::new()),
                        })
                    }
                    _ => {}
                },
            }
        }
        pred(&self.screen)
    }

    /// Reads until closed; returns (code, reason).
    pub async fn closed(&mut self, timeout: Duration) -> (u16, String) {
        self.until(timeout, |_| false).await;
        self.closed
            .clone()
            .unwrap_or_else(|| panic!("not closed within {timeout:?}; screen: {}", self.screen))
    }

    /// The `end` message's reason, if one came.
    pub fn end_reason(&self) -> Option<String> {
        self.texts.iter().find_map(|t| {
            let v: Value = serde_json::from_str(t).ok()?;
            (v["type"] == "end").then(|| v["reason"].as_str().unwrap_or("").to_owned())
        })
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
