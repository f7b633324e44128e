#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 12, finding 5: strangers cannot grow the keys cache without
//! bound. sshd runs the keys hook before authentication for every name the
//! NSS module resolves, so anyone who can reach port 22 chooses the
//! service names the hook looks up, and each unknown one is a 404 the
//! cache remembers. Here 10 000 random `srv-…` names go through the real
//! keys hook binary, run as sshd runs it (`porthole-keys %u %f %t %k` as
//! the hook user, with the test's porthole.toml), and a few hundred more
//! through the real sshd, against the real HTTP control plane answering
//! 404: the cache directory stays under every cap the whole time, no lock
//! or temporary file remains, and a real service's answer survives.
//!
//! Runs in [`SessionMode::AuthProbe`]: the session shell is not involved.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const LEGIT: &str = "srv-legit1";
const OWNER: &str = "alice@example.com";
/// The shipped defaults (porthole.toml(5)); the test uses them as shipped.
const MAX_ENTRIES: u64 = 10_000;
const MAX_NEGATIVE: u64 = 1_000;
const MAX_BYTES: u64 = 64 * 1024 * 1024;
const HOOK_RUNS: u64 = 10_000;
const SSH_LOGINS: u64 = 300;

/// What is in the cache directory right now.
#[derive(Debug, Default)]
struct Census {
    /// Answers, 404s and failure records.
    entries: u64,
    /// 404s and failure records.
    negatives: u64,
    bytes: u64,
    locks: Vec<String>,
    temps: Vec<String>,
    others: Vec<String>,
}

fn census(dir: &Path) -> Census {
    let mut c = Census::default();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        // A file may vanish between readdir and stat (a sweep, a rename).
        let Ok(meta) = e.metadata() else { continue };
        if name.ends_with(".json") {
            c.entries += 1;
            c.bytes += meta.len();
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if text.contains("\"not_found\"") {
                c.negatives += 1;
            }
        } else if name.ends_with(".failed") {
            c.entries += 1;
            c.negatives += 1;
            c.bytes += meta.len();
        } else if name.ends_with(".lock") {
            c.locks.push(name);
        } else if name.ends_with(".tmp") {
            c.temps.push(name);
        } else if name != ".ledger" {
            c.others.push(name);
        }
    }
    c
}

fn assert_under_caps(c: &Census, when: &str) {
    assert!(
        c.entries <= MAX_ENTRIES && c.negatives <= MAX_NEGATIVE && c.bytes <= MAX_BYTES,
        "{when}: {} entries (cap {MAX_ENTRIES}), {} negatives (cap {MAX_NEGATIVE}), \
         {} bytes (cap {MAX_BYTES})",
        c.entries,
        c.negatives,
        c.bytes
    );
}

/// A small xorshift: names need to be unpredictable to the cache, not to
/// an attacker.
struct Names(u64);

impl Names {
    fn new(seed: u64) -> Names {
        Names(seed | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn word(&mut self, len: usize) -> String {
        const ABC: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| ABC[(self.next_u64() % ABC.len() as u64) as usize] as char)
            .collect()
    }

    /// `srv-<12>` or, one time in four, an instance `srv-<12>-<5>`.
    fn login(&mut self) -> String {
        let service = format!("srv-{}", self.word(12));
        if self.next_u64() % 4 == 0 {
            format!("{service}-{}", self.word(5))
        } else {
            service
        }
    }
}

/// The installed keys hook, run the way sshd runs it: `%u %f %t %k`, as
/// the hook user (uid and gid `porthole`, no supplementary groups), with an
/// empty environment, reading the test's porthole.toml.
fn hook(host: &TestHost, user: &str, key: &ClientKey) -> std::process::Output {
    let ids = host.ids();
    Command::new(host.bin_dir().join("porthole-keys"))
        .arg("--config")
        .arg(host.config_path())
        .args([user, &key.fingerprint, &key.key_type, &key.base64])
        .env_clear()
        .uid(ids.porthole)
        .gid(ids.porthole)
        .stdin(Stdio::null())
        .output()
        .expect("run porthole-keys")
}

#[test]
fn ten_thousand_random_service_names_keep_the_cache_under_its_caps() {
    let host = Arc::new(TestHost::start(TestHostOpts::auth_probe().timeout_ms(3000)));
    let key = host.key(KeyKind::Ed25519);
    host.control_plane()
        .set_body(LEGIT, &web_service(LEGIT, &[KeySpec::new(&key, OWNER)]));
    assert_accepted(&host.ssh(LEGIT, &key, &[]), LEGIT);
    let cache: PathBuf = host.cache_dir();
    assert!(cache.join(format!("{LEGIT}.json")).is_file());
    host.control_plane().reset_counts();

    // The cache is watched the whole time, not only at the end.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, cache) = (done.clone(), cache.clone());
        thread::spawn(move || {
            let mut looks = 0u64;
            let mut most = 0u64;
            while !done.load(Ordering::SeqCst) {
                let c = census(&cache);
                assert_under_caps(&c, "during the flood");
                most = most.max(c.negatives);
                looks += 1;
                thread::sleep(Duration::from_millis(50));
            }
            (looks, most)
        })
    };

    let started = Instant::now();
    let runs = Arc::new(AtomicU64::new(0));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let workers: Vec<_> = (0..3u64)
        .map(|w| {
            let (host, key, runs) = (host.clone(), key.clone(), runs.clone());
            thread::spawn(move || {
                let mut names = Names::new(seed ^ (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                while runs.fetch_add(1, Ordering::SeqCst) < HOOK_RUNS {
                    let user = names.login();
                    let out = hook(&host, &user, &key);
                    assert_eq!(out.status.code(), Some(1), "{user}: {out:?}");
                    assert!(out.stdout.is_empty(), "{user}: printed keys");
                }
            })
        })
        .collect();
    // Through the real sshd too (the NSS module resolves each name, sshd
    // runs the hook itself), alongside.
    let sshd_logins = {
        let (host, key) = (host.clone(), key.clone());
        thread::spawn(move || {
            let mut names = Names::new(seed ^ 0x5555);
            for _ in 0..SSH_LOGINS {
                let user = names.login();
                assert_refused(&host.ssh(&user, &key, &[]), &user);
            }
        })
    };
    for w in workers {
        w.join().unwrap();
    }
    sshd_logins.join().unwrap();
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let (looks, most_negatives) = watcher.join().unwrap();

    let c = census(&cache);
    eprintln!(
        "{HOOK_RUNS} hook runs and {SSH_LOGINS} sshd logins in {elapsed:?}; \
         {looks} looks at the cache, at most {most_negatives} negatives; \
         at the end {c:?}"
    );
    assert_under_caps(&c, "after the flood");
    assert!(c.locks.is_empty(), "lock files left: {:?}", c.locks);
    assert!(c.temps.is_empty(), "temporary files left: {:?}", c.temps);
    assert!(c.others.is_empty(), "unexpected files: {:?}", c.others);
    // The cap was reached and worked (the flood is ten times the cap).
    assert!(
        c.negatives > MAX_NEGATIVE / 2,
        "the cache kept too little to show the cap at work: {c:?}"
    );
    // Every name was asked about once: nothing wrongly served from the cache.
    let requests = host.control_plane().total_requests() as u64;
    assert!(
        requests >= HOOK_RUNS,
        "{requests} control-plane requests for {HOOK_RUNS} new names"
    );
    // The sweeps were logged for the admin, with what they removed.
    let swept: Vec<LogEvent> = host
        .events()
        .into_iter()
        .filter(|e| e.name() == "keys.cache_swept")
        .collect();
    assert!(
        swept.iter().any(|e| e.u64("evicted").unwrap_or(0) > 0),
        "no keys.cache_swept event evicting anything ({} sweeps)",
        swept.len()
    );
    // Cheap: sweeps are amortised over many writes, not one per login.
    assert!(
        swept.len() as u64 <= HOOK_RUNS / 50,
        "{} sweeps for {HOOK_RUNS} new names",
        swept.len()
    );
    let mut by_severity: BTreeMap<u8, usize> = BTreeMap::new();
    for e in &swept {
        *by_severity.entry(e.severity).or_default() += 1;
    }
    eprintln!("{} sweeps logged, by severity {by_severity:?}", swept.len());

    // The admin sees how full the cache is.
    let doctor = host.in_ns(&[env!("CARGO_BIN_EXE_porthole"), "doctor"]);
    let text = util::lossy(&doctor.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("] cache "))
        .unwrap_or_else(|| panic!("no cache line in:\n{text}"));
    assert!(
        line.starts_with("[ ok ]") && line.contains("(max 10000)") && line.contains("(max 1000)"),
        "{line}"
    );
    // The real service's answer was never pushed out, and logins go on.
    let legit = std::fs::read_to_string(cache.join(format!("{LEGIT}.json"))).unwrap();
    assert!(legit.contains("\"found\""), "{legit}");
    assert_accepted(&host.ssh(LEGIT, &key, &[]), LEGIT);
}

/// An admin who runs the keys hook by hand as root leaves a root-owned
/// ledger behind; the hook, run by sshd as its own user, replaces it and
/// goes on caching (the session shell needs the cached answer).
#[test]
fn a_ledger_left_by_root_does_not_stop_the_hook_from_caching() {
    use std::os::unix::fs::MetadataExt;
    let host = TestHost::start(TestHostOpts::auth_probe());
    let key = host.key(KeyKind::Ed25519);
    host.control_plane()
        .set_body(LEGIT, &web_service(LEGIT, &[KeySpec::new(&key, OWNER)]));
    let out = Command::new(host.bin_dir().join("porthole-keys"))
        .arg("--config")
        .arg(host.config_path())
        .args(["srv-debug1", &key.fingerprint, &key.key_type, &key.base64])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let ledger = host.cache_dir().join(".ledger");
    assert_eq!(std::fs::metadata(&ledger).unwrap().uid(), 0);
    assert_accepted(&host.ssh(LEGIT, &key, &[]), LEGIT);
    assert!(host.cache_dir().join(format!("{LEGIT}.json")).is_file());
    assert_eq!(
        std::fs::metadata(&ledger).unwrap().uid(),
        host.ids().porthole
    );
    let errors: Vec<String> = host
        .events()
        .into_iter()
        .filter(|e| e.name() == "keys.cache_error")
        .map(|e| e.raw)
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}
