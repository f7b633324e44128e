#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 14 foundations, against the real OpenSSH: hop certificates minted
//! by porthole are accepted by a stock sshd configured with the shipped
//! drop-in's `TrustedUserCAKeys` line (inside `Match User srv-*`) exactly
//! for their principal and validity; `ssh-keygen -L` reads what we meant;
//! the node side reads sshd's own `SSH_USER_AUTH` line back; and host
//! certificates from `porthole host-keys sign` satisfy a real `ssh` client
//! that knows only an `@cert-authority` line, with StrictHostKeyChecking.
//!
//! The session shell is not involved (auth-probe mode): the hop itself is
//! later work.

mod common;

use common::*;
use porthole::fleet::cert::{self, HopIdentity, HopRequest, Minted};
use ssh_key::PrivateKey;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

const LOGIN: &str = "srv-web1-aaaaa";
const SESSION: &str = "0123456789abcdef";

fn now() -> u64 {
    u64::try_from(porthole::time::now_unix()).unwrap()
}

/// `ssh-keygen` a CA key `dir/<name>` (0600 root, as the front door keeps it).
fn ca_key(dir: &Path, name: &str) -> (PathBuf, PrivateKey) {
    let p = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());
    let key = cert::load_ca_key(&p).unwrap_or_else(|e| panic!("{e}"));
    (p, key)
}

/// A node: the auth-probe host whose drop-in trusts `ca` for srv-* (the
/// shipped commented line, enabled) and whose probe also prints sshd's
/// `SSH_USER_AUTH` file, so the test sees what the node's shell would read.
struct Node {
    host: TestHost,
    ca: PrivateKey,
}

fn node() -> Node {
    let mut host = TestHost::start(TestHostOpts::auth_probe());
    let (_, ca) = ca_key(&host.dir().join("keys"), "user_ca");
    // /etc/porthole inside sshd's namespace is <dir>/etc/porthole.
    let pub_path = host.dir().join("etc/porthole/user_ca.pub");
    fs::write(&pub_path, ca.public_key().to_openssh().unwrap() + "\n").unwrap();
    let drop_in = host.dir().join("etc/ssh/sshd_config.d/10-porthole.conf");
    let text = fs::read_to_string(&drop_in).unwrap();
    let shipped = "\t#TrustedUserCAKeys /etc/porthole/user_ca.pub\n";
    assert!(
        text.contains(shipped),
        "the shipped drop-in has no commented TrustedUserCAKeys line"
    );
    let text = text
        .replace(shipped, "\tTrustedUserCAKeys /etc/porthole/user_ca.pub\n")
        .replace(
            &format!("ForceCommand echo {AUTH_PROBE_OK} $USER"),
            &format!("ForceCommand echo {AUTH_PROBE_OK} $USER; cat \"$SSH_USER_AUTH\""),
        );
    fs::write(&drop_in, text).unwrap();
    host.restart_sshd();
    Node { host, ca }
}

fn identity() -> HopIdentity {
    HopIdentity {
        owner: "Zoë O'Brien <zoe@example.com>".into(),
        fingerprint: format!("SHA256:{}", "q".repeat(43)),
        session_id: SESSION.into(),
        via: "fd-1.oregon.internal".into(),
    }
}

fn mint(ca: &PrivateKey, login: &str, at: u64, src: &[IpAddr]) -> Minted {
    let id = identity();
    cert::mint(
        ca,
        &HopRequest {
            login,
            identity: &id,
            source_address: src,
        },
        at,
    )
    .unwrap()
}

/// Writes the hop's key and certificate into a fresh directory of the
/// node's test dir; returns (key, cert).
fn files(node: &Node, m: &Minted, label: &str) -> (PathBuf, PathBuf) {
    let d = node.host.dir().join("hops").join(label);
    fs::create_dir_all(&d).unwrap();
    m.write_files(&d, "hop").unwrap()
}

/// `ssh -i key -o CertificateFile=cert user@node`.
fn hop(node: &Node, user: &str, key: &Path, cert: &Path) -> SshRun {
    SshCmd::new(node.host.port(), user, key)
        .option(&format!("CertificateFile={}", cert.display()))
        .run()
}

#[test]
fn sshd_accepts_a_porthole_certificate_for_its_principal() {
    let node = node();
    let localhost: IpAddr = "127.0.0.1".parse().unwrap();
    let m = mint(&node.ca, LOGIN, now(), &[localhost]);
    let (key, cert_path) = files(&node, &m, "ok");
    let r = hop(&node, LOGIN, &key, &cert_path);
    assert!(r.success(), "{}", r.describe());
    let out = r.stdout_str();
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(format!("{AUTH_PROBE_OK} {LOGIN}").as_str())
    );
    // What sshd wrote to SSH_USER_AUTH is what the node's shell will read:
    // it names the certificate, and porthole gets the identity back.
    let auth = lines.collect::<Vec<_>>().join("\n");
    let line = cert::publickey_line(&auth).expect("a publickey line in SSH_USER_AUTH");
    assert!(
        line.starts_with("publickey ssh-ed25519-cert-v01@openssh.com AAAA"),
        "{line}"
    );
    let claim = cert::verify_hop(line, node.ca.public_key(), LOGIN, now()).unwrap();
    assert_eq!(claim.identity, identity());
    assert_eq!(claim.serial, m.certificate.serial());
    // Another node's shell (other login) refuses the same line.
    assert!(matches!(
        cert::verify_hop(line, node.ca.public_key(), "srv-web1-bbbbb", now()),
        Err(cert::HopError::WrongPrincipal { .. })
    ));
    assert!(
        node.host
            .sshd_log()
            .contains(&format!("serial {}", m.certificate.serial())),
        "sshd logs the certificate's serial:\n{}",
        node.host.sshd_log()
    );
}

#[test]
fn sshd_refuses_the_certificate_for_another_login_name() {
    let node = node();
    let m = mint(&node.ca, LOGIN, now(), &[]);
    let (key, cert_path) = files(&node, &m, "other");
    for other in ["srv-web1-bbbbb", "srv-web2-aaaaa", "srv-web1"] {
        let r = hop(&node, other, &key, &cert_path);
        assert_refused(&r, other);
    }
    // The same files still work for their own principal: the refusals
    // above are about the name, not a broken setup.
    assert!(hop(&node, LOGIN, &key, &cert_path).success());
}

#[test]
fn sshd_refuses_an_expired_or_foreign_certificate() {
    let node = node();
    let past = mint(&node.ca, LOGIN, now() - 3600, &[]);
    let (key, cert_path) = files(&node, &past, "expired");
    assert_refused(&hop(&node, LOGIN, &key, &cert_path), LOGIN);
    assert!(
        node.host
            .wait_sshd_log("expired", std::time::Duration::from_secs(5)),
        "sshd says why:\n{}",
        node.host.sshd_log()
    );
    // Signed by a CA the node does not trust.
    let (_, rogue) = ca_key(&node.host.dir().join("keys"), "rogue_ca");
    let m = mint(&rogue, LOGIN, now(), &[]);
    let (key, cert_path) = files(&node, &m, "rogue");
    assert_refused(&hop(&node, LOGIN, &key, &cert_path), LOGIN);
    // source-address pins the front door: from 127.0.0.1, a certificate
    // for 10.9.9.9 is refused.
    let pinned = mint(&node.ca, LOGIN, now(), &["10.9.9.9".parse().unwrap()]);
    let (key, cert_path) = files(&node, &pinned, "pinned");
    assert_refused(&hop(&node, LOGIN, &key, &cert_path), LOGIN);
}

/// `YYYYMMDDHHMMSSZ` → ssh-keygen's `YYYY-MM-DDTHH:MM:SS` (under TZ=UTC).
fn keygen_time(unix: u64) -> String {
    let s = porthole::time::format_expiry(unix as i64);
    format!(
        "{}-{}-{}T{}:{}:{}",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[8..10],
        &s[10..12],
        &s[12..14]
    )
}

#[test]
fn ssh_keygen_reads_principal_validity_and_key_id() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ca) = {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        ca_key(dir.path(), "user_ca")
    };
    let t = now();
    let m = mint(&ca, LOGIN, t, &["192.0.2.10".parse().unwrap()]);
    let (_, cert_path) = m.write_files(dir.path(), "hop").unwrap();
    let out = Command::new("ssh-keygen")
        .env("TZ", "UTC")
        .arg("-L")
        .arg("-f")
        .arg(&cert_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key_id = cert::encode_key_id(&identity()).unwrap();
    for want in [
        "Type: ssh-ed25519-cert-v01@openssh.com user certificate".to_owned(),
        format!("Key ID: \"{key_id}\""),
        format!("Serial: {}", m.certificate.serial()),
        format!(
            "Valid: from {} to {}",
            keygen_time(t - 30),
            keygen_time(t + 60)
        ),
        format!("Principals: \n                {LOGIN}\n"),
        "Critical Options: \n                source-address 192.0.2.10\n".to_owned(),
        "Extensions: \n                permit-pty\n".to_owned(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    assert!(
        key_id.starts_with("porthole-hop/1 owner=Zo%C3%AB%20O%27Brien%20%3Czoe@example.com%3E "),
        "{key_id}"
    );
    assert!(!text.contains("permit-port-forwarding") && !text.contains("permit-agent"));
}

/// Runs the real `ssh` as a developer would with only an `@cert-authority`
/// line in known_hosts and StrictHostKeyChecking yes (the harness's SshCmd
/// turns host checking off, so this one is built by hand).
fn strict_ssh(host: &TestHost, key: &ClientKey, known_hosts: &Path, alias: &str) -> SshRun {
    let mut c = Command::new("ssh");
    c.args(["-F", "/dev/null"]);
    for o in [
        "StrictHostKeyChecking=yes".to_owned(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "GlobalKnownHostsFile=/dev/null".to_owned(),
        // The name the certificate and the @cert-authority pattern are
        // checked against (we connect to 127.0.0.1).
        format!("HostKeyAlias={alias}"),
        "IdentitiesOnly=yes".to_owned(),
        "IdentityAgent=none".to_owned(),
        "BatchMode=yes".to_owned(),
        "LogLevel=ERROR".to_owned(),
        "ConnectTimeout=5".to_owned(),
    ] {
        c.arg("-o").arg(o);
    }
    c.arg("-i").arg(&key.path);
    c.arg("-p").arg(host.port().to_string());
    c.args(["-l", PLAIN_USER, "-T", "127.0.0.1", "--", "id", "-un"]);
    let start = std::time::Instant::now();
    let output = c.output().unwrap();
    SshRun {
        output,
        elapsed: start.elapsed(),
        timed_out: false,
    }
}

#[test]
fn host_certificates_from_porthole_satisfy_a_strict_ssh_client() {
    let mut host = TestHost::start(TestHostOpts::auth_probe());
    let (ca_path, ca) = ca_key(&host.dir().join("keys"), "host_ca");
    let etc_ssh = host.dir().join("etc/ssh");
    let out = Command::new(env!("CARGO_BIN_EXE_porthole"))
        .args(["host-keys", "sign", "--ca"])
        .arg(&ca_path)
        .args([
            "--name",
            "node-1.fleet.test",
            "--name",
            "127.0.0.1",
            "--domain",
            "fleet.test",
            "--dir",
        ])
        .arg(&etc_ssh)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host_cert_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("HostCertificate "))
        .collect();
    assert!(
        host_cert_lines
            .iter()
            .any(|l| l.ends_with("ssh_host_ed25519_key-cert.pub")),
        "{stdout}"
    );
    let authority = stdout
        .lines()
        .find(|l| l.starts_with("@cert-authority "))
        .expect("an @cert-authority line");
    let mut ca_pub = ca.public_key().clone();
    ca_pub.set_comment("");
    assert_eq!(
        authority,
        format!(
            "@cert-authority *.fleet.test {}",
            ca_pub.to_openssh().unwrap()
        )
    );
    // The printed lines, as the admin would paste them: a global drop-in.
    fs::write(
        etc_ssh.join("sshd_config.d/05-host-certificates.conf"),
        host_cert_lines.join("\n") + "\n",
    )
    .unwrap();
    host.restart_sshd();

    let key = host.key(KeyKind::Ed25519);
    host.authorize_plainuser(&key);
    let known = host.dir().join("known_hosts");
    fs::write(&known, format!("{authority}\n")).unwrap();
    let r = strict_ssh(&host, &key, &known, "node-1.fleet.test");
    assert!(r.success(), "{}", r.describe());
    assert_eq!(r.stdout_str().trim(), PLAIN_USER);

    // Controls: the same client refuses a name the certificate does not
    // carry, and a host CA it does not know.
    let r = strict_ssh(&host, &key, &known, "node-2.fleet.test");
    assert!(
        !r.success() && r.stderr_str().contains("Host key verification failed"),
        "{}",
        r.describe()
    );
    let (_, other) = ca_key(&host.dir().join("keys"), "other_ca");
    fs::write(
        &known,
        format!(
            "@cert-authority *.fleet.test {}\n",
            other.public_key().to_openssh().unwrap()
        ),
    )
    .unwrap();
    let r = strict_ssh(&host, &key, &known, "node-1.fleet.test");
    assert!(
        !r.success() && r.stderr_str().contains("Host key verification failed"),
        "{}",
        r.describe()
    );
}

/// A hostile placement next to a good key: the login is decided by the
/// key alone (placement is not fatal to it), and the keys hook tells the
/// admin which placement entries it skipped and why, as for bad keys.
#[test]
fn hostile_placement_entries_are_skipped_and_logged_not_fatal() {
    const SVC: &str = "srv-placed";
    let host = TestHost::start(TestHostOpts::auth_probe());
    let key = host.key(KeyKind::Ed25519);
    let mut body = web_service(SVC, &[KeySpec::new(&key, "alice@example.com")]);
    body["instances"] = serde_json::json!([
        {"slug": "aaaaa", "host": "node-1.fleet.test", "port": 22},
        {"slug": "bbbbb", "host": "-oProxyCommand=touch /tmp/pwned"},
        {"slug": "ccccc", "host": "a b"},
        {"slug": "ddddd", "host": "x".repeat(300)},
        {"slug": "eeeee", "host": "node-2", "port": 0},
        {"slug": "fffff", "host": "node-2", "port": 70000},
        {"slug": "ggggg", "host": "node-2", "port": "22"},
        {"slug": "aaaaa", "host": "evil.fleet.test"},
        {"slug": "hhhhh", "host": "node-3", "unknown": {"nested": true}}
    ]);
    host.control_plane().set_body(SVC, &body);
    assert_accepted(&host.ssh(SVC, &key, &[]), SVC);
    for (index, says) in [
        (1, "\"host\""),
        (2, "\"host\""),
        (3, "\"host\""),
        (4, "\"port\""),
        (5, "\"port\""),
        (6, "\"port\""),
        (7, "already placed by entry 0"),
    ] {
        let e = host.expect_event(
            &format!("instances.skipped index {index}"),
            |e| {
                e.name() == "instances.skipped"
                    && e.u64("index") == Some(index)
                    && e.str("service") == Some(SVC)
            },
            std::time::Duration::from_secs(5),
        );
        assert!(
            e.str("reason").unwrap_or("").contains(says),
            "{index}: {e:?}"
        );
    }
    assert!(
        !host.events().iter().any(|e| e.name() == "instances.skipped"
            && matches!(e.u64("index"), Some(0) | Some(8))),
        "good entries are not reported"
    );
    // The keys hook's cache keeps the placement for the session shell,
    // which reads it as root from the keys user's files.
    let cached = porthole::control_plane::cache::read(
        &host.cache_dir(),
        &porthole::names::ServiceId::parse(SVC).unwrap(),
        Some(host.ids().porthole),
    )
    .unwrap()
    .expect("a cached answer");
    let doc = cached.doc.expect("the answer itself");
    let placed: Vec<(&str, &str)> = doc
        .placement()
        .unwrap()
        .iter()
        .map(|i| (i.slug.as_str(), i.host.as_str()))
        .collect();
    assert_eq!(
        placed,
        [("aaaaa", "node-1.fleet.test"), ("hhhhh", "node-3")]
    );
}
