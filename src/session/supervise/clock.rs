//! The session's clock: when to warn and when to close for the maximum
//! duration, idleness and drains.
//!
//! Pure: it reads no clock and makes no system call. The supervisor hands
//! it the time ([`Now`]), the client's input and the drain in force, and
//! acts on what it answers; the tests below drive it with made-up times.
//! Nothing here is trusted input: the limits come from the host's
//! configuration (narrowed by the control plane, see `limits::effective`)
//! and drains from root-owned registry files.
//!
//! The rules:
//! - a warning is given once per threshold of time left; crossing several
//!   at once gives one warning, not a burst ([`Warnings`]);
//! - the maximum duration counts from the session's start, idleness from
//!   the last client input, and input gives the idle warnings back;
//! - a drain counts down to its wall-clock deadline; a new or changed drain
//!   is announced at once (the thresholds already passed are then spent)
//!   and a cancelled one is announced too;
//! - at the instant a limit runs out the session closes; when several run
//!   out together the first of maximum duration, idle, drain gives the
//!   reason and the message;
//! - once closing, nothing more is said.

use super::{human, DrainNotice, EndReason};
use std::time::Duration;

/// The time as the clock sees it: monotonic time since the session
/// started (limits must not move with the wall clock), and the wall clock
/// for drain deadlines (the admin gives them as a date).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub elapsed: Duration,
    pub unix: i64,
}

/// The limits the clock enforces (from `Controls`).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub max_duration: Option<Duration>,
    /// None for sessions without a terminal: a batch command is not idle.
    pub idle_timeout: Option<Duration>,
    /// Warnings before a duration or idle close, as time left.
    pub warn_before: Vec<Duration>,
    /// Notices before a drain deadline, as time left.
    pub drain_notices: Vec<Duration>,
}

/// Something to tell the user (and the audit log) without ending anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    MaxDuration { left: Duration, max: Duration },
    Idle { left: Duration },
    Drain { message: String, left: Duration },
    Undrain,
}

impl Notice {
    /// The audit `kind` of the notice.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::MaxDuration { .. } => "max_duration",
            Notice::Idle { .. } => "idle",
            Notice::Drain { .. } => "drain",
            Notice::Undrain => "undrain",
        }
    }

    pub fn text(&self) -> String {
        match self {
            Notice::MaxDuration { left, max } => format!(
                "this session will be closed in {} (maximum session duration {})",
                human(*left),
                human(*max)
            ),
            Notice::Idle { left } => format!(
                "no input for a while: this session will be closed in {} unless you type something",
                human(*left)
            ),
            Notice::Drain { message, left } => {
                format!(
                    "{message} - this session will be closed in {}",
                    human(*left)
                )
            }
            Notice::Undrain => "maintenance cancelled; this session stays open".into(),
        }
    }
}

/// A limit ran out: the session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    MaxDuration { max: Duration },
    Idle { idle: Duration },
    Drained { message: String },
}

impl Close {
    pub fn reason(&self) -> EndReason {
        match self {
            Close::MaxDuration { .. } => EndReason::MaxDuration,
            Close::Idle { .. } => EndReason::Idle,
            Close::Drained { .. } => EndReason::Drained,
        }
    }

    /// What the user is told at the end.
    pub fn message(&self) -> String {
        match self {
            Close::MaxDuration { max } => format!(
                "session closed: the maximum session duration is {}",
                human(*max)
            ),
            Close::Idle { idle } => format!("session closed after {} without input", human(*idle)),
            Close::Drained { message } => format!("session closed for maintenance: {message}"),
        }
    }
}

/// What one tick decided: notices to give, in order, then perhaps a close.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tick {
    pub notices: Vec<Notice>,
    pub close: Option<Close>,
}

/// Warnings not yet given, as thresholds of time left. Crossing several at
/// once (a short limit) gives one warning, not a burst.
#[derive(Debug, Clone)]
pub struct Warnings {
    /// Ascending.
    at: Vec<Duration>,
    /// The first `pending` thresholds (the smallest) are still to come:
    /// time left only falls, so the largest are given first.
    pending: usize,
}

impl Warnings {
    pub fn new(mut at: Vec<Duration>) -> Warnings {
        at.sort();
        let pending = at.len();
        Warnings { at, pending }
    }

    /// Every threshold pending again (input resets the idle warnings);
    /// no allocation, since it runs on each keystroke.
    fn reset(&mut self) {
        self.pending = self.at.len();
    }

    /// True when a warning is due now (time left fell to a threshold).
    pub fn due(&mut self, left: Duration) -> bool {
        let before = self.pending;
        self.pending = self.at[..before].partition_point(|t| left > *t);
        self.pending != before
    }

    /// The largest threshold still to come.
    fn next(&self) -> Option<Duration> {
        self.pending.checked_sub(1).map(|i| self.at[i])
    }
}

/// The time left before a wall-clock deadline (zero once it is reached).
fn left_until(deadline_unix: i64, now_unix: i64) -> Duration {
    Duration::from_secs(u64::try_from(deadline_unix.saturating_sub(now_unix)).unwrap_or(0))
}

/// The limit and drain timing of one session.
#[derive(Debug)]
pub struct SessionClock {
    limits: Limits,
    duration_warnings: Warnings,
    idle_warnings: Warnings,
    /// Monotonic time of the last client input (the start, before any).
    last_input: Duration,
    drain: Option<DrainNotice>,
    drain_warnings: Warnings,
}

impl SessionClock {
    /// A clock for a session that starts at `elapsed` zero.
    pub fn new(limits: Limits) -> SessionClock {
        SessionClock {
            duration_warnings: Warnings::new(limits.warn_before.clone()),
            idle_warnings: Warnings::new(limits.warn_before.clone()),
            drain_warnings: Warnings::new(limits.drain_notices.clone()),
            last_input: Duration::ZERO,
            drain: None,
            limits,
        }
    }

    /// The client typed something: the idle countdown starts again.
    pub fn input(&mut self, now: Now) {
        self.last_input = now.elapsed;
        self.idle_warnings.reset();
    }

    /// The drain in force as just read; a notice when it changed.
    pub fn drain(&mut self, current: Option<DrainNotice>, now: Now) -> Option<Notice> {
        if current == self.drain {
            return None;
        }
        self.drain_warnings = Warnings::new(self.limits.drain_notices.clone());
        let notice = match &current {
            Some(d) => {
                let left = left_until(d.deadline_unix, now.unix);
                // The announcement stands for the thresholds already passed.
                self.drain_warnings.due(left);
                Some(Notice::Drain {
                    message: d.message.clone(),
                    left,
                })
            }
            None if self.drain.is_some() => Some(Notice::Undrain),
            None => None,
        };
        self.drain = current;
        notice
    }

    fn idle_left(&self, idle: Duration, now: Now) -> Duration {
        idle.saturating_sub(now.elapsed.saturating_sub(self.last_input))
    }

    /// What is due at `now`: warnings whose threshold was reached and the
    /// close of a limit that ran out.
    pub fn tick(&mut self, now: Now) -> Tick {
        let mut tick = Tick::default();
        if let Some(max) = self.limits.max_duration {
            let left = max.saturating_sub(now.elapsed);
            if left.is_zero() {
                tick.close = Some(Close::MaxDuration { max });
                return tick;
            }
            if self.duration_warnings.due(left) {
                tick.notices.push(Notice::MaxDuration { left, max });
            }
        }
        if let Some(idle) = self.limits.idle_timeout {
            let left = self.idle_left(idle, now);
            if left.is_zero() {
                tick.close = Some(Close::Idle { idle });
                return tick;
            }
            if self.idle_warnings.due(left) {
                tick.notices.push(Notice::Idle { left });
            }
        }
        if let Some(d) = &self.drain {
            let left = left_until(d.deadline_unix, now.unix);
            if left.is_zero() {
                tick.close = Some(Close::Drained {
                    message: d.message.clone(),
                });
                return tick;
            }
            if self.drain_warnings.due(left) {
                tick.notices.push(Notice::Drain {
                    message: d.message.clone(),
                    left,
                });
            }
        }
        tick
    }

    /// How long from `now` until the clock has something to do (a warning
    /// or a close); None when nothing is scheduled. The supervisor sleeps
    /// at most this long, so a limit closes on time rather than on the
    /// next tick. Drain deadlines are whole wall-clock seconds.
    pub fn next_deadline(&self, now: Now) -> Option<Duration> {
        // The soonest point at which `left` (counting down to `end`) falls
        // to the next threshold of `w`, or to zero.
        fn soonest(left: Duration, w: &Warnings) -> Duration {
            left.saturating_sub(w.next().unwrap_or(Duration::ZERO))
        }
        let mut next: Option<Duration> = None;
        let mut consider = |d: Duration| next = Some(next.map_or(d, |n| n.min(d)));
        if let Some(max) = self.limits.max_duration {
            consider(soonest(
                max.saturating_sub(now.elapsed),
                &self.duration_warnings,
            ));
        }
        if let Some(idle) = self.limits.idle_timeout {
            consider(soonest(self.idle_left(idle, now), &self.idle_warnings));
        }
        if let Some(d) = &self.drain {
            consider(soonest(
                left_until(d.deadline_unix, now.unix),
                &self.drain_warnings,
            ));
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// `n` seconds into the session, the wall clock advancing alike.
    fn at(n: u64) -> Now {
        at_ms(n * 1000)
    }

    fn at_ms(ms: u64) -> Now {
        Now {
            elapsed: Duration::from_millis(ms),
            unix: T0 + (ms / 1000) as i64,
        }
    }

    fn clock(max: Option<u64>, idle: Option<u64>, warn: &[u64], drain: &[u64]) -> SessionClock {
        SessionClock::new(Limits {
            max_duration: max.map(s),
            idle_timeout: idle.map(s),
            warn_before: warn.iter().copied().map(s).collect(),
            drain_notices: drain.iter().copied().map(s).collect(),
        })
    }

    fn drain(deadline_in: i64, message: &str) -> Option<DrainNotice> {
        Some(DrainNotice {
            deadline_unix: T0 + deadline_in,
            message: message.into(),
        })
    }

    fn quiet() -> Tick {
        Tick::default()
    }

    #[test]
    fn without_limits_nothing_ever_happens() {
        let mut c = clock(None, None, &[60], &[60]);
        for n in [0, 1, 3600, 366 * 86400] {
            assert_eq!(c.tick(at(n)), quiet());
            assert_eq!(c.next_deadline(at(n)), None);
        }
    }

    #[test]
    fn max_duration_warns_once_per_threshold_then_closes_at_the_instant() {
        let mut c = clock(Some(600), None, &[300, 60], &[]);
        assert_eq!(c.tick(at(0)), quiet());
        assert_eq!(c.tick(at(299)), quiet());
        let warn = c.tick(at(300));
        assert_eq!(
            warn.notices,
            vec![Notice::MaxDuration {
                left: s(300),
                max: s(600)
            }]
        );
        assert_eq!(warn.close, None);
        assert_eq!(c.tick(at(301)), quiet(), "each warning once");
        assert_eq!(c.tick(at(539)), quiet());
        assert_eq!(c.tick(at(540)).notices.len(), 1);
        assert_eq!(c.tick(at(541)), quiet());
        assert_eq!(c.tick(at_ms(599_999)), quiet(), "not a moment early");
        let end = c.tick(at(600));
        assert_eq!(end.close, Some(Close::MaxDuration { max: s(600) }));
        assert_eq!(
            end.close.as_ref().map(Close::reason),
            Some(EndReason::MaxDuration)
        );
        assert_eq!(
            end.close.map(|c| c.message()).as_deref(),
            Some("session closed: the maximum session duration is 10m")
        );
        assert!(end.notices.is_empty());
    }

    #[test]
    fn thresholds_crossed_together_give_one_warning() {
        // A 3-second limit with warnings at 10 and 2 seconds: the first
        // tick is already past 10 s left; at 2 s left comes the second.
        let mut c = clock(Some(3), None, &[10, 2], &[]);
        assert_eq!(c.tick(at(0)).notices.len(), 1);
        assert_eq!(c.tick(at_ms(500)), quiet());
        assert_eq!(c.tick(at(1)).notices.len(), 1);
        assert_eq!(c.tick(at_ms(2500)), quiet());
        assert!(c.tick(at(3)).close.is_some());
    }

    #[test]
    fn idle_counts_from_the_last_input_and_input_gives_the_warnings_back() {
        let mut c = clock(None, Some(100), &[30], &[]);
        assert_eq!(c.tick(at(70)).notices, vec![Notice::Idle { left: s(30) }]);
        assert_eq!(c.tick(at(80)), quiet());
        c.input(at(90));
        assert_eq!(c.tick(at(100)), quiet(), "input reset the countdown");
        assert_eq!(c.tick(at(159)), quiet());
        assert_eq!(
            c.tick(at(160)).notices,
            vec![Notice::Idle { left: s(30) }],
            "warned again after new input"
        );
        assert_eq!(c.tick(at(189)), quiet());
        let end = c.tick(at(190));
        assert_eq!(end.close, Some(Close::Idle { idle: s(100) }));
        assert_eq!(
            end.close.map(|c| c.message()).as_deref(),
            Some("session closed after 1m 40s without input")
        );
    }

    #[test]
    fn input_does_not_extend_the_maximum_duration() {
        let mut c = clock(Some(60), Some(50), &[], &[]);
        for n in (0..60).step_by(10) {
            c.input(at(n));
            assert_eq!(c.tick(at(n)), quiet());
        }
        c.input(at(59));
        assert_eq!(
            c.tick(at(60)).close,
            Some(Close::MaxDuration { max: s(60) })
        );
    }

    #[test]
    fn a_drain_is_announced_at_once_then_warns_then_closes_at_its_deadline() {
        let mut c = clock(None, None, &[], &[600, 60]);
        assert_eq!(c.drain(None, at(0)), None, "no drain, nothing to say");
        // Announced with 900 s left: the 600 s notice is still to come.
        assert_eq!(
            c.drain(drain(900, "kernel upgrade"), at(0)),
            Some(Notice::Drain {
                message: "kernel upgrade".into(),
                left: s(900)
            })
        );
        assert_eq!(
            c.drain(drain(900, "kernel upgrade"), at(1)),
            None,
            "unchanged"
        );
        assert_eq!(c.tick(at(299)), quiet());
        assert_eq!(
            c.tick(at(300)).notices,
            vec![Notice::Drain {
                message: "kernel upgrade".into(),
                left: s(600)
            }]
        );
        assert_eq!(c.tick(at(301)), quiet());
        assert_eq!(c.tick(at(840)).notices.len(), 1);
        assert_eq!(c.tick(at(899)), quiet());
        let end = c.tick(at(900));
        assert_eq!(
            end.close.as_ref().map(Close::reason),
            Some(EndReason::Drained)
        );
        assert_eq!(
            end.close.map(|c| c.message()).as_deref(),
            Some("session closed for maintenance: kernel upgrade")
        );
    }

    #[test]
    fn a_drain_announced_late_spends_the_thresholds_it_passed() {
        let mut c = clock(None, None, &[], &[600, 60]);
        assert!(c.drain(drain(120, "soon"), at(0)).is_some());
        assert_eq!(
            c.tick(at(1)),
            quiet(),
            "the 600 s notice went with the announcement"
        );
        assert_eq!(c.tick(at(60)).notices.len(), 1);
    }

    #[test]
    fn a_cancelled_drain_is_announced_and_closes_nothing() {
        let mut c = clock(None, None, &[], &[60]);
        assert!(c.drain(drain(100, "m"), at(0)).is_some());
        assert_eq!(c.drain(None, at(10)), Some(Notice::Undrain));
        assert_eq!(Notice::Undrain.kind(), "undrain");
        assert_eq!(c.tick(at(100)), quiet());
        assert_eq!(c.next_deadline(at(100)), None);
    }

    #[test]
    fn a_changed_drain_is_announced_again_with_fresh_notices() {
        let mut c = clock(None, None, &[], &[60]);
        assert!(c.drain(drain(100, "first"), at(0)).is_some());
        assert_eq!(c.tick(at(40)).notices.len(), 1);
        // Postponed: a new announcement, and the 60 s notice again.
        assert_eq!(
            c.drain(drain(200, "postponed"), at(50)),
            Some(Notice::Drain {
                message: "postponed".into(),
                left: s(150)
            })
        );
        assert_eq!(c.tick(at(100)), quiet(), "the old deadline is gone");
        assert_eq!(c.tick(at(140)).notices.len(), 1);
        assert!(c.tick(at(200)).close.is_some());
    }

    #[test]
    fn a_drain_deadline_before_the_maximum_duration_wins() {
        let mut c = clock(Some(3600), Some(3600), &[], &[]);
        c.drain(drain(120, "reboot"), at(0));
        assert_eq!(c.next_deadline(at(0)), Some(s(120)));
        assert_eq!(c.tick(at(119)), quiet());
        assert_eq!(
            c.tick(at(120)).close.map(|c| c.reason()),
            Some(EndReason::Drained)
        );
    }

    #[test]
    fn a_drain_whose_deadline_passed_closes_on_the_first_tick() {
        let mut c = clock(None, None, &[], &[60]);
        assert_eq!(
            c.drain(drain(-5, "now"), at(0)),
            Some(Notice::Drain {
                message: "now".into(),
                left: Duration::ZERO
            })
        );
        assert_eq!(
            c.tick(at(0)).close.map(|c| c.reason()),
            Some(EndReason::Drained)
        );
    }

    #[test]
    fn limits_running_out_together_close_for_the_first_in_order() {
        let mut c = clock(Some(100), Some(100), &[10], &[]);
        c.drain(drain(100, "m"), at(0));
        let end = c.tick(at(100));
        assert_eq!(end.close, Some(Close::MaxDuration { max: s(100) }));
        assert!(end.notices.is_empty(), "nothing said once closing");
        let mut c = clock(None, Some(100), &[], &[]);
        c.drain(drain(100, "m"), at(0));
        assert_eq!(
            c.tick(at(100)).close.map(|c| c.reason()),
            Some(EndReason::Idle)
        );
    }

    #[test]
    fn wall_clock_jumps_move_drains_but_not_limits() {
        let mut c = clock(Some(100), None, &[], &[]);
        c.drain(drain(1000, "m"), at(0));
        let jumped = Now {
            elapsed: s(10),
            unix: T0 + 5000,
        };
        assert_eq!(
            c.tick(jumped).close.map(|c| c.reason()),
            Some(EndReason::Drained)
        );
        let mut c = clock(Some(100), None, &[], &[]);
        let back = Now {
            elapsed: s(100),
            unix: T0 - 5000,
        };
        assert_eq!(
            c.tick(back).close.map(|c| c.reason()),
            Some(EndReason::MaxDuration)
        );
    }

    #[test]
    fn next_deadline_is_the_soonest_warning_or_close() {
        let mut c = clock(Some(600), Some(120), &[60], &[]);
        assert_eq!(c.next_deadline(at(0)), Some(s(60)), "idle warning at 60 s");
        assert_eq!(c.tick(at(60)).notices, vec![Notice::Idle { left: s(60) }]);
        assert_eq!(c.next_deadline(at(60)), Some(s(60)), "then the idle close");
        c.input(at(100));
        assert_eq!(c.next_deadline(at(100)), Some(s(60)), "input moved it");
        assert_eq!(
            c.next_deadline(at_ms(100_250)),
            Some(Duration::from_millis(59_750))
        );
        // Past a deadline (a late tick): due at once, never negative.
        assert_eq!(c.next_deadline(at(500)), Some(Duration::ZERO));
        assert_eq!(
            c.tick(at(500)).close.map(|c| c.reason()),
            Some(EndReason::Idle)
        );
        let c = clock(Some(600), None, &[60], &[]);
        assert_eq!(c.next_deadline(at(0)), Some(s(540)));
    }

    #[test]
    fn sessions_without_a_terminal_have_no_idle_limit() {
        // The supervisor passes no idle timeout for them; the clock then
        // never closes for idleness however long there is no input.
        let mut c = clock(None, None, &[10], &[]);
        assert_eq!(c.tick(at(366 * 86400)), quiet());
    }

    #[test]
    fn notices_read_as_before() {
        let n = Notice::MaxDuration {
            left: s(120),
            max: s(3600),
        };
        assert_eq!(n.kind(), "max_duration");
        assert_eq!(
            n.text(),
            "this session will be closed in 2m (maximum session duration 1h)"
        );
        assert_eq!(
            Notice::Idle { left: s(30) }.text(),
            "no input for a while: this session will be closed in 30s unless you type something"
        );
        assert_eq!(
            Notice::Drain {
                message: "kernel upgrade".into(),
                left: s(90)
            }
            .text(),
            "kernel upgrade - this session will be closed in 1m 30s"
        );
    }
}
