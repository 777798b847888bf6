//! The gap timeout's clock: when each missing seq started missing.
//!
//! A seq is missing once a later one has arrived, and is given up on once it has been
//! missing for the gap timeout (SPEC: holes close together are timed together, not one
//! after another). Rather than a clock per hole, the highest seq stored is marked with the
//! time, at most once per `grain` (1/16 of the timeout): every hole below a mark has been
//! missing at least since the mark's time. When a mark is a timeout old, the holes below
//! its seq are due. A hole is so given up between the timeout and the timeout plus a
//! grain after it opened, never before; the marks alive are at most 17. Seqs are taken
//! at their [`Pos`], which only rises, across the end of the sequence space too.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::window::Pos;

#[derive(Default)]
pub(super) struct GapMarks {
    /// (when, the highest seq stored then), oldest first; seqs and times both rise.
    marks: VecDeque<(Instant, Pos)>,
}

/// Marks per timeout, at most.
const PER_TIMEOUT: u32 = 16;

impl GapMarks {
    fn grain(gap: Duration) -> Duration {
        gap / PER_TIMEOUT
    }

    fn marked(&self) -> Pos {
        self.marks.back().map_or(0, |&(_, seq)| seq)
    }

    /// Once per loop turn: seqs up to `highest` have arrived by `now`.
    pub(super) fn mark(&mut self, now: Instant, highest: Pos, gap: Duration) {
        if highest <= self.marked() {
            return;
        }
        match self.marks.back() {
            // A mark within the grain: the new seqs wait for the next one (`deadline`
            // wakes the loop for it), timed from then: late by a grain at most, not early.
            Some(&(at, _)) if now < at + Self::grain(gap) => {}
            _ => self.marks.push_back((now, highest)),
        }
    }

    /// Takes the marks a timeout old: the holes below the highest of them are due.
    pub(super) fn due(&mut self, now: Instant, gap: Duration) -> Option<Pos> {
        let mut through = None;
        while let Some(&(at, seq)) = self.marks.front() {
            if now < at + gap {
                break;
            }
            through = Some(seq);
            self.marks.pop_front();
        }
        through
    }

    /// When the loop must wake: the oldest mark's timeout, or the next mark's turn if
    /// seqs past the last mark arrived within its grain.
    pub(super) fn deadline(&self, highest: Pos, gap: Duration) -> Option<Instant> {
        let due = self.marks.front().map(|&(at, _)| at + gap);
        let next_mark = match self.marks.back() {
            Some(&(at, seq)) if highest > seq => Some(at + Self::grain(gap)),
            _ => None,
        };
        due.into_iter().chain(next_mark).min()
    }

    /// Backpressure held the sources for `held`: every hole's clock stood still (a seq
    /// still unread in the socket is not missing), so each is that much further off.
    pub(super) fn shift(&mut self, held: Duration) {
        for (at, _) in self.marks.iter_mut() {
            *at += held;
        }
    }

    /// A new session.
    pub(super) fn clear(&mut self) {
        self.marks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: Duration = Duration::from_millis(1600);

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    /// Holes opening one after another are each due a timeout after they opened (within
    /// a grain), not a timeout after the one before them was given up.
    #[test]
    fn each_hole_is_due_a_timeout_after_it_opened() {
        let t0 = Instant::now();
        let mut g = GapMarks::default();
        // Seq 3 arrives at 0 (hole 2), 5 at 400 (hole 4), 7 at 800 (hole 6).
        for (at, highest) in [(0, 3), (400, 5), (800, 7)] {
            g.mark(ms(t0, at), highest, GAP);
        }
        assert_eq!(g.due(ms(t0, 1599), GAP), None, "never before the timeout");
        assert_eq!(g.due(ms(t0, 1600), GAP), Some(3));
        assert_eq!(g.due(ms(t0, 1999), GAP), None);
        assert_eq!(g.due(ms(t0, 2000), GAP), Some(5));
        assert_eq!(g.due(ms(t0, 2400), GAP), Some(7));
        assert_eq!(g.deadline(7, GAP), None, "nothing left to time");
    }

    /// Seqs arriving within a grain of the last mark are marked a grain later (timed from
    /// then: late, never early), and the loop is woken for it.
    #[test]
    fn marks_come_at_most_once_per_grain_and_late_not_early() {
        let t0 = Instant::now();
        let mut g = GapMarks::default();
        g.mark(t0, 3, GAP); // grain: 100 ms
        g.mark(ms(t0, 50), 9, GAP);
        assert_eq!(
            g.deadline(9, GAP),
            Some(ms(t0, 100)),
            "woken for the next mark"
        );
        g.mark(ms(t0, 100), 9, GAP);
        assert_eq!(g.due(ms(t0, 1600), GAP), Some(3), "9 arrived later than 3");
        assert_eq!(g.due(ms(t0, 1650), GAP), None, "9 is not due before 1700");
        assert_eq!(g.due(ms(t0, 1700), GAP), Some(9));
        // A steady stream: at most one mark per grain, so at most 17 within a timeout.
        for k in 0..10_000u64 {
            g.mark(ms(t0, 2000 + k), Pos::from(10 + k), GAP);
        }
        assert!(g.marks.len() <= 17 * 10_000 / 1600 + 1, "{}", g.marks.len());
        g.due(ms(t0, 12_000), GAP);
        assert!(
            g.marks.len() <= PER_TIMEOUT as usize + 1,
            "{}",
            g.marks.len()
        );
    }

    /// Backpressure stops every clock for as long as it holds; after a session end
    /// nothing is timed.
    #[test]
    fn shift_and_clear() {
        let t0 = Instant::now();
        let mut g = GapMarks::default();
        g.mark(t0, 3, GAP);
        g.mark(ms(t0, 500), 5, GAP);
        g.shift(Duration::from_millis(1000)); // held from 600 to 1600
        assert_eq!(g.due(ms(t0, 2599), GAP), None, "1,600 unheld ms is 2,600");
        assert_eq!(g.due(ms(t0, 2600), GAP), Some(3));
        assert_eq!(g.due(ms(t0, 3099), GAP), None);
        assert_eq!(g.due(ms(t0, 3100), GAP), Some(5));
        g.mark(ms(t0, 3000), 8, GAP);
        g.clear();
        assert_eq!(g.due(ms(t0, 9000), GAP), None);
        assert_eq!(g.deadline(8, GAP), None);
    }
}
