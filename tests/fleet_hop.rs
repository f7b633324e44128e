#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 14, end to end: a region on one machine. A front door and two
//! nodes, each in its own network namespace on a private bridge (made by
//! the test, see `common::netns`) and its own mount namespace with its own
//! sshd, /etc, host keys, runc root and keys cache. The control plane is
//! the embedded `file://` provider on every host, answering with the same
//! placement: `srv-web1-aaaaa` on node-1, `srv-web1-bbbbb` on node-2.
//!
//! The developer's `ssh` runs on the front door's network and logs in to
//! the front door only; everything else is the front door's session shell
//! minting a one-minute certificate and running the stock OpenSSH client
//! to the node, whose stock sshd trusts the user CA inside the drop-in's
//! `Match` block, and whose session shell enters the instance.

mod common;

use common::region::*;
use common::*;
use porthole::fleet::cert::{self, HopIdentity, HopRequest};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

// ----- where logins land ------------------------------------------------------

#[test]
fn logins_through_the_front_door_land_on_the_node_running_the_instance() {
    let r = region();
    // By slug: exactly that instance, on its node.
    for (slug, node) in [("aaaaa", 0), ("bbbbb", 1)] {
        let login = format!("{SVC}-{slug}");
        let out = r.ssh(&login, &["hostname; exit 7"]);
        assert_eq!(out.code(), Some(7), "{}", out.describe());
        assert_eq!(out.stdout_str().trim(), login, "{}", out.describe());
        // The node's own audit: the real owner, the front door as `via`.
        let ev = r.nodes[node].expect_event(
            "node session.start",
            |e| e.name() == "session.start" && e.str("instance") == Some(login.as_str()),
            WAIT,
        );
        assert_eq!(ev.str("owner"), Some(OWNER));
        assert_eq!(ev.str("via"), Some(FRONT));
        assert_eq!(ev.str("fingerprint"), Some(r.key.fingerprint.as_str()));
        // ... sharing the session id with the front door's events.
        let sid = ev.str("session_id").unwrap().to_owned();
        let front = r.front.expect_event(
            "front door session.end",
            |e| e.name() == "session.end" && e.str("session_id") == Some(sid.as_str()),
            WAIT,
        );
        assert_eq!(front.str("instance"), Some(login.as_str()));
        assert_eq!(front.get("exit_status").and_then(Value::as_i64), Some(7));
        let hop = front.str("hop").unwrap();
        assert!(hop.starts_with(&node_name(node)), "{hop}");
        let node_end = r.nodes[node].expect_event(
            "node session.end",
            |e| e.name() == "session.end" && e.str("session_id") == Some(sid.as_str()),
            WAIT,
        );
        assert_eq!(node_end.str("via"), Some(FRONT));
    }
    // Without a slug: a random running instance, and over enough logins
    // both (the chance of 16 identical picks is 2 in 65 536).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..16 {
        let out = r.ssh(SVC, &["hostname"]);
        assert!(out.success(), "{}", out.describe());
        seen.insert(out.stdout_str().trim().to_owned());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [format!("{SVC}-aaaaa"), format!("{SVC}-bbbbb")]
    );
    // A slug placement does not list: the sentence names the running ones.
    let out = r.ssh(&format!("{SVC}-zzzzz"), &["true"]);
    assert_eq!(out.code(), Some(1));
    let err = out.stderr_str();
    assert!(
        err.contains("srv-web1-zzzzz is not a running instance of srv-web1")
            && err.contains("srv-web1-aaaaa")
            && err.contains("srv-web1-bbbbb"),
        "{err}"
    );
}

#[test]
fn stdio_exit_status_and_a_10_mb_binary_round_trip_through_the_hop() {
    let r = region();
    let data: Vec<u8> = (0..10_000_000u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let out = r
        .cmd(&format!("{SVC}-aaaaa"))
        .args(&["cat; echo err-line >&2; exit 3"])
        .stdin(data.clone())
        .timeout(Duration::from_secs(60))
        .run();
    assert_eq!(out.code(), Some(3), "{}", out.describe());
    assert_eq!(out.stdout.len(), data.len());
    assert_eq!(sha(&out.stdout), sha(&data));
    assert_eq!(out.stderr_str().trim(), "err-line");
}

#[test]
fn a_pty_session_through_the_hop_resizes_and_keeps_its_exit_status() {
    let r = region();
    let mut c = r.cmd(&format!("{SVC}-bbbbb")).tty(true).spawn_pty(24, 80);
    c.send("stty size; hostname; echo MARK-$((6*7))\n");
    assert!(c.wait_for("MARK-42", WAIT), "screen:\n{}", c.screen());
    let screen = c.screen();
    assert!(screen.contains("24 80"), "{screen}");
    assert!(screen.contains("srv-web1-bbbbb"), "{screen}");
    // The live session on the node belongs to the developer, not to the
    // front door; the front door lists it too.
    let on_node = Region::sessions(&r.nodes[1]);
    assert_eq!(on_node.len(), 1, "{on_node:?}");
    assert_eq!(on_node[0]["owner"], OWNER);
    let on_front = Region::sessions(&r.front);
    assert_eq!(on_front.len(), 1, "{on_front:?}");
    assert_eq!(on_front[0]["id"], on_node[0]["id"], "one session id");
    c.resize(50, 132);
    std::thread::sleep(Duration::from_millis(500));
    c.send("stty size; echo MARK-$((7*7))\n");
    assert!(c.wait_for("MARK-49", WAIT), "screen:\n{}", c.screen());
    assert!(c.screen().contains("50 132"), "{}", c.screen());
    c.send("exit 5\n");
    let st = c.wait(WAIT).expect("client exits after the shell");
    assert_eq!(st.code(), Some(5));
}

#[test]
fn scp_rsync_and_sftp_work_through_the_hop() {
    let mut r = region();
    let opts = InstanceOpts::default().app_user().with_host_programs(&[
        "/usr/bin/scp",
        "/usr/bin/rsync",
        "/usr/lib/openssh/sftp-server",
    ]);
    r.instances
        .push(Instance::start(&r.nodes[0], SVC, "ccccc", opts));
    let mut placement = r.placement();
    placement
        .as_array_mut()
        .unwrap()
        .push(json!({"slug": "ccccc", "host": node_name(0), "port": r.nodes[0].port()}));
    r.publish(&placement);
    let inst = r.instances.last().unwrap();
    let local = r.front.dir().join("payload.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|n| (n * 7 % 251) as u8).collect();
    fs::write(&local, &data).unwrap();
    let port = r.front.port().to_string();
    let remote = format!("{SVC}-ccccc@127.0.0.1");
    let ns = r.front.spot().unwrap().nsenter_args();
    let client = |prog: &str| {
        let mut c = Command::new("nsenter");
        c.args(&ns).arg(prog);
        c
    };
    let opts = r.key.transfer_opts();

    let scp = util::run(
        client("scp")
            .arg("-O")
            .args(&opts)
            .args(["-P", &port])
            .arg(&local)
            .arg(format!("{remote}:/home/app/via-scp.bin")),
    );
    assert!(scp.status.success(), "scp -O: {}", util::lossy(&scp.stderr));
    assert_eq!(
        fs::read(inst.rootfs().join("home/app/via-scp.bin")).unwrap(),
        data
    );
    let rsh = format!("ssh {} -p {port}", opts.join(" "));
    let rsync = util::run(
        client("rsync")
            .args(["-a", "-e", &rsh])
            .arg(&local)
            .arg(format!("{remote}:/home/app/via-rsync.bin")),
    );
    assert!(
        rsync.status.success(),
        "rsync: {}",
        util::lossy(&rsync.stderr)
    );
    assert_eq!(
        fs::read(inst.rootfs().join("home/app/via-rsync.bin")).unwrap(),
        data
    );
    let back = r.front.dir().join("back.bin");
    let sftp = util::run_with_timeout(
        client("sftp")
            .args(&opts)
            .args(["-P", &port, "-b", "-"])
            .arg(&remote),
        Some(format!("get /home/app/via-rsync.bin {}\n", back.display()).into_bytes()),
        Duration::from_secs(60),
    )
    .output;
    assert!(sftp.status.success(), "sftp: {}", util::lossy(&sftp.stderr));
    assert_eq!(fs::read(&back).unwrap(), data);
}

// ----- the node's word reaches the developer ----------------------------------

#[test]
fn instance_stop_on_the_node_closes_the_hopped_session_with_the_nodes_sentence() {
    let r = region();
    let mut child = r.cmd(&format!("{SVC}-aaaaa")).args(&["sleep 60"]).spawn();
    util::wait_for(WAIT, || {
        (Region::sessions(&r.nodes[0]).len() == 1).then_some(())
    })
    .expect("the session starts on node-1");
    let started = Instant::now();
    r.instances[0].kill();
    let (status, _) = util::wait_deadline(&mut child, WAIT);
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(started.elapsed() < WAIT, "closed in time");
    assert_ne!(status.code(), Some(0));
    assert!(
        err.contains("instance srv-web1-aaaaa stopped"),
        "the node's sentence passes the hop: {err:?}"
    );
}

#[test]
fn a_drain_on_the_node_reaches_the_developer_through_the_hop_and_one_on_the_front_door_too() {
    let r = region();
    let out = Region::porthole(
        &r.nodes[1],
        &[
            "drain",
            "--instance",
            "srv-web1-bbbbb",
            "--message",
            "disk swap on node-2",
        ],
    );
    assert!(out.status.success(), "{}", util::lossy(&out.stderr));
    let res = r.ssh(&format!("{SVC}-bbbbb"), &["true"]);
    assert_eq!(res.code(), Some(1));
    assert!(
        res.stderr_str().contains("disk swap on node-2"),
        "{}",
        res.describe()
    );
    // The other node is unaffected; then the front door itself is drained.
    assert!(r.ssh(&format!("{SVC}-aaaaa"), &["true"]).success());
    let out = Region::porthole(
        &r.front,
        &["drain", "--all", "--message", "front door upgrade"],
    );
    assert!(out.status.success(), "{}", util::lossy(&out.stderr));
    let res = r.ssh(&format!("{SVC}-aaaaa"), &["true"]);
    assert_eq!(res.code(), Some(1));
    assert!(
        res.stderr_str().contains("front door upgrade"),
        "{}",
        res.describe()
    );
    r.front.expect_event(
        "front door refusal",
        |e| e.is("session.rejected", &[("reason", "drained")]),
        WAIT,
    );
}

// ----- refusals -----------------------------------------------------------------

#[test]
fn a_node_that_is_down_or_cut_off_is_refused_with_a_sentence_within_the_budget() {
    let mut r = region();
    // sshd stopped: connection refused at once.
    r.nodes[0].stop_sshd();
    let res = r.ssh(&format!("{SVC}-aaaaa"), &["true"]);
    assert_eq!(res.code(), Some(1), "{}", res.describe());
    assert!(
        res.stderr_str()
            .contains("cannot reach node-1.fleet.test (the host running srv-web1-aaaaa)"),
        "{}",
        res.describe()
    );
    r.front.expect_event(
        "node_unreachable",
        |e| e.is("session.rejected", &[("reason", "node_unreachable")]),
        WAIT,
    );
    // Cut off the network: packets vanish; the hop gives up after
    // fleet.hop_timeout_ms (2 s), well within the 3 s budget.
    r.fabric.disconnect(&r.spots[2]);
    let res = r.ssh(&format!("{SVC}-bbbbb"), &["true"]);
    assert_eq!(res.code(), Some(1), "{}", res.describe());
    assert!(
        res.stderr_str().contains("cannot reach node-2.fleet.test"),
        "{}",
        res.describe()
    );
    // The front door's own time for the refusal (its event's `ms`, from
    // the session shell's start to the sentence) stays within the 3 s
    // budget: the hop gives up after fleet.hop_timeout_ms (2 s). The
    // client's total also holds the front door's own login, which a
    // loaded test machine stretches, so it only gets a sanity bound.
    let e = util::wait_for(WAIT, || {
        r.front
            .events()
            .into_iter()
            .filter(|e| e.is("session.rejected", &[("reason", "node_unreachable")]))
            .find(|e| e.str("message").is_some_and(|m| m.contains("node-2")))
    })
    .expect("the refusal event for node-2");
    let ms = e.u64("ms").unwrap();
    assert!((2_000..3_000).contains(&ms), "{ms} ms: {}", e.raw);
    assert!(res.elapsed < Duration::from_secs(10), "{}", res.describe());
    // Back on the network, the next logins get through again (once the
    // neighbour tables have noticed).
    r.fabric.reconnect(&r.spots[2]);
    let back = util::wait_for(WAIT, || {
        r.ssh(&format!("{SVC}-bbbbb"), &["true"])
            .success()
            .then_some(())
    });
    assert!(back.is_some(), "node-2 is reachable again");
}

#[test]
fn a_node_whose_host_key_the_host_ca_did_not_sign_is_never_logged_in_to() {
    let mut r = region();
    // node-2 presents a certificate from another CA (an impostor's).
    let rogue = r.nodes[1].dir().join("keys/rogue_ca");
    keygen(&rogue);
    certify_host(&mut r.nodes[1], &rogue, &node_name(1));
    r.nodes[1].restart_sshd();
    r.publish(&r.placement());
    let res = r.ssh(&format!("{SVC}-bbbbb"), &["true"]);
    assert_eq!(res.code(), Some(1), "{}", res.describe());
    assert!(
        res.stderr_str()
            .contains("did not prove to be a node of this platform"),
        "{}",
        res.describe()
    );
    r.front.expect_event(
        "node_host_key",
        |e| e.is("session.rejected", &[("reason", "node_host_key")]),
        WAIT,
    );
    assert!(
        !r.nodes[1]
            .events()
            .iter()
            .any(|e| e.name() == "session.start"),
        "nothing reached node-2's session shell"
    );
}

/// What a stolen or forged certificate can do at a node: nothing.
#[test]
fn certificates_replayed_late_for_another_service_or_from_another_ca_are_refused_by_the_node() {
    let r = region();
    let ca = cert::load_ca_key(&r.user_ca).unwrap();
    let now = u64::try_from(porthole::time::now_unix()).unwrap();
    let id = HopIdentity {
        owner: OWNER.into(),
        fingerprint: r.key.fingerprint.clone(),
        session_id: "00112233aabbccdd".into(),
        via: FRONT.into(),
    };
    let node = &r.nodes[0];
    let dir = node.dir().join("forged");
    fs::create_dir_all(&dir).unwrap();
    let mint_as = |ca: &ssh_key::PrivateKey, login: &str, at: u64, stem: &str| {
        let m = cert::mint(
            ca,
            &HopRequest {
                login,
                identity: &id,
                source_address: &[],
            },
            at,
        )
        .unwrap();
        m.write_files(&dir, stem).unwrap()
    };
    // The attempt is made from node-1's own network (a compromised
    // neighbour) straight to node-1's sshd.
    let try_login = |login: &str, key: &Path, certificate: &Path| {
        SshCmd::new(node.port(), login, key)
            .nsenter(r.spots[1].nsenter_args())
            .option(&format!("CertificateFile={}", certificate.display()))
            .args(&["hostname"])
            .run()
    };
    // A fresh certificate as the front door mints it works from the front
    // door's address only (source-address): from node-1 itself, not at all.
    let front_addr: std::net::IpAddr = r.spots[0].addr.parse().unwrap();
    let m = cert::mint(
        &ca,
        &HopRequest {
            login: "srv-web1-aaaaa",
            identity: &id,
            source_address: &[front_addr],
        },
        now,
    )
    .unwrap();
    let (k, c) = m.write_files(&dir, "fresh").unwrap();
    assert!(try_login("srv-web1-aaaaa", &k, &c).denied());
    // Minted without source-address, it works: the refusals below are
    // about what they test.
    let m = cert::mint(
        &ca,
        &HopRequest {
            login: "srv-web1-aaaaa",
            identity: &id,
            source_address: &[],
        },
        now,
    )
    .unwrap();
    let (k, c) = m.write_files(&dir, "open").unwrap();
    let res = try_login("srv-web1-aaaaa", &k, &c);
    assert!(res.success(), "{}", res.describe());
    assert_eq!(res.stdout_str().trim(), "srv-web1-aaaaa");
    // Replayed after expiry.
    let (k, c) = mint_as(&ca, "srv-web1-aaaaa", now - 600, "old");
    assert!(try_login("srv-web1-aaaaa", &k, &c).denied());
    // Made for another service's instance, used for this one.
    let (k, c) = mint_as(&ca, "srv-web2-aaaaa", now, "other");
    assert!(try_login("srv-web1-aaaaa", &k, &c).denied());
    // Signed by a CA the node does not trust (a node's own key, say).
    let rogue = dir.join("rogue_ca");
    keygen(&rogue);
    let rogue = cert::load_ca_key(&rogue).unwrap();
    let (k, c) = mint_as(&rogue, "srv-web1-aaaaa", now, "rogue");
    assert!(try_login("srv-web1-aaaaa", &k, &c).denied());
}

#[test]
fn a_node_enters_only_what_placement_lists_and_never_hops() {
    let r = region();
    // node-1's answer no longer lists aaaaa (it moved) while the front
    // door's is stale: the node refuses with its sentence, through the hop.
    r.publish_to(
        &[&r.nodes[0]],
        &json!([{"slug": "bbbbb", "host": node_name(1), "port": r.nodes[1].port()}]),
    );
    let res = r.ssh(&format!("{SVC}-aaaaa"), &["true"]);
    assert_eq!(res.code(), Some(1), "{}", res.describe());
    assert!(
        res.stderr_str().contains("not a running instance")
            || res.stderr_str().contains("does not list it"),
        "{}",
        res.describe()
    );
    // Logged in to node-1 directly, asking for node-2's instance: a node
    // does not hop (it holds no CA key); it says where the instance runs.
    r.publish(&r.placement());
    let direct = SshCmd::new(r.nodes[0].port(), &format!("{SVC}-bbbbb"), &r.key.path)
        .nsenter(r.spots[1].nsenter_args())
        .args(&["true"])
        .run();
    assert_eq!(direct.code(), Some(1), "{}", direct.describe());
    assert!(
        direct
            .stderr_str()
            .contains("srv-web1-bbbbb runs on node-2.fleet.test, not on this host"),
        "{}",
        direct.describe()
    );
    r.nodes[0].expect_event(
        "elsewhere",
        |e| e.is("session.rejected", &[("reason", "elsewhere")]),
        WAIT,
    );
}

#[test]
fn a_front_door_without_placement_refuses_with_a_sentence() {
    let r = region();
    let body = web_service(SVC, &[KeySpec::new(&r.key, OWNER)]);
    r.front.write_service_file(SVC, &body);
    let res = r.ssh(&format!("{SVC}-aaaaa"), &["true"]);
    assert_eq!(res.code(), Some(1));
    assert!(
        res.stderr_str()
            .contains("the platform does not say where srv-web1 runs"),
        "{}",
        res.describe()
    );
    r.front.expect_event(
        "no_placement",
        |e| e.is("session.rejected", &[("reason", "no_placement")]),
        WAIT,
    );
    let _ = &r.host_ca;
}

// ----- the admin's view ------------------------------------------------------------

fn doctor(host: &TestHost, extra: &[&str]) -> (bool, String) {
    let mut args = vec![env!("CARGO_BIN_EXE_porthole"), "doctor"];
    args.extend_from_slice(extra);
    let out = host.in_ns(&args);
    (
        out.status.success(),
        format!("{}{}", util::lossy(&out.stdout), util::lossy(&out.stderr)),
    )
}

#[test]
fn doctor_checks_each_roles_setup_and_a_nodes_host_certificate() {
    let mut r = region();
    let node1 = format!("{}:{}", node_name(0), r.nodes[0].port());
    let (ok, text) = doctor(&r.front, &["--node", &node1]);
    assert!(ok, "{text}");
    for want in [
        "front_door (known to placement as fd.fleet.test)",
        "a front door accepts no hops",
        "signs the hops; only root can read it",
        "signed by the host CA for node-1.fleet.test",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    let (ok, text) = doctor(&r.nodes[0], &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("srv-* logins accept certificates of 1 CA key(s)"),
        "{text}"
    );
    // Broken pieces, each named: a readable CA key on the front door, a
    // node whose sshd no longer trusts the CA, a node with a rogue host
    // certificate, a node that is down.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&r.user_ca, fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = doctor(&r.front, &[]);
    assert!(!ok && text.contains("[FAIL] user CA key"), "{text}");
    fs::set_permissions(&r.user_ca, fs::Permissions::from_mode(0o600)).unwrap();
    let drop_in = r.nodes[0]
        .dir()
        .join("etc/ssh/sshd_config.d/10-porthole.conf");
    let text = fs::read_to_string(&drop_in).unwrap();
    fs::write(
        &drop_in,
        text.replace("\tTrustedUserCAKeys", "\t#TrustedUserCAKeys"),
    )
    .unwrap();
    let (ok, text) = doctor(&r.nodes[0], &[]);
    assert!(
        !ok && text.contains("sshd does not trust /etc/porthole/user_ca.pub"),
        "{text}"
    );
    let rogue = r.nodes[1].dir().join("keys/rogue_ca");
    keygen(&rogue);
    certify_host(&mut r.nodes[1], &rogue, &node_name(1));
    r.nodes[1].restart_sshd();
    let node2 = format!("{}:{}", node_name(1), r.nodes[1].port());
    let (ok, text) = doctor(&r.front, &["--node", &node2]);
    assert!(
        !ok && text.contains("not the host CA") && text.contains("hops will refuse it"),
        "{text}"
    );
    r.nodes[1].stop_sshd();
    let (ok, text) = doctor(&r.front, &["--node", &node2]);
    assert!(
        !ok && text.contains("unreachable within fleet.hop_timeout_ms"),
        "{text}"
    );
}

#[test]
fn a_host_of_both_roles_enters_its_own_instances_and_hops_to_the_others() {
    let r = region();
    // node-1 becomes "both": it also holds the user CA key and the host
    // CA, and finds node-2 by name.
    let n1 = &r.nodes[0];
    let etc = n1.dir().join("etc/porthole");
    fs::copy(&r.user_ca, etc.join("user_ca")).unwrap();
    fs::copy(r.host_ca.with_extension("pub"), etc.join("host_ca.pub")).unwrap();
    let mut hosts = fs::read_to_string(n1.dir().join("etc/hosts")).unwrap();
    hosts.push_str(&format!("{} {}\n", r.spots[2].addr, node_name(1)));
    fs::write(n1.dir().join("etc/hosts"), hosts).unwrap();
    n1.set_config("fleet.role", "both");
    n1.set_config("fleet.user_ca_key", "/etc/porthole/user_ca");
    n1.set_config("fleet.host_ca_public_key", "/etc/porthole/host_ca.pub");
    let on_n1 = |login: &str| n1.ssh(login, &r.key, &["hostname"]);
    // Its own instance: entered here, no hop.
    let out = on_n1(&format!("{SVC}-aaaaa"));
    assert_eq!(
        out.stdout_str().trim(),
        "srv-web1-aaaaa",
        "{}",
        out.describe()
    );
    let local = n1.expect_event(
        "local session.start",
        |e| e.name() == "session.start" && e.str("instance") == Some("srv-web1-aaaaa"),
        WAIT,
    );
    assert_eq!(local.get("via"), None, "not a hop");
    assert_eq!(local.get("hop"), None, "not a hop");
    // The other node's: hopped, node-2 names node-1 as the way in.
    let out = on_n1(&format!("{SVC}-bbbbb"));
    assert_eq!(
        out.stdout_str().trim(),
        "srv-web1-bbbbb",
        "{}",
        out.describe()
    );
    let there = r.nodes[1].expect_event(
        "hopped session.start",
        |e| e.name() == "session.start" && e.str("instance") == Some("srv-web1-bbbbb"),
        WAIT,
    );
    assert_eq!(there.str("via"), Some(node_name(0).as_str()));
    // Without a slug: either, decided by placement, both seen.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..16 {
        seen.insert(on_n1(SVC).stdout_str().trim().to_owned());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["srv-web1-aaaaa", "srv-web1-bbbbb"]
    );
}

#[test]
fn an_admin_ending_a_hopped_session_on_the_front_door_ends_it_with_the_message() {
    let r = region();
    let mut child = r.cmd(&format!("{SVC}-aaaaa")).args(&["sleep 60"]).spawn();
    // Running on the node (so the hop is through), listed on the front door.
    util::wait_for(WAIT, || {
        (Region::sessions(&r.nodes[0]).len() == 1).then_some(())
    })
    .expect("the session runs on node-1");
    let sessions = Region::sessions(&r.front);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let id = sessions[0]["id"].as_str().unwrap().to_owned();
    let out = Region::porthole(
        &r.front,
        &["kill", &id, "--message", "closed by the on-call admin"],
    );
    assert!(out.status.success(), "{}", util::lossy(&out.stderr));
    let (status, timed_out) = util::wait_deadline(&mut child, WAIT);
    assert!(!timed_out, "the client was not let go");
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("closed by the on-call admin"), "{err:?}");
    let end = r.front.expect_event(
        "front door session.end",
        |e| e.name() == "session.end" && e.str("session_id") == Some(id.as_str()),
        WAIT,
    );
    assert_eq!(end.str("reason"), Some("closed"));
    // The node's side of the session ends too (its client went away).
    r.nodes[0].expect_event(
        "node session.end",
        |e| e.name() == "session.end" && e.str("session_id") == Some(id.as_str()),
        WAIT,
    );
    util::wait_for(WAIT, || {
        Region::sessions(&r.nodes[0]).is_empty().then_some(())
    })
    .expect("nothing left on the node");
}

#[test]
fn a_node_whose_sshd_does_not_trust_the_user_ca_refuses_the_hop_with_a_sentence() {
    let mut r = region();
    let drop_in = r.nodes[0]
        .dir()
        .join("etc/ssh/sshd_config.d/10-porthole.conf");
    let text = fs::read_to_string(&drop_in).unwrap();
    fs::write(
        &drop_in,
        text.replace("\tTrustedUserCAKeys", "\t#TrustedUserCAKeys"),
    )
    .unwrap();
    r.nodes[0].restart_sshd();
    r.publish(&r.placement());
    let res = r.ssh(&format!("{SVC}-aaaaa"), &["true"]);
    assert_eq!(res.code(), Some(1), "{}", res.describe());
    assert!(
        res.stderr_str()
            .contains("node-1.fleet.test (the host running srv-web1-aaaaa) refused this front door's certificate"),
        "{}",
        res.describe()
    );
    let e = r.front.expect_event(
        "hop_refused",
        |e| e.is("session.rejected", &[("reason", "hop_refused")]),
        WAIT,
    );
    assert_eq!(e.severity, 4, "a warning for the admin");
}

// ----- the picker at the front door (issue 20) ---------------------------------

/// `ssh srv@front-door`: the menu lists the instances placement gives,
/// and the chosen one is reached through the hop like a direct login.
#[test]
fn the_picker_at_the_front_door_lists_placement_and_hops_to_the_chosen_instance() {
    let r = region();
    let out = r.ssh("srv", &["--json"]);
    assert!(out.success(), "{}", out.describe());
    let doc: Value = serde_json::from_str(&out.stdout_str()).unwrap();
    let logins: Vec<&str> = doc["services"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["login"].as_str().unwrap())
        .collect();
    assert_eq!(logins, [format!("{SVC}-aaaaa"), format!("{SVC}-bbbbb")]);
    let mut c = r.cmd("srv").tty(true).term("xterm").spawn_pty(24, 80);
    assert!(c.wait_for("[web_service]", WAIT), "{}", c.screen());
    c.send("\r");
    assert!(c.wait_for("instances of srv-web1", WAIT), "{}", c.screen());
    c.send("\x1b[B\x1b[B");
    assert!(c.wait_for("> srv-web1-bbbbb", WAIT), "{}", c.screen());
    c.send("\r");
    std::thread::sleep(Duration::from_millis(1000));
    c.send("echo HOST=$(hostname)\n");
    assert!(c.wait_for("HOST=srv-web1-bbbbb", WAIT), "{}", c.screen());
    c.send("exit\n");
    c.wait(WAIT).expect("the client exits");
    let ev = r.nodes[1].expect_event(
        "node session.start",
        |e| e.name() == "session.start" && e.str("instance") == Some("srv-web1-bbbbb"),
        WAIT,
    );
    assert_eq!(ev.str("owner"), Some(OWNER));
    assert_eq!(ev.str("via"), Some(FRONT));
    r.front.expect_event(
        "front door picker.chosen",
        |e| e.name() == "picker.chosen" && e.str("instance") == Some("srv-web1-bbbbb"),
        WAIT,
    );
}
