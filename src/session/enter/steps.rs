//! The order of entering, as data: what the two children run, step by
//! step, computed from the [`Plan`] on the host side before the fork and
//! unit-tested here. The children only execute the list
//! ([`super::child::run_step`]); nothing here touches the system.
//!
//! Run by the setuid session shell (root) in the parent, before it forks;
//! it trusts the plan (read on the host side, see `shell::prepare`).
//!
//! The rules the lists keep (each a test below), from runc exec, nsenter
//! and their CVEs:
//! - the oom score is written through the host's `/proc` before `setns`
//!   into the container's mount namespace, and `chroot` comes after it;
//! - the LSM exec label is written through the host's procfs fd, which is
//!   then closed with every other host fd before any privilege is given up
//!   (CVE-2016-9962, CVE-2024-21626);
//! - rlimits are set while root may still raise them;
//! - without `no_new_privs` the seccomp filter needs CAP_SYS_ADMIN: it goes
//!   in before the ids change (runc's order); with it, as the very last step
//!   before exec, so as few of our own calls as possible run under it;
//! - every credential change is followed by clearing the dumpable flag
//!   again (the kernel resets it), before anything else runs;
//! - the parent-death signal, reset by the uid change, is armed again and
//!   the parent checked after it;
//! - stdio is set up as the container user (the pty is opened as it), and
//!   every fd is made close-on-exec after that, just before exec.

#![forbid(unsafe_code)]

use super::Plan;

/// One step of a child. Field-less so that a failure names it in one byte
/// (see `report`); what a step needs comes from the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    // ---- both children ----
    /// Die with our parent (SIGKILL).
    PdeathSig = 1,
    /// The parent is still the one we were forked by.
    CheckParent = 2,
    // ---- outer child (host pid namespace) ----
    /// Join the instance's cgroups (v1 `tasks`, v2 when not born in it).
    JoinCgroups = 3,
    /// The instance's `oom_score_adj`, through the host's `/proc`.
    OomScoreAdj = 4,
    /// setns into every namespace of the pinned init.
    SetNs = 5,
    /// chroot to the pinned root, cwd `/`.
    Chroot = 6,
    /// Fork the inner child (CLONE_PARENT: the supervisor's child); the
    /// outer child reports its pid and exits, the inner goes on.
    CloneInner = 7,
    // ---- inner child (the instance's pid namespace) ----
    /// Own session (and, with a pty, a controlling terminal of its own).
    SetSid = 8,
    /// The instance's LSM label as our exec label, via the host procfs.
    LsmExecLabel = 9,
    /// Close every fd but stdio, the status pipe and the pty socket.
    CloseHostFds = 10,
    /// The instance's rlimits (clamped when they cannot be raised).
    Rlimits = 11,
    /// Drop from the bounding set what the init does not have.
    DropBoundingSet = 12,
    ClearAmbient = 13,
    /// Load the instance's seccomp filter.
    Seccomp = 14,
    SetGroups = 15,
    SetGid = 16,
    /// Non-dumpable again (every credential change resets the flag).
    ClearDumpable = 17,
    SetUid = 18,
    /// Root in the container: capset to exactly the init's sets.
    CapsOfInit = 19,
    /// Any other user: capset to none (setuid dropped them; make sure).
    DropAllCaps = 20,
    /// The instance's umask (the shell runs with 077).
    Umask = 21,
    NoNewPrivs = 22,
    /// The effective ids are the plan's.
    CheckCreds = 23,
    /// chdir HOME as the user, or `/` with a notice.
    ChdirHome = 24,
    /// A terminal of the container's own devpts, its master sent out.
    Pty = 25,
    /// The supervisor's pipes as stdio.
    Stdio = 26,
    /// Tell the user on the session's stderr what `ChdirHome` changed.
    Notices = 27,
    /// Default dispositions, nothing blocked.
    ResetSignals = 28,
    /// Every fd but stdio close-on-exec.
    CloexecAll = 29,
    Exec = 30,
}

impl Step {
    const ALL: [Step; 30] = [
        Step::PdeathSig,
        Step::CheckParent,
        Step::JoinCgroups,
        Step::OomScoreAdj,
        Step::SetNs,
        Step::Chroot,
        Step::CloneInner,
        Step::SetSid,
        Step::LsmExecLabel,
        Step::CloseHostFds,
        Step::Rlimits,
        Step::DropBoundingSet,
        Step::ClearAmbient,
        Step::Seccomp,
        Step::SetGroups,
        Step::SetGid,
        Step::ClearDumpable,
        Step::SetUid,
        Step::CapsOfInit,
        Step::DropAllCaps,
        Step::Umask,
        Step::NoNewPrivs,
        Step::CheckCreds,
        Step::ChdirHome,
        Step::Pty,
        Step::Stdio,
        Step::Notices,
        Step::ResetSignals,
        Step::CloexecAll,
        Step::Exec,
    ];

    /// The step's one-byte code on the status pipe.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Changes the process's credentials (and so resets dumpable).
    pub fn changes_credentials(self) -> bool {
        matches!(
            self,
            Step::SetGroups | Step::SetGid | Step::SetUid | Step::CapsOfInit | Step::DropAllCaps
        )
    }

    /// Gives up some privilege: must not run while a host fd is open.
    pub fn gives_up_privilege(self) -> bool {
        self.changes_credentials()
            || matches!(
                self,
                Step::DropBoundingSet | Step::ClearAmbient | Step::Seccomp | Step::NoNewPrivs
            )
    }
}

/// The outer child, in the host's pid namespace: cgroups and oom score on
/// the host side, then every namespace and the root, then the inner child.
pub fn outer_steps(plan: &Plan) -> Vec<Step> {
    let mut s = vec![Step::PdeathSig, Step::CheckParent, Step::JoinCgroups];
    if plan.confinement.oom_score_adj.is_some() {
        s.push(Step::OomScoreAdj);
    }
    s.extend([Step::SetNs, Step::Chroot, Step::CloneInner]);
    s
}

/// The inner child, inside every namespace of the instance and still
/// root: confines itself as the instance is, becomes its user and execs.
pub fn inner_steps(plan: &Plan) -> Vec<Step> {
    let nnp = plan.creds.no_new_privs;
    let seccomp = plan.confinement.seccomp.is_some();
    let mut s = vec![Step::PdeathSig, Step::SetSid];
    if plan.confinement.lsm.is_some() {
        s.push(Step::LsmExecLabel);
    }
    s.push(Step::CloseHostFds);
    if !plan.confinement.rlimits.is_empty() {
        s.push(Step::Rlimits);
    }
    s.extend([Step::DropBoundingSet, Step::ClearAmbient]);
    if seccomp && !nnp {
        s.push(Step::Seccomp);
    }
    s.extend([
        Step::SetGroups,
        Step::SetGid,
        Step::ClearDumpable,
        Step::SetUid,
        Step::ClearDumpable,
        // setresuid cleared the parent-death signal: arm it again, then
        // make sure the parent did not die before that.
        Step::PdeathSig,
        Step::CheckParent,
        if plan.uid == 0 {
            Step::CapsOfInit
        } else {
            Step::DropAllCaps
        },
        Step::ClearDumpable,
        Step::Umask,
    ]);
    if nnp {
        s.push(Step::NoNewPrivs);
    }
    s.extend([
        Step::CheckCreds,
        Step::ChdirHome,
        if plan.pty.is_some() {
            Step::Pty
        } else {
            Step::Stdio
        },
        Step::Notices,
        Step::ResetSignals,
        Step::CloexecAll,
    ]);
    if seccomp && nnp {
        s.push(Step::Seccomp);
    }
    s.push(Step::Exec);
    s
}

/// Both lists as the forked process runs them: `CloneInner` ends the
/// outer child's part and starts the inner child's.
pub fn child_steps(plan: &Plan) -> Vec<Step> {
    let mut s = outer_steps(plan);
    s.extend(inner_steps(plan));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::confine::{Confinement, LsmLabel, SeccompProgram};
    use crate::session::container::ProcessCreds;
    use std::ffi::CString;

    fn plan(uid: u32, nnp: bool, seccomp: bool, lsm: bool, pty: bool) -> Plan {
        Plan {
            program: CString::default(),
            argv: Vec::new(),
            env: Vec::new(),
            uid,
            gid: uid,
            groups: Vec::new(),
            creds: ProcessCreds {
                no_new_privs: nnp,
                ..ProcessCreds::default()
            },
            home: CString::default(),
            pty: pty.then_some(super::super::WinSize { rows: 24, cols: 80 }),
            cgroups: Vec::new(),
            confinement: Confinement {
                seccomp: seccomp.then(|| SeccompProgram {
                    filter: Vec::new(),
                    flags: 0,
                }),
                lsm: lsm.then(|| LsmLabel::AppArmor("docker-default".into())),
                rlimits: vec![(
                    libc::RLIMIT_NOFILE,
                    libc::rlimit {
                        rlim_cur: 1024,
                        rlim_max: 4096,
                    },
                )],
                oom_score_adj: Some(0),
            },
            host_proc: None,
            program_fd: None,
            pass_fd: None,
        }
    }

    /// Every combination the plan can take.
    fn all_plans() -> Vec<Plan> {
        let mut out = Vec::new();
        for bits in 0..32u32 {
            let b = |i: u32| bits & (1 << i) != 0;
            out.push(plan(if b(0) { 0 } else { 1000 }, b(1), b(2), b(3), b(4)));
        }
        out
    }

    fn pos(steps: &[Step], step: Step) -> usize {
        steps
            .iter()
            .position(|s| *s == step)
            .unwrap_or_else(|| panic!("{step:?} missing from {steps:?}"))
    }

    fn before(steps: &[Step], a: Step, b: Step) {
        assert!(
            pos(steps, a) < pos(steps, b),
            "{a:?} not before {b:?}: {steps:?}"
        );
    }

    #[test]
    fn seccomp_goes_in_before_the_ids_change_without_no_new_privs() {
        let s = inner_steps(&plan(1000, false, true, false, false));
        assert_eq!(s.iter().filter(|x| **x == Step::Seccomp).count(), 1);
        before(&s, Step::DropBoundingSet, Step::Seccomp);
        before(&s, Step::Seccomp, Step::SetGroups);
        before(&s, Step::Seccomp, Step::SetUid);
        assert!(!s.contains(&Step::NoNewPrivs));
    }

    #[test]
    fn seccomp_is_the_last_step_before_exec_with_no_new_privs() {
        let s = inner_steps(&plan(1000, true, true, false, true));
        assert_eq!(s.iter().filter(|x| **x == Step::Seccomp).count(), 1);
        assert_eq!(&s[s.len() - 2..], &[Step::Seccomp, Step::Exec]);
        before(&s, Step::NoNewPrivs, Step::Seccomp);
    }

    #[test]
    fn no_filter_no_seccomp_step_and_no_no_new_privs_unless_the_init_has_it() {
        for p in all_plans() {
            let s = inner_steps(&p);
            assert_eq!(
                s.contains(&Step::Seccomp),
                p.confinement.seccomp.is_some(),
                "{s:?}"
            );
            assert_eq!(s.contains(&Step::NoNewPrivs), p.creds.no_new_privs, "{s:?}");
        }
    }

    #[test]
    fn dumpable_is_cleared_after_every_credential_change_before_anything_else() {
        for p in all_plans() {
            let s = inner_steps(&p);
            for (i, step) in s.iter().enumerate() {
                if !step.changes_credentials() {
                    continue;
                }
                // The next step that is not itself a credential change
                // clears the flag.
                let next = s[i + 1..].iter().find(|x| !x.changes_credentials());
                assert_eq!(next, Some(&Step::ClearDumpable), "after {step:?}: {s:?}");
            }
        }
    }

    #[test]
    fn host_fds_are_closed_before_any_privilege_is_given_up() {
        for p in all_plans() {
            let s = inner_steps(&p);
            let close = pos(&s, Step::CloseHostFds);
            for (i, step) in s.iter().enumerate() {
                if step.gives_up_privilege() {
                    assert!(close < i, "{step:?} before CloseHostFds: {s:?}");
                }
            }
            if p.confinement.lsm.is_some() {
                before(&s, Step::LsmExecLabel, Step::CloseHostFds);
            } else {
                assert!(!s.contains(&Step::LsmExecLabel));
            }
        }
    }

    #[test]
    fn rlimits_are_set_while_still_root() {
        let s = inner_steps(&plan(1000, false, false, false, false));
        before(&s, Step::Rlimits, Step::SetUid);
        before(&s, Step::Rlimits, Step::DropBoundingSet);
    }

    #[test]
    fn ids_change_group_first_and_capabilities_follow_the_user() {
        for p in all_plans() {
            let s = inner_steps(&p);
            before(&s, Step::SetGroups, Step::SetGid);
            before(&s, Step::SetGid, Step::SetUid);
            let caps = if p.uid == 0 {
                Step::CapsOfInit
            } else {
                Step::DropAllCaps
            };
            before(&s, Step::SetUid, caps);
            assert!(!s.contains(if p.uid == 0 {
                &Step::DropAllCaps
            } else {
                &Step::CapsOfInit
            }));
            before(&s, caps, Step::CheckCreds);
        }
    }

    #[test]
    fn parent_death_signal_is_armed_again_after_the_uid_change() {
        let s = inner_steps(&plan(1000, false, false, false, false));
        assert_eq!(s[0], Step::PdeathSig);
        let uid = pos(&s, Step::SetUid);
        let again = s[uid..]
            .iter()
            .position(|x| *x == Step::PdeathSig)
            .map(|i| i + uid);
        let check = s[uid..]
            .iter()
            .position(|x| *x == Step::CheckParent)
            .map(|i| i + uid);
        assert!(
            matches!((again, check), (Some(a), Some(c)) if a < c),
            "{s:?}"
        );
    }

    #[test]
    fn stdio_is_set_up_as_the_user_and_everything_is_cloexec_just_before_exec() {
        for p in all_plans() {
            let s = inner_steps(&p);
            let io = if p.pty.is_some() {
                Step::Pty
            } else {
                Step::Stdio
            };
            before(&s, Step::SetUid, io);
            before(&s, Step::ChdirHome, io);
            before(&s, io, Step::Notices);
            before(&s, io, Step::CloexecAll);
            before(&s, Step::ResetSignals, Step::Exec);
            assert_eq!(s.last(), Some(&Step::Exec));
            // Only the nnp filter may sit between the cloexec pass and exec.
            let tail = &s[pos(&s, Step::CloexecAll) + 1..];
            assert!(
                tail == [Step::Exec] || tail == [Step::Seccomp, Step::Exec],
                "{s:?}"
            );
        }
    }

    #[test]
    fn outer_child_writes_host_files_before_setns_and_chroots_after_it() {
        for p in all_plans() {
            let s = outer_steps(&p);
            assert_eq!(&s[..2], &[Step::PdeathSig, Step::CheckParent]);
            before(&s, Step::JoinCgroups, Step::SetNs);
            before(&s, Step::OomScoreAdj, Step::SetNs);
            before(&s, Step::SetNs, Step::Chroot);
            assert_eq!(s.last(), Some(&Step::CloneInner));
        }
        let mut p = plan(0, false, false, false, false);
        p.confinement.oom_score_adj = None;
        assert!(!outer_steps(&p).contains(&Step::OomScoreAdj));
    }

    #[test]
    fn the_child_runs_the_outer_list_then_the_inner_one() {
        let p = plan(0, true, true, true, true);
        let all = child_steps(&p);
        let outer = outer_steps(&p);
        assert_eq!(&all[..outer.len()], &outer[..]);
        assert_eq!(&all[outer.len()..], &inner_steps(&p)[..]);
        assert_eq!(all.iter().filter(|s| **s == Step::CloneInner).count(), 1);
    }

    #[test]
    fn step_codes_round_trip_and_are_distinct() {
        for s in Step::ALL {
            assert_eq!(Step::from_code(s.code()), Some(s));
        }
        assert_eq!(Step::from_code(0), None);
        assert_eq!(Step::from_code(31), None);
    }
}
