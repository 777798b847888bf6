//! Loss detection from the stream itself: how far behind the highest seq seen an event
//! can still arrive (the source's reorder distance, learned as events arrive), and from
//! that, when a missing seq is lost rather than late.
//!
//! The rule. Let `d` be the largest lateness seen this session: `highest - seq` for an
//! event that arrived after a higher one. An event that is merely late arrives before more
//! than `d` later seqs have arrived past it (they all lie within `d` above it). So once the
//! events waiting behind the next missing seq number more than `FACTOR * d + MIN`, it is
//! declared lost and skipped, together with every missing seq up to the first waiting
//! event (holes close together go at once). Evidence is counted in arrivals, not time: a
//! source that pauses gives none, and then only the gap timeout applies.
//!
//! `MIN` covers the start of a session, before anything was learned: within a shuffled
//! batch, a few arrivals already show a lateness near the batch size, long before `MIN`
//! events wait. `FACTOR` covers a source whose disorder grows: it may double from one
//! batch to the next before a seq is taken for lost. The weakness: a source whose disorder
//! jumps past `FACTOR` times anything seen, in an order that shows it late (a long sorted
//! run, then a straggler), has the straggler skipped. That is a false skip: counted,
//! warned, and the lateness it showed is learned, so it does not happen again.
//!
//! Cost: a compare and a max per event; a comparison when the next seq is missing.
//!
//! Seqs are taken at their [`Pos`]: near the end of the sequence space, the next cycle's
//! first seqs are above this one's last.

use super::Pos;

/// See the module docs.
pub const FACTOR: u64 = 2;
/// See the module docs.
pub const MIN: u64 = 512;
/// Skipped ranges remembered, to tell a false skip from a duplicate.
const RECENT: usize = 16;

/// See the module docs.
pub struct LossDetector {
    /// Off: missing seqs wait for the gap timeout (or a full window) only.
    enabled: bool,
    /// Held off for now: several sources are connected, and how far one runs ahead of
    /// another says nothing about loss.
    suspended: bool,
    /// Position of the highest seq stored this session.
    highest: Pos,
    /// Largest lateness seen this session.
    disorder: u64,
    /// The last skipped ranges (from, through), oldest overwritten first.
    recent: [(Pos, Pos); RECENT],
    next: usize,
}

impl LossDetector {
    pub fn new(enabled: bool) -> Self {
        LossDetector {
            enabled,
            suspended: false,
            highest: 0,
            disorder: 0,
            recent: [(1, 0); RECENT], // empty ranges
            next: 0,
        }
    }

    /// The position of the highest seq stored this session.
    pub fn highest(&self) -> Pos {
        self.highest
    }

    /// The learned reorder distance.
    pub fn disorder(&self) -> u64 {
        self.disorder
    }

    /// An event was stored (at most the window's `max` from the next seq, as is every
    /// event waiting, so any two are less than a u64 apart).
    #[inline(always)]
    pub fn arrived(&mut self, pos: Pos) {
        if pos > self.highest {
            self.highest = pos;
        } else {
            self.disorder = self.disorder.max((self.highest - pos) as u64);
        }
    }

    /// Whether the next missing seq is lost, with `waiting` events stored behind it.
    #[inline]
    pub fn lost(&self, waiting: usize) -> bool {
        self.enabled
            && !self.suspended
            && waiting as u64 > self.disorder.saturating_mul(FACTOR).saturating_add(MIN)
    }

    /// Holds detection off (or lets it resume): the stream is several sources' merged.
    /// On resuming, the spread from the highest seq down to `next` (the next missing one)
    /// is learned as disorder: it is what the sources' merge produced while detection was
    /// held off, not evidence of loss (a source that ran ahead and left would otherwise
    /// have the other's seqs, still arriving, judged lost against what was learned alone).
    pub fn suspend(&mut self, suspended: bool, next: Pos) {
        if self.suspended && !suspended {
            self.disorder = self
                .disorder
                .max(distance(self.highest.saturating_sub(next)));
        }
        self.suspended = suspended;
    }

    /// Seqs `from..=through` were skipped (for whatever reason).
    pub fn skipped(&mut self, from: Pos, through: Pos) {
        self.recent[self.next] = (from, through);
        self.next = (self.next + 1) % RECENT;
    }

    /// A late `seq` arrived: if it was skipped recently, that was a false skip, and its
    /// lateness is learned, if it is one the window could have waited for (at most
    /// `reach`, its `max`). Returns whether it was. (A lateness past any window says
    /// nothing about the source's disorder, and learned would turn detection off for the
    /// rest of the session.)
    pub fn false_skip(&mut self, pos: Pos, reach: u64) -> bool {
        let skipped = self
            .recent
            .iter()
            .any(|&(from, through)| (from..=through).contains(&pos));
        let late = self.highest.saturating_sub(pos);
        if skipped && late <= Pos::from(reach) {
            self.disorder = self.disorder.max(distance(late));
        }
        skipped
    }

    /// A new session: nothing learned.
    pub fn reset(&mut self) {
        *self = LossDetector {
            suspended: self.suspended,
            ..LossDetector::new(self.enabled)
        };
    }
}

/// A distance between positions, as a count of seqs (saturating: only a skip moves
/// further than a u64 in one step).
fn distance(d: Pos) -> u64 {
    u64::try_from(d).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Suspended (several sources), nothing is lost whatever waits; a new session keeps
    /// the suspension (the sources are still connected), and lifting it restores the rule.
    #[test]
    fn suspended_detection_declares_nothing_lost_until_resumed() {
        let mut d = LossDetector::new(true);
        assert!(d.lost(MIN as usize + 1));
        d.suspend(true, 1);
        assert!(!d.lost(usize::MAX));
        d.reset();
        assert!(!d.lost(usize::MAX), "still several sources");
        d.suspend(false, 1);
        assert!(d.lost(MIN as usize + 1));
        // What piled up while held off is learned when resuming: 600 waiting behind seq 1
        // with seqs up to 700 stored is not a loss.
        d.suspend(true, 1);
        for seq in 101..=700 {
            d.arrived(seq);
        }
        d.suspend(false, 1);
        assert_eq!(d.disorder(), 699);
        assert!(!d.lost(600));
        assert!(!LossDetector::new(false).lost(usize::MAX));
    }

    /// A false skip teaches the lateness it showed, unless no window could have waited
    /// that long.
    #[test]
    fn only_a_lateness_within_reach_is_learned_from_a_false_skip() {
        let mut d = LossDetector::new(true);
        d.arrived(1000);
        d.skipped(10, 20);
        assert!(d.false_skip(15, 1 << 20));
        assert_eq!(d.disorder(), 985);
        d.arrived(1 << 40);
        d.skipped(1, 5);
        assert!(d.false_skip(3, 1 << 20), "still a false skip");
        assert_eq!(d.disorder(), 985, "a lateness of 2^40 is not learned");
        assert!(
            !d.false_skip(500, 1 << 20),
            "never skipped: late, not a false skip"
        );
    }
}
