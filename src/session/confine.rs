//! The instance's confinement, reproduced for a session: its seccomp
//! filter, its LSM label (AppArmor profile or SELinux context), its
//! resource limits and its `oom_score_adj` — what `runc exec` applies to a
//! process it starts in a container. (Capabilities, no_new_privs, ids and
//! cgroups come from `container`/`enter`.)
//!
//! Rule: a session is never less confined than its instance. Whatever
//! porthole cannot reproduce exactly (an untrusted bundle, a syscall name
//! whose omission would loosen the filter, an action or flag we do not
//! implement, a filter on the init but none in the bundle) refuses the
//! session with a sentence; nothing here degrades to "enter anyway".
//!
//! What it trusts: the bundle's `config.json` only when it and the bundle
//! directory are root-owned and not group/other-writable (the platform
//! wrote them); the pinned init's `/proc` files for its label and limits;
//! libseccomp to compile the OCI profile the way runc does (the BPF program
//! is built here, on the host side, and only installed in the child).
//!
//! Everything is computed before forking; the child side only performs the
//! prepared steps (see `enter`).

use serde::Deserialize;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

const MAX_BUNDLE_CONFIG_BYTES: u64 = 16 * 1024 * 1024;
/// BPF_MAXINSNS: the kernel refuses longer classic-BPF programs.
const MAX_BPF_INSNS: usize = 4096;
const SECCOMP_FILTER_FLAG_TSYNC: u32 = 1;
const SECCOMP_FILTER_FLAG_LOG: u32 = 2;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u32 = 4;

/// Why the instance's confinement cannot be reproduced. Every variant
/// refuses the session; the variant says who can fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfineError {
    /// The bundle (or its config) could be changed by someone other than
    /// root: the platform admin must fix its ownership or mode.
    UntrustedBundle(String),
    /// The profile uses something porthole does not reproduce exactly
    /// (message names it): the platform admin changes the profile, or we
    /// implement it.
    Unsupported(String),
    /// The kernel or libseccomp failed a step: a host problem.
    Host(String),
}

impl std::fmt::Display for ConfineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfineError::UntrustedBundle(m) => {
                write!(f, "the instance's bundle is not trusted: {m}")
            }
            ConfineError::Unsupported(m) => {
                write!(
                    f,
                    "porthole cannot reproduce the instance's confinement: {m}"
                )
            }
            ConfineError::Host(m) => write!(f, "cannot prepare the instance's confinement: {m}"),
        }
    }
}

impl std::error::Error for ConfineError {}

/// What the session process applies before it execs, prepared on the host.
#[derive(Debug, Default)]
pub struct Confinement {
    pub seccomp: Option<SeccompProgram>,
    pub lsm: Option<LsmLabel>,
    /// (resource, limit) pairs read from the instance's init.
    pub rlimits: Vec<(u32, libc::rlimit)>,
    /// The init's `oom_score_adj`, written for the session before it joins
    /// the instance (inherited by everything it starts).
    pub oom_score_adj: Option<i32>,
}

/// A compiled filter ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Debug, Clone)]
pub struct SeccompProgram {
    pub filter: Vec<libc::sock_filter>,
    pub flags: u32,
}

/// The exec label of the instance's LSM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LsmLabel {
    /// AppArmor profile name (as `aa_change_onexec` takes it).
    AppArmor(String),
    /// SELinux context (as `setexeccon` takes it).
    SeLinux(String),
}

impl LsmLabel {
    /// The `/proc/thread-self/attr` file to write and what to write to it.
    pub fn attr_write(&self) -> (&'static str, String) {
        match self {
            LsmLabel::AppArmor(p) => ("attr/apparmor/exec", format!("exec {p}")),
            LsmLabel::SeLinux(c) => ("attr/exec", c.clone()),
        }
    }

    /// The older file, for kernels without the per-LSM directory.
    pub fn attr_fallback(&self) -> &'static str {
        "attr/exec"
    }
}

// ---- the OCI profile (runtime-spec config.json, linux.seccomp) ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciConfig {
    #[serde(default)]
    linux: Option<OciLinux>,
}

#[derive(Debug, Deserialize)]
struct OciLinux {
    #[serde(default)]
    seccomp: Option<OciSeccomp>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciSeccomp {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    syscalls: Vec<OciSyscall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciSyscall {
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<OciArg>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciArg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

/// A seccomp action as runc maps the OCI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    KillProcess,
    KillThread,
    Trap,
    Errno(u16),
    Trace(u16),
    Log,
    Allow,
}

impl Action {
    fn parse(name: &str, errno_ret: Option<u32>) -> Result<Action, ConfineError> {
        // runc: ERRNO and TRACE default to EPERM when errnoRet is absent.
        let ret = || -> Result<u16, ConfineError> {
            let v = errno_ret.unwrap_or(libc::EPERM as u32);
            u16::try_from(v)
                .map_err(|_| ConfineError::Unsupported(format!("errnoRet {v} is out of range")))
        };
        Ok(match name {
            "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
            "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
            "SCMP_ACT_TRAP" => Action::Trap,
            "SCMP_ACT_ERRNO" => Action::Errno(ret()?),
            "SCMP_ACT_TRACE" => Action::Trace(ret()?),
            "SCMP_ACT_LOG" => Action::Log,
            "SCMP_ACT_ALLOW" => Action::Allow,
            other => {
                return Err(ConfineError::Unsupported(format!(
                    "seccomp action {other} (porthole reproduces KILL, KILL_PROCESS, KILL_THREAD, TRAP, ERRNO, TRACE, LOG and ALLOW)"
                )))
            }
        })
    }

    /// How much the action lets through: leaving out a rule whose action
    /// is at least as permissive as the default can only tighten a filter.
    fn permissiveness(self) -> u8 {
        match self {
            Action::KillProcess | Action::KillThread => 0,
            Action::Trap | Action::Errno(_) => 1,
            // A tracer may let the call run.
            Action::Trace(_) => 2,
            Action::Log | Action::Allow => 3,
        }
    }

    fn to_scmp(self) -> libseccomp::ScmpAction {
        use libseccomp::ScmpAction as A;
        match self {
            Action::KillProcess => A::KillProcess,
            Action::KillThread => A::KillThread,
            Action::Trap => A::Trap,
            Action::Errno(e) => A::Errno(i32::from(e)),
            Action::Trace(t) => A::Trace(t),
            Action::Log => A::Log,
            Action::Allow => A::Allow,
        }
    }
}

/// A comparison on one syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCmp {
    pub index: u32,
    pub op: CmpOp,
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    NotEqual,
    Less,
    LessOrEqual,
    Equal,
    GreaterEqual,
    Greater,
    /// `(arg & mask) == value`; OCI spells the mask `value` and the datum
    /// `valueTwo`.
    MaskedEqual(u64),
}

/// One rule of the validated profile: a syscall number per name, or `None`
/// for a name this libseccomp does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    /// Conditions ANDed within one rule.
    pub conditions: Vec<ArgCmp>,
}

/// The profile after validation: everything in it is reproducible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub default: Action,
    pub architectures: Vec<String>,
    pub flags: u32,
    pub rules: Vec<Rule>,
}

/// Parses and validates `linux.seccomp` of an OCI config. `Ok(None)` when
/// the config has no seccomp section.
pub fn parse_profile(config_json: &[u8]) -> Result<Option<Profile>, ConfineError> {
    let cfg: OciConfig = serde_json::from_slice(config_json).map_err(|e| {
        ConfineError::Unsupported(format!("the bundle's config.json does not parse: {e}"))
    })?;
    let Some(sc) = cfg.linux.and_then(|l| l.seccomp) else {
        return Ok(None);
    };
    if sc.listener_path.as_deref().is_some_and(|p| !p.is_empty()) {
        return Err(ConfineError::Unsupported(
            "a seccomp notify listener (listenerPath)".into(),
        ));
    }
    let default = Action::parse(&sc.default_action, sc.default_errno_ret)?;
    let mut flags = 0;
    for f in &sc.flags {
        flags |= match f.as_str() {
            // One thread here: synchronising threads changes nothing.
            "SECCOMP_FILTER_FLAG_TSYNC" => SECCOMP_FILTER_FLAG_TSYNC,
            "SECCOMP_FILTER_FLAG_LOG" => SECCOMP_FILTER_FLAG_LOG,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            other => return Err(ConfineError::Unsupported(format!("seccomp flag {other}"))),
        };
    }
    let mut rules = Vec::new();
    for call in &sc.syscalls {
        let action = Action::parse(&call.action, call.errno_ret)?;
        let mut conditions = Vec::new();
        for a in &call.args {
            if a.index > 5 {
                return Err(ConfineError::Unsupported(format!(
                    "a condition on syscall argument {}",
                    a.index
                )));
            }
            let (op, value) = match a.op.as_str() {
                "SCMP_CMP_NE" => (CmpOp::NotEqual, a.value),
                "SCMP_CMP_LT" => (CmpOp::Less, a.value),
                "SCMP_CMP_LE" => (CmpOp::LessOrEqual, a.value),
                "SCMP_CMP_EQ" => (CmpOp::Equal, a.value),
                "SCMP_CMP_GE" => (CmpOp::GreaterEqual, a.value),
                "SCMP_CMP_GT" => (CmpOp::Greater, a.value),
                "SCMP_CMP_MASKED_EQ" => (CmpOp::MaskedEqual(a.value), a.value_two),
                other => {
                    return Err(ConfineError::Unsupported(format!(
                        "seccomp comparison {other}"
                    )))
                }
            };
            conditions.push(ArgCmp {
                index: a.index,
                op,
                value,
            });
        }
        for name in &call.names {
            rules.push(Rule {
                name: name.clone(),
                action,
                conditions: conditions.clone(),
            });
        }
    }
    Ok(Some(Profile {
        default,
        architectures: sc.architectures,
        flags,
        rules,
    }))
}

/// Splits a rule the way runc does: conditions on distinct arguments are
/// ANDed in one rule; when one argument has several conditions, each
/// becomes its own rule (ORed), as libseccomp cannot AND two comparisons
/// of the same argument.
pub fn rule_condition_sets(conditions: &[ArgCmp]) -> Vec<Vec<ArgCmp>> {
    let mut seen = [0u8; 6];
    for c in conditions {
        if let Some(n) = seen.get_mut(c.index as usize) {
            *n = n.saturating_add(1);
        }
    }
    if seen.iter().any(|&n| n > 1) {
        conditions.iter().map(|c| vec![*c]).collect()
    } else {
        vec![conditions.to_vec()]
    }
}

/// Whether a rule for a syscall this libseccomp cannot name may be left
/// out: only when the default action is at most as permissive as the
/// rule's (then the call falls to the default, which is as strict or
/// stricter). A deny rule under an allow default cannot be dropped.
pub fn may_skip_unknown(rule: &Rule, default: Action) -> bool {
    default.permissiveness() <= rule.action.permissiveness()
}

fn scmp_err(what: &str) -> impl FnOnce(libseccomp::error::SeccompError) -> ConfineError + '_ {
    move |e| ConfineError::Host(format!("libseccomp {what}: {e}"))
}

/// Compiles a validated profile to a BPF program with libseccomp.
pub fn compile(profile: &Profile) -> Result<SeccompProgram, ConfineError> {
    use libseccomp::{ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
    let mut ctx =
        ScmpFilterContext::new(profile.default.to_scmp()).map_err(scmp_err("new filter"))?;
    // The session sets no_new_privs itself exactly when the instance has it.
    ctx.set_ctl_nnp(false).map_err(scmp_err("no_new_privs"))?;
    let native = ScmpArch::native();
    for a in &profile.architectures {
        let arch: ScmpArch = a
            .parse()
            .map_err(|_| ConfineError::Unsupported(format!("seccomp architecture {a}")))?;
        if arch != native {
            ctx.add_arch(arch).map_err(scmp_err("add architecture"))?;
        }
    }
    for rule in &profile.rules {
        // libseccomp refuses a rule that repeats the default; runc skips it.
        if rule.action == profile.default {
            continue;
        }
        let Ok(sys) = ScmpSyscall::from_name(&rule.name) else {
            if may_skip_unknown(rule, profile.default) {
                continue;
            }
            return Err(ConfineError::Unsupported(format!(
                "syscall {} is denied by the profile but unknown to this host's libseccomp",
                rule.name
            )));
        };
        for set in rule_condition_sets(&rule.conditions) {
            let cmps: Vec<ScmpArgCompare> = set
                .iter()
                .map(|c| {
                    let op = match c.op {
                        CmpOp::NotEqual => ScmpCompareOp::NotEqual,
                        CmpOp::Less => ScmpCompareOp::Less,
                        CmpOp::LessOrEqual => ScmpCompareOp::LessOrEqual,
                        CmpOp::Equal => ScmpCompareOp::Equal,
                        CmpOp::GreaterEqual => ScmpCompareOp::GreaterEqual,
                        CmpOp::Greater => ScmpCompareOp::Greater,
                        CmpOp::MaskedEqual(m) => ScmpCompareOp::MaskedEqual(m),
                    };
                    ScmpArgCompare::new(c.index, op, c.value)
                })
                .collect();
            ctx.add_rule_conditional(rule.action.to_scmp(), sys, &cmps)
                .map_err(|e| {
                    ConfineError::Unsupported(format!("the rule for {}: {e}", rule.name))
                })?;
        }
    }
    // libseccomp 2.5 (Debian 12) exports to an fd only: a memfd.
    // SAFETY: the name is NUL-terminated; flags are constants.
    let raw = unsafe { libc::memfd_create(c"porthole-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(ConfineError::Host(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: memfd_create just returned this fd; nothing else owns it.
    let out = unsafe { OwnedFd::from_raw_fd(raw) };
    ctx.export_bpf(&out).map_err(scmp_err("export"))?;
    let mut bytes = Vec::new();
    let mut f = File::from(out);
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0))
        .and_then(|_| f.read_to_end(&mut bytes))
        .map_err(|e| ConfineError::Host(format!("reading the compiled filter: {e}")))?;
    let filter = bpf_from_bytes(&bytes)?;
    Ok(SeccompProgram {
        filter,
        flags: profile.flags,
    })
}

fn bpf_from_bytes(bytes: &[u8]) -> Result<Vec<libc::sock_filter>, ConfineError> {
    if bytes.is_empty() || bytes.len() % 8 != 0 {
        return Err(ConfineError::Host(format!(
            "libseccomp produced {} bytes of BPF",
            bytes.len()
        )));
    }
    let insns: Vec<libc::sock_filter> = bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    if insns.len() > MAX_BPF_INSNS {
        return Err(ConfineError::Unsupported(format!(
            "the compiled filter has {} instructions (the kernel takes {MAX_BPF_INSNS})",
            insns.len()
        )));
    }
    Ok(insns)
}

/// The `Seccomp:` mode of `/proc/PID/status` (0 none, 1 strict, 2 filter).
pub fn seccomp_mode(status: &str) -> Option<u8> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads the bundle's `config.json` if the bundle is trusted: the
/// directory and the file root-owned, not group/other-writable, the file
/// regular and not a symlink. `Ok(None)` when the bundle has no config.
pub fn read_trusted_config(bundle: &Path) -> Result<Option<Vec<u8>>, ConfineError> {
    let untrusted =
        |p: &Path, why: &str| ConfineError::UntrustedBundle(format!("{}: {why}", p.display()));
    let check = |p: &Path, m: &std::fs::Metadata| -> Result<(), ConfineError> {
        if m.uid() != 0 {
            return Err(untrusted(p, "not owned by root"));
        }
        if m.mode() & 0o022 != 0 {
            return Err(untrusted(p, "writable by group or others"));
        }
        Ok(())
    };
    let dir_meta = match std::fs::symlink_metadata(bundle) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ConfineError::Host(format!("{}: {e}", bundle.display()))),
    };
    if !dir_meta.is_dir() {
        return Err(untrusted(bundle, "not a directory"));
    }
    check(bundle, &dir_meta)?;
    let path = bundle.join("config.json");
    // Never an open that could act on a device or block on a FIFO: the
    // same O_PATH, fstat, reopen rule as every other file read as root.
    use crate::session::container::{open_host_regular, FileError};
    let file = match open_host_regular(&path) {
        Ok(f) => f,
        Err(FileError::Unavailable(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(FileError::NotRegular(_)) => return Err(untrusted(&path, "not a regular file")),
        Err(e) => return Err(untrusted(&path, &e.to_string())),
    };
    let meta = file
        .metadata()
        .map_err(|e| ConfineError::Host(format!("{}: {e}", path.display())))?;
    check(&path, &meta)?;
    let mut bytes = Vec::new();
    file.take(MAX_BUNDLE_CONFIG_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| ConfineError::Host(format!("{}: {e}", path.display())))?;
    Ok(Some(bytes))
}

/// Reads the confinement config of a bundle whose rootfs the runtime
/// recorded: trusted as [`read_trusted_config`], and its `root.path`
/// (relative to the bundle or absolute) must be that rootfs — so a label
/// cannot make us read another container's (or any) config.json.
pub fn read_bound_config(bundle: &Path, rootfs: &Path) -> Result<Option<Vec<u8>>, ConfineError> {
    let Some(bytes) = read_trusted_config(bundle)? else {
        return Ok(None);
    };
    #[derive(Deserialize)]
    struct Root {
        path: String,
    }
    #[derive(Deserialize)]
    struct WithRoot {
        root: Option<Root>,
    }
    let named = serde_json::from_slice::<WithRoot>(&bytes)
        .ok()
        .and_then(|c| c.root)
        .map(|r| bundle.join(r.path));
    if named.as_deref() != Some(rootfs) {
        return Err(ConfineError::UntrustedBundle(format!(
            "{}/config.json describes another root filesystem than the container's ({})",
            bundle.display(),
            rootfs.display()
        )));
    }
    Ok(Some(bytes))
}

/// The seccomp program a session of this instance gets: the bundle's
/// profile, cross-checked with the init's mode (a filtered init whose
/// profile we cannot find is refused).
pub fn seccomp_for(
    config: Option<&[u8]>,
    init_mode: Option<u8>,
) -> Result<Option<SeccompProgram>, ConfineError> {
    let profile = match config {
        Some(c) => parse_profile(c)?,
        None => None,
    };
    match (profile, init_mode) {
        (Some(p), _) => compile(&p).map(Some),
        (None, Some(0)) => Ok(None),
        (None, Some(1)) => Err(ConfineError::Unsupported(
            "the instance's init runs in seccomp strict mode".into(),
        )),
        (None, Some(_)) => Err(ConfineError::Unsupported(
            "the instance's init runs under a seccomp filter that its bundle does not describe"
                .into(),
        )),
        (None, None) => Err(ConfineError::Host(
            "cannot read the instance's seccomp mode".into(),
        )),
    }
}

/// Whether the instance's seccomp profile (from its bundle's config.json)
/// surely lets the session call `name` (with any arguments). No profile:
/// yes. A rule without conditions decides; otherwise the default action,
/// and then only if every conditional rule for it allows too. Used before
/// entering for `execveat`, which starts porthole-sftp (issue 17).
pub fn allows_syscall(config: Option<&[u8]>, name: &str) -> bool {
    let p = match config.map(parse_profile) {
        None | Some(Ok(None)) => return true,
        Some(Err(_)) => return false,
        Some(Ok(Some(p))) => p,
    };
    let allowed = |a: &Action| matches!(a, Action::Allow | Action::Log);
    let rules: Vec<&Rule> = p.rules.iter().filter(|r| r.name == name).collect();
    if let Some(r) = rules.iter().find(|r| r.conditions.is_empty()) {
        return allowed(&r.action);
    }
    allowed(&p.default) && rules.iter().all(|r| allowed(&r.action))
}

/// Parses the LSM label of a process from its `attr/current` text.
/// AppArmor: `profile (enforce)` → the profile; `unconfined` → none.
pub fn parse_label(lsm: &str, current: &str) -> Option<LsmLabel> {
    let text = current.trim_end_matches(['\0', '\n']).trim();
    if text.is_empty() {
        return None;
    }
    match lsm {
        "apparmor" => {
            let name = text
                .strip_suffix(')')
                .and_then(|t| t.rsplit_once(" ("))
                .map(|(n, _)| n)
                .unwrap_or(text);
            (name != "unconfined").then(|| LsmLabel::AppArmor(name.to_owned()))
        }
        "selinux" => Some(LsmLabel::SeLinux(text.to_owned())),
        _ => None,
    }
}

/// The major LSM that labels processes on this host, from
/// `/sys/kernel/security/lsm` (none when it cannot be read: securityfs not
/// mounted means no LSM policy we could apply either).
pub fn active_label_lsm(list: &str) -> Option<&'static str> {
    let names: Vec<&str> = list.trim().split(',').collect();
    if names.contains(&"apparmor") {
        Some("apparmor")
    } else if names.contains(&"selinux") {
        Some("selinux")
    } else {
        None
    }
}

/// The init's label, read through its pinned `/proc/PID` directory.
pub fn lsm_for(
    read_proc: impl Fn(&str) -> Option<String>,
) -> Result<Option<LsmLabel>, ConfineError> {
    let Ok(list) = std::fs::read_to_string("/sys/kernel/security/lsm") else {
        return Ok(None);
    };
    let Some(lsm) = active_label_lsm(&list) else {
        return Ok(None);
    };
    let per_lsm = format!("attr/{lsm}/current");
    let current = read_proc(&per_lsm)
        .or_else(|| read_proc("attr/current"))
        .ok_or_else(|| ConfineError::Host(format!("cannot read the instance's {lsm} label")))?;
    Ok(parse_label(lsm, &current))
}

/// `/proc/PID/limits` row names, in resource order (RLIMIT_CPU = 0 …
/// RLIMIT_RTTIME = 15).
const LIMIT_NAMES: [&str; 16] = [
    "Max cpu time",
    "Max file size",
    "Max data size",
    "Max stack size",
    "Max core file size",
    "Max resident set",
    "Max processes",
    "Max open files",
    "Max locked memory",
    "Max address space",
    "Max file locks",
    "Max pending signals",
    "Max msgqueue size",
    "Max nice priority",
    "Max realtime priority",
    "Max realtime timeout",
];

/// Parses the init's `/proc/PID/limits` (read through the pinned
/// directory; `prlimit(2)` on another process needs CAP_SYS_RESOURCE,
/// which hardened hosts take from root). Every one of the 16 limits must
/// be there: a partial table is an error, not a guess.
pub fn parse_limits(text: &str) -> Result<Vec<(u32, libc::rlimit)>, ConfineError> {
    let value = |v: &str| -> Option<libc::rlim_t> {
        if v == "unlimited" {
            Some(libc::RLIM_INFINITY)
        } else {
            v.parse().ok()
        }
    };
    let mut out = Vec::new();
    for (res, name) in LIMIT_NAMES.iter().enumerate() {
        let row = text
            .lines()
            .find_map(|l| l.strip_prefix(name).filter(|r| r.starts_with("  ")))
            .ok_or_else(|| ConfineError::Host(format!("the instance's limits lack {name:?}")))?;
        let mut cols = row.split_ascii_whitespace();
        let (Some(cur), Some(max)) = (cols.next().and_then(value), cols.next().and_then(value))
        else {
            return Err(ConfineError::Host(format!(
                "the instance's limit {name:?} does not parse"
            )));
        };
        out.push((
            res as u32,
            libc::rlimit {
                rlim_cur: cur,
                rlim_max: max,
            },
        ));
    }
    Ok(out)
}

/// What the session may set for one limit when it cannot raise a hard
/// limit (no CAP_SYS_RESOURCE): never above the instance's, never above
/// what we hold. Lower than the instance is more confined, never less.
pub fn clamp_limit(want: libc::rlimit, have: libc::rlimit) -> libc::rlimit {
    let max = want.rlim_max.min(have.rlim_max);
    libc::rlimit {
        rlim_cur: want.rlim_cur.min(max),
        rlim_max: max,
    }
}

/// Opens the host's procfs as a directory, for the child to write its LSM
/// exec label through (never the container's `/proc`, which a tenant with
/// CAP_SYS_ADMIN could have mounted over: the runc CVE-2019-16884 class).
pub fn host_proc() -> std::io::Result<OwnedFd> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open("/proc")?;
    let fd = OwnedFd::from(f);
    // procfs is what it claims to be.
    // SAFETY: fstatfs into a zeroed local with a live fd.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if st.f_type != libc::PROC_SUPER_MAGIC {
        return Err(std::io::Error::other("/proc is not procfs"));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> Result<Option<Profile>, ConfineError> {
        parse_profile(json.as_bytes())
    }

    #[test]
    fn execveat_is_allowed_only_when_the_profile_surely_allows_it() {
        let allow_all = br#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW"}}}"#;
        let deny_one = br#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["execveat"],"action":"SCMP_ACT_ERRNO"}]}}}"#;
        let allow_list = br#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["execve","execveat"],"action":"SCMP_ACT_ALLOW"}]}}}"#;
        let no_execveat = br#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["execve"],"action":"SCMP_ACT_ALLOW"}]}}}"#;
        assert!(allows_syscall(None, "execveat"));
        assert!(allows_syscall(Some(b"{}"), "execveat"));
        assert!(allows_syscall(Some(allow_all), "execveat"));
        assert!(!allows_syscall(Some(deny_one), "execveat"));
        assert!(allows_syscall(Some(allow_list), "execveat"));
        assert!(!allows_syscall(Some(no_execveat), "execveat"));
    }

    #[test]
    fn no_seccomp_section_is_none() {
        assert_eq!(profile(r#"{"process":{}}"#).unwrap(), None);
        assert_eq!(profile(r#"{"linux":{}}"#).unwrap(), None);
    }

    #[test]
    fn actions_errnos_and_conditions_parse_like_runc() {
        let p = profile(
            r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW",
            "architectures":["SCMP_ARCH_X86_64"],
            "flags":["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls":[
              {"names":["unshare","keyctl"],"action":"SCMP_ACT_ERRNO"},
              {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":38,
               "args":[{"index":0,"value":255,"valueTwo":8,"op":"SCMP_CMP_MASKED_EQ"}]},
              {"names":["kill"],"action":"SCMP_ACT_KILL"}]}}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.default, Action::Allow);
        assert_eq!(p.flags, SECCOMP_FILTER_FLAG_LOG);
        assert_eq!(p.rules.len(), 4);
        assert_eq!(p.rules[0].action, Action::Errno(libc::EPERM as u16));
        assert_eq!(p.rules[1].name, "keyctl");
        assert_eq!(p.rules[2].action, Action::Errno(38));
        assert_eq!(
            p.rules[2].conditions,
            vec![ArgCmp {
                index: 0,
                op: CmpOp::MaskedEqual(255),
                value: 8
            }]
        );
        assert_eq!(p.rules[3].action, Action::KillThread);
    }

    #[test]
    fn what_cannot_be_reproduced_is_an_error() {
        for (json, needle) in [
            (
                r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_NOTIFY"}}}"#,
                "NOTIFY",
            ),
            (
                r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/x.sock"}}}"#,
                "listener",
            ),
            (
                r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_NEW"]}}}"#,
                "FLAG_NEW",
            ),
            (
                r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_WHATEVER"}]}]}}}"#,
                "WHATEVER",
            ),
            (
                r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}}}"#,
                "argument 6",
            ),
            (
                r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":70000}}}"#,
                "70000",
            ),
            (r#"{"linux":{"seccomp":{}}}"#, "parse"),
        ] {
            let e = profile(json).unwrap_err();
            assert!(e.to_string().contains(needle), "{json}: {e}");
        }
    }

    #[test]
    fn unknown_syscalls_are_skipped_only_when_that_tightens() {
        let rule = |action| Rule {
            name: "future_call".into(),
            action,
            conditions: vec![],
        };
        // Allow-list profile: an unknown allowed call falls to the deny default.
        assert!(may_skip_unknown(&rule(Action::Allow), Action::Errno(1)));
        // Deny-list profile: dropping the deny rule would let it through.
        assert!(!may_skip_unknown(&rule(Action::Errno(1)), Action::Allow));
        assert!(!may_skip_unknown(
            &rule(Action::KillThread),
            Action::Errno(1)
        ));
        assert!(may_skip_unknown(
            &rule(Action::Errno(1)),
            Action::KillThread
        ));

        let deny_list = profile(
            r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["no_such_syscall_porthole"],"action":"SCMP_ACT_ERRNO"}]}}}"#,
        )
        .unwrap()
        .unwrap();
        let e = compile(&deny_list).unwrap_err();
        assert!(e.to_string().contains("no_such_syscall_porthole"), "{e}");
        let allow_list = profile(
            r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["read","no_such_syscall_porthole"],"action":"SCMP_ACT_ALLOW"}]}}}"#,
        )
        .unwrap()
        .unwrap();
        assert!(compile(&allow_list).is_ok());
    }

    #[test]
    fn same_argument_twice_becomes_separate_rules() {
        let c = |index, value| ArgCmp {
            index,
            op: CmpOp::Equal,
            value,
        };
        assert_eq!(rule_condition_sets(&[c(0, 1), c(1, 2)]).len(), 1);
        assert_eq!(rule_condition_sets(&[c(0, 1), c(0, 2)]).len(), 2);
        assert_eq!(rule_condition_sets(&[]), vec![Vec::<ArgCmp>::new()]);
    }

    #[test]
    fn compiles_a_docker_like_profile() {
        let p = profile(
            r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
            "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
            "syscalls":[{"names":["read","write","exit_group","clone"],"action":"SCMP_ACT_ALLOW"},
            {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"op":"SCMP_CMP_MASKED_EQ"}]}]}}}"#,
        )
        .unwrap()
        .unwrap();
        let prog = compile(&p).unwrap();
        assert!(prog.filter.len() > 5 && prog.filter.len() <= MAX_BPF_INSNS);
    }

    #[test]
    fn init_mode_without_a_profile_is_refused() {
        assert!(seccomp_for(None, Some(0)).unwrap().is_none());
        assert!(seccomp_for(None, Some(2)).is_err());
        assert!(seccomp_for(None, Some(1)).is_err());
        assert!(seccomp_for(None, None).is_err());
        assert_eq!(
            seccomp_mode("Name:\tsh\nSeccomp:\t2\nSeccomp_filters:\t1\n"),
            Some(2)
        );
    }

    #[test]
    fn limits_table_parses_and_clamps_only_downwards() {
        let text = std::fs::read_to_string("/proc/self/limits").unwrap();
        let l = parse_limits(&text).unwrap();
        assert_eq!(l.len(), 16);
        let mut nofile = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a live local.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) };
        assert_eq!(l[libc::RLIMIT_NOFILE as usize].1.rlim_cur, nofile.rlim_cur);
        assert_eq!(l[libc::RLIMIT_NOFILE as usize].1.rlim_max, nofile.rlim_max);
        assert!(parse_limits("Limit  Soft Limit  Hard Limit  Units\n").is_err());
        let bad = text.replace("Max open files", "Max open filez");
        assert!(parse_limits(&bad).is_err());
        let r = |c, m| libc::rlimit {
            rlim_cur: c,
            rlim_max: m,
        };
        let c = clamp_limit(r(100, 1000), r(50, 500));
        assert_eq!((c.rlim_cur, c.rlim_max), (100, 500));
        let c = clamp_limit(r(800, 1000), r(50, 500));
        assert_eq!((c.rlim_cur, c.rlim_max), (500, 500));
    }

    #[test]
    fn labels() {
        assert_eq!(
            parse_label("apparmor", "docker-default (enforce)\n"),
            Some(LsmLabel::AppArmor("docker-default".into()))
        );
        assert_eq!(parse_label("apparmor", "unconfined\n"), None);
        assert_eq!(
            parse_label("selinux", "system_u:system_r:container_t:s0:c1,c2\0"),
            Some(LsmLabel::SeLinux(
                "system_u:system_r:container_t:s0:c1,c2".into()
            ))
        );
        assert_eq!(
            active_label_lsm("lockdown,capability,yama,apparmor\n"),
            Some("apparmor")
        );
        assert_eq!(active_label_lsm("capability,selinux"), Some("selinux"));
        assert_eq!(active_label_lsm("capability,landlock,yama"), None);
        assert_eq!(
            LsmLabel::AppArmor("p".into()).attr_write(),
            ("attr/apparmor/exec", "exec p".to_string())
        );
    }

    #[test]
    fn bundles_must_be_root_owned_and_not_writable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let b = d.path().join("bundle");
        std::fs::create_dir(&b).unwrap();
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(read_trusted_config(&b).unwrap(), None);
        std::fs::write(b.join("config.json"), b"{}").unwrap();
        std::fs::set_permissions(
            b.join("config.json"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(read_trusted_config(&b).unwrap(), Some(b"{}".to_vec()));
            std::fs::set_permissions(
                b.join("config.json"),
                std::fs::Permissions::from_mode(0o666),
            )
            .unwrap();
            assert!(matches!(
                read_trusted_config(&b),
                Err(ConfineError::UntrustedBundle(_))
            ));
        } else {
            assert!(matches!(
                read_trusted_config(&b),
                Err(ConfineError::UntrustedBundle(_))
            ));
        }
        assert_eq!(
            read_trusted_config(&d.path().join("missing")).unwrap(),
            None
        );
    }
}
