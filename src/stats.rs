//! Counters and the log lines made of them: the periodic stats line, the session
//! summary, and rate-limited warnings.
//!
//! Every part of the server bumps counters here; nothing here decides anything.

use std::fmt;
use std::time::{Duration, Instant};

/// Monotonic counters since start (or since the session began, for [`Session`]).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Counters {
    pub events_received: u64,
    pub events_delivered: u64,
    pub notifications: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `write` calls to client sockets (so `bytes_out / writes` is the batch size).
    pub writes: u64,
    pub junk_lines: u64,
    pub overlong_lines: u64,
    pub noop_events: u64,
    pub late_or_duplicate: u64,
    pub seqs_skipped: u64,
    /// Events that arrived after their seq was skipped (for whatever reason).
    pub false_skips: u64,
    /// Unterminated last lines of sources whose connection failed (reset), discarded.
    pub truncated_lines: u64,
    pub clients_connected: u64,
    pub clients_rejected: u64,
    pub clients_stalled: u64,
    pub clients_bad_id: u64,
    /// Connections without an id closed to make room under `--max-unidentified`.
    pub clients_evicted: u64,
    /// Requests answered on the metrics listener.
    pub scrapes: u64,
}

impl Counters {
    /// Field-wise `self - earlier`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        macro_rules! sub {
            ($($f:ident),*) => { Counters { $($f: self.$f - earlier.$f),* } };
        }
        sub!(
            events_received,
            events_delivered,
            notifications,
            bytes_in,
            bytes_out,
            writes,
            junk_lines,
            overlong_lines,
            noop_events,
            late_or_duplicate,
            seqs_skipped,
            false_skips,
            truncated_lines,
            clients_connected,
            clients_rejected,
            clients_stalled,
            clients_bad_id,
            clients_evicted,
            scrapes
        )
    }
}

impl Counters {
    /// Every counter with its name, as the stats line and the metrics endpoint show them.
    pub fn fields(&self) -> [(&'static str, u64); 19] {
        [
            ("events_in", self.events_received),
            ("delivered", self.events_delivered),
            ("notifications", self.notifications),
            ("bytes_in", self.bytes_in),
            ("bytes_out", self.bytes_out),
            ("writes", self.writes),
            ("junk", self.junk_lines),
            ("overlong", self.overlong_lines),
            ("noop", self.noop_events),
            ("late_or_dup", self.late_or_duplicate),
            ("skipped", self.seqs_skipped),
            ("false_skips", self.false_skips),
            ("truncated", self.truncated_lines),
            ("clients_connected", self.clients_connected),
            ("clients_rejected", self.clients_rejected),
            ("clients_stalled", self.clients_stalled),
            ("clients_bad_id", self.clients_bad_id),
            ("clients_evicted", self.clients_evicted),
            ("scrapes", self.scrapes),
        ]
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.fields().iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={value}")?;
        }
        Ok(())
    }
}

/// Kinds of warning, each rate-limited on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Warn {
    Junk,
    Overlong,
    NoOp,
    LateOrDuplicate,
    Skipped,
    BadId,
    Rejected,
    Stalled,
    Accept,
    ConnError,
}

const KINDS: usize = 10;
/// Warnings of one kind logged per interval before the rest are only counted.
const BURST: u32 = 5;

/// Per-kind budget of warnings per interval.
pub struct WarnLimiter {
    interval: Duration,
    started: Instant,
    seen: [u32; KINDS],
}

impl WarnLimiter {
    pub fn new(interval: Duration, now: Instant) -> Self {
        WarnLimiter {
            interval,
            started: now,
            seen: [0; KINDS],
        }
    }

    /// Whether a warning of `kind` may be logged now. Call only when warn is enabled,
    /// so suppressed counts mean "suppressed", not "filtered".
    pub fn allow(&mut self, kind: Warn, now: Instant) -> bool {
        self.roll(now);
        let seen = &mut self.seen[kind as usize];
        *seen = seen.saturating_add(1);
        *seen <= BURST
    }

    /// Ends the interval if it is over, logging how many of each kind were suppressed.
    pub fn roll(&mut self, now: Instant) {
        if now.duration_since(self.started) < self.interval {
            return;
        }
        self.started = now;
        self.flush();
    }

    /// When the interval ends, if any warnings are being suppressed: the loop wakes then
    /// to say how many, even with nothing else to do.
    pub fn deadline(&self) -> Option<Instant> {
        (self.seen.iter().any(|&seen| seen > BURST)).then_some(self.started + self.interval)
    }

    /// Logs how many of each kind were suppressed, and starts counting again (also at
    /// shutdown: a count is never lost).
    pub fn flush(&mut self) {
        for (i, seen) in self.seen.iter_mut().enumerate() {
            if *seen > BURST {
                log::warn!("{:?}: {} more suppressed", KIND_NAMES[i], *seen - BURST);
            }
            *seen = 0;
        }
    }
}

const KIND_NAMES: [Warn; KINDS] = [
    Warn::Junk,
    Warn::Overlong,
    Warn::NoOp,
    Warn::LateOrDuplicate,
    Warn::Skipped,
    Warn::BadId,
    Warn::Rejected,
    Warn::Stalled,
    Warn::Accept,
    Warn::ConnError,
];

/// Logs a warning of a kind through the server's limiter; the message is formatted only
/// when it is actually logged.
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $kind:expr, $now:expr, $($arg:tt)+) => {
        if log::log_enabled!(log::Level::Warn) && $limiter.allow($kind, $now) {
            log::warn!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_match_discriminants() {
        for (i, k) in KIND_NAMES.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }

    #[test]
    fn limiter_allows_a_burst_per_kind_per_interval() {
        let t0 = Instant::now();
        let mut l = WarnLimiter::new(Duration::from_secs(10), t0);
        let allowed = (0..100).filter(|_| l.allow(Warn::Junk, t0)).count();
        assert_eq!(allowed, BURST as usize);
        assert!(l.allow(Warn::Stalled, t0), "kinds are independent");
        let later = t0 + Duration::from_secs(11);
        assert!(l.allow(Warn::Junk, later), "a new interval, a new budget");
    }

    #[test]
    fn since_subtracts_every_field() {
        let a = Counters {
            events_received: 10,
            clients_bad_id: 3,
            ..Default::default()
        };
        let mut b = a;
        b.events_received = 15;
        b.clients_bad_id = 4;
        let d = b.since(&a);
        assert_eq!(
            (d.events_received, d.clients_bad_id, d.notifications),
            (5, 1, 0)
        );
        assert!(d.to_string().contains("events_in=5"));
    }
}
