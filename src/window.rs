//! The reorder window: events in, in any order, from the parser; events out, in sequence
//! order, to the router.
//!
//! A ring of slots indexed by `seq & (capacity - 1)`. It starts small and doubles on demand
//! up to the smallest power of two holding `max` events, so memory follows the disorder
//! actually seen. A slot is one 32-byte [`Event`]; `seq == 0` marks it empty (seqs start
//! at 1). Payloads in canonical form are not stored (the router re-renders them); the
//! rare non-canonical payload is kept in a side map.
//!
//! Skipping is the caller's policy, applied here: [`ReorderWindow::skip_gap`] for the gap
//! timeout, [`ReorderWindow::make_room_for`] for an event too far ahead, and
//! [`ReorderWindow::start_flush`] at session end. Skips come out of [`ReorderWindow::pop`]
//! one range at a time, so the caller can count and warn, and can stop popping at any
//! point (backpressure) without losing anything.

use crate::event::Event;
use hashbrown::HashMap;

/// What [`ReorderWindow::insert`] did with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Insert {
    Stored,
    /// Already delivered or skipped: discarded.
    Late,
    /// The same seq is already waiting: discarded.
    Duplicate,
    /// `max` or more beyond the next expected seq. Call
    /// [`make_room_for`](ReorderWindow::make_room_for), pop until [`fits`](ReorderWindow::fits),
    /// then insert again.
    TooFar,
}

/// One step out of the window.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop {
    /// The next event. If it is not canonical, its original payload is to be taken with
    /// [`take_payload`](ReorderWindow::take_payload).
    Event(Event),
    /// Missing seqs `from..=through` were given up on.
    Skipped { from: u64, through: u64 },
}

const EMPTY: Event = Event {
    seq: 0,
    kind: crate::event::Kind::NoOp,
    from: 0,
    to: 0,
    canonical: true,
};

/// See the module docs.
pub struct ReorderWindow {
    slots: Vec<Event>,
    /// Last seq delivered or skipped; the next expected is `last + 1`.
    last: u64,
    /// Events stored.
    waiting: usize,
    /// Missing seqs up to here are skipped when reached.
    skip_through: u64,
    /// Session end: skip every gap until nothing waits.
    flushing: bool,
    /// Most events held beyond `last`.
    max: u64,
    initial: usize,
    odd_payloads: HashMap<u64, Box<[u8]>>,
    /// Slots looked at while skipping: the work skipping costs (see the tests).
    skip_steps: u64,
}

impl ReorderWindow {
    /// A window starting at `initial` slots (rounded up to a power of two) that holds
    /// events up to `max` beyond the next expected seq.
    pub fn new(initial: usize, max: u64) -> Self {
        assert!(max >= 1, "a window must hold at least one event");
        let cap = ring_size(initial as u64).min(ring_size(max));
        ReorderWindow {
            slots: vec![EMPTY; cap],
            last: 0,
            waiting: 0,
            skip_through: 0,
            flushing: false,
            max,
            initial: cap,
            odd_payloads: HashMap::new(),
            skip_steps: 0,
        }
    }

    /// The next seq to deliver (saturates at `u64::MAX`).
    pub fn next_seq(&self) -> u64 {
        self.last.saturating_add(1)
    }

    /// Events waiting for an earlier seq.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Slots allocated now.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Whether `seq` can be stored without skipping anything.
    pub fn fits(&self, seq: u64) -> bool {
        seq <= self.last || seq - self.last <= self.max
    }

    fn slot(&self, seq: u64) -> usize {
        debug_assert!(self.slots.len().is_power_of_two());
        (seq & (self.slots.len() as u64 - 1)) as usize
    }

    /// Stores `ev`. `payload` (the line as read) is copied only when the event is not
    /// canonical.
    pub fn insert(&mut self, ev: Event, payload: &[u8]) -> Insert {
        debug_assert!(ev.seq >= 1);
        if ev.seq <= self.last {
            return Insert::Late;
        }
        if !self.fits(ev.seq) {
            return Insert::TooFar;
        }
        let distance = ev.seq - self.last; // 1..=max
        if distance > self.slots.len() as u64 {
            self.grow(distance);
        }
        let i = self.slot(ev.seq);
        if self.slots[i].seq == ev.seq {
            return Insert::Duplicate;
        }
        // Every stored seq lies in last+1 ..= last+capacity, so no two share a slot.
        debug_assert_eq!(self.slots[i].seq, 0);
        self.slots[i] = ev;
        self.waiting += 1;
        if !ev.canonical {
            self.odd_payloads.insert(ev.seq, payload.into());
        }
        Insert::Stored
    }

    fn grow(&mut self, distance: u64) {
        let cap = ring_size(distance).min(ring_size(self.max));
        debug_assert!(cap as u64 >= distance);
        let mut slots = vec![EMPTY; cap];
        for ev in self.slots.iter().filter(|e| e.seq != 0) {
            slots[(ev.seq & (cap as u64 - 1)) as usize] = *ev;
        }
        self.slots = slots;
    }

    /// The next event if it is here; else a skip if policy says so; else `None`.
    pub fn pop(&mut self) -> Option<Pop> {
        if self.last == u64::MAX {
            return None;
        }
        let next = self.last + 1;
        let i = self.slot(next);
        if self.slots[i].seq == next {
            let ev = self.slots[i];
            self.slots[i].seq = 0; // empty: the rest of the slot is never read
            self.last = next;
            self.waiting -= 1;
            return Some(Pop::Event(ev));
        }
        let through = if self.flushing && self.waiting > 0 {
            u64::MAX
        } else {
            self.skip_through
        };
        self.skip_missing(through)
    }

    /// The original payload of the non-canonical event `seq` just popped. (Kept apart from
    /// [`Pop`] so the common event moves through the pipeline as 32 plain bytes.)
    pub fn take_payload(&mut self, seq: u64) -> Option<Box<[u8]>> {
        self.odd_payloads.remove(&seq)
    }

    /// Moves `last` over missing seqs, up to `through` or the first waiting event.
    fn skip_missing(&mut self, through: u64) -> Option<Pop> {
        if through <= self.last {
            return None;
        }
        let from = self.last + 1;
        if self.waiting == 0 {
            self.last = through;
        } else {
            // Bounded: a waiting event lies within `capacity` of `last`.
            while self.last < through && self.slots[self.slot(self.last + 1)].seq != self.last + 1 {
                self.last += 1;
                self.skip_steps += 1;
            }
        }
        if self.last < from {
            return None;
        }
        Some(Pop::Skipped {
            from,
            through: self.last,
        })
    }

    /// Gap timeout: gives up on the missing seqs before the first waiting event.
    pub fn skip_gap(&mut self) -> Option<Pop> {
        if self.waiting == 0 {
            return None;
        }
        self.skip_missing(u64::MAX)
    }

    /// Window full: from now on, missing seqs are skipped until `seq` fits.
    pub fn make_room_for(&mut self, seq: u64) {
        self.skip_through = self.skip_through.max(seq.saturating_sub(self.max));
    }

    /// Session end: from now on, [`pop`](Self::pop) skips every gap until nothing waits.
    pub fn start_flush(&mut self) {
        self.flushing = true;
    }

    /// Whether a flush started by [`start_flush`](Self::start_flush) has emptied the window.
    pub fn flushed(&self) -> bool {
        self.flushing && self.waiting == 0
    }

    /// Back to seq 1 with the initial capacity: a new session.
    pub fn reset(&mut self) {
        if self.slots.len() > self.initial {
            self.slots = vec![EMPTY; self.initial];
        } else {
            self.slots.fill(EMPTY);
        }
        self.odd_payloads = HashMap::new();
        self.last = 0;
        self.waiting = 0;
        self.skip_through = 0;
        self.flushing = false;
    }
}

/// Ring slots for `n` events: the next power of two (the mask indexing needs one).
fn ring_size(n: u64) -> usize {
    let n = n.clamp(1, 1 << 40);
    n.next_power_of_two() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Kind;
    use crate::rng::Rng;

    fn ev(seq: u64) -> Event {
        Event {
            seq,
            kind: Kind::Broadcast,
            from: 0,
            to: 0,
            canonical: true,
        }
    }

    /// Pops until `None`: delivered seqs, and skipped ranges as (from, through).
    fn drain(w: &mut ReorderWindow) -> (Vec<u64>, Vec<(u64, u64)>) {
        let (mut got, mut skipped) = (Vec::new(), Vec::new());
        while let Some(p) = w.pop() {
            match p {
                Pop::Event(e) => got.push(e.seq),
                Pop::Skipped { from, through } => skipped.push((from, through)),
            }
        }
        (got, skipped)
    }

    #[test]
    fn random_permutations_come_out_sorted() {
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let n = 1 + rng.below(3000);
            let mut seqs: Vec<u64> = (1..=n).collect();
            rng.shuffle(&mut seqs);
            let mut w = ReorderWindow::new(4, 1 << 20);
            let mut got = Vec::new();
            for s in seqs {
                assert_eq!(w.insert(ev(s), b""), Insert::Stored);
                let (mut out, skipped) = drain(&mut w);
                assert!(skipped.is_empty());
                got.append(&mut out);
            }
            // The model: sort by seq.
            assert_eq!(got, (1..=n).collect::<Vec<_>>(), "seed {seed}");
            assert_eq!(w.waiting(), 0);
        }
    }

    #[test]
    fn grows_on_demand_and_only_as_needed() {
        let mut w = ReorderWindow::new(4, 1 << 20);
        assert_eq!(w.capacity(), 4);
        assert_eq!(w.insert(ev(4), b""), Insert::Stored);
        assert_eq!(w.capacity(), 4);
        assert_eq!(w.insert(ev(5), b""), Insert::Stored);
        assert_eq!(w.capacity(), 8);
        assert_eq!(w.insert(ev(100), b""), Insert::Stored);
        assert_eq!(w.capacity(), 128);
        for s in (1..100).rev() {
            if s != 4 && s != 5 {
                assert_eq!(w.insert(ev(s), b""), Insert::Stored);
            }
        }
        assert_eq!(drain(&mut w).0, (1..=100).collect::<Vec<_>>());
    }

    #[test]
    fn wraps_around_the_capacity_boundary() {
        let mut w = ReorderWindow::new(8, 8);
        let mut got = Vec::new();
        // Pairs swapped, straddling every multiple of 8 many times over.
        for base in (1..200u64).step_by(2) {
            assert_eq!(w.insert(ev(base + 1), b""), Insert::Stored);
            assert_eq!(w.insert(ev(base), b""), Insert::Stored);
            got.extend(drain(&mut w).0);
        }
        assert_eq!(got, (1..=200).collect::<Vec<_>>());
        assert_eq!(w.capacity(), 8);
        // A full window of 8 beyond a hole at 201, stored across the wrap.
        for s in 202..=208 {
            assert_eq!(w.insert(ev(s), b""), Insert::Stored);
        }
        assert_eq!(w.insert(ev(201), b""), Insert::Stored);
        assert_eq!(drain(&mut w).0, (201..=208).collect::<Vec<_>>());
    }

    #[test]
    fn late_and_duplicate_seqs_are_dropped() {
        let mut w = ReorderWindow::new(4, 100);
        assert_eq!(w.insert(ev(1), b""), Insert::Stored);
        assert_eq!(w.insert(ev(3), b""), Insert::Stored);
        assert_eq!(w.insert(ev(3), b""), Insert::Duplicate);
        assert_eq!(drain(&mut w).0, vec![1]);
        assert_eq!(w.insert(ev(1), b""), Insert::Late);
        assert_eq!(w.insert(ev(2), b""), Insert::Stored);
        assert_eq!(drain(&mut w).0, vec![2, 3]);
        assert_eq!(w.insert(ev(2), b""), Insert::Late);
        assert_eq!(w.insert(ev(3), b""), Insert::Late);
        assert_eq!(w.waiting(), 0);
    }

    #[test]
    fn gap_skip_gives_up_only_up_to_the_first_waiting_event() {
        let mut w = ReorderWindow::new(4, 100);
        assert_eq!(w.skip_gap(), None, "nothing waits: nothing to skip");
        for s in [5, 6, 9] {
            w.insert(ev(s), b"");
        }
        assert_eq!(drain(&mut w), (vec![], vec![]));
        assert_eq!(
            w.skip_gap(),
            Some(Pop::Skipped {
                from: 1,
                through: 4
            })
        );
        assert_eq!(drain(&mut w).0, vec![5, 6]);
        assert_eq!(
            w.skip_gap(),
            Some(Pop::Skipped {
                from: 7,
                through: 8
            })
        );
        assert_eq!(drain(&mut w).0, vec![9]);
        assert_eq!(w.skip_gap(), None);
        assert_eq!(w.insert(ev(7), b""), Insert::Late);
    }

    #[test]
    fn window_full_skips_the_oldest_missing_seqs_until_it_fits() {
        let mut w = ReorderWindow::new(4, 8);
        w.insert(ev(3), b"");
        w.insert(ev(5), b"");
        // Next expected is 1: 8 beyond it no longer fits.
        assert!(w.fits(8));
        assert!(!w.fits(9));
        assert_eq!(w.insert(ev(12), b""), Insert::TooFar);
        w.make_room_for(12);
        let (got, skipped) = drain(&mut w);
        // 12 needs last >= 4: 1-2 skipped, 3 delivered, 4 skipped; 5 delivered on the way.
        assert_eq!(got, vec![3, 5]);
        assert_eq!(skipped, vec![(1, 2), (4, 4)]);
        assert!(w.fits(12));
        assert_eq!(w.insert(ev(12), b""), Insert::Stored);
        assert_eq!(w.capacity(), 8, "never past max");
        assert_eq!(w.insert(ev(6), b""), Insert::Stored);
        assert_eq!(drain(&mut w).0, vec![6]);
    }

    #[test]
    fn a_huge_jump_is_skipped_without_walking_every_seq() {
        let mut w = ReorderWindow::new(4, 1 << 20);
        w.insert(ev(2), b"");
        let far = u64::MAX - 1;
        assert_eq!(w.insert(ev(far), b""), Insert::TooFar);
        w.make_room_for(far);
        let (got, skipped) = drain(&mut w);
        assert_eq!(got, vec![2]);
        assert_eq!(skipped, vec![(1, 1), (3, far - (1 << 20))]);
        assert_eq!(w.insert(ev(far), b""), Insert::Stored);
        w.start_flush();
        let (got, _) = drain(&mut w);
        assert_eq!(got, vec![far]);
        assert_eq!(w.insert(ev(u64::MAX), b""), Insert::Stored);
        assert_eq!(drain(&mut w).0, vec![u64::MAX]);
        assert_eq!(w.insert(ev(u64::MAX), b""), Insert::Late);
        assert_eq!(w.pop(), None, "nothing after the last seq");
        assert_eq!(w.capacity(), 1 << 20, "grown to max, never past it");
    }

    /// Far-ahead seqs, each `max` or more beyond the next expected one, with an event
    /// waiting at the far end of the ring every time: skipping must cost about one step
    /// per event waiting, not one per seq skipped.
    #[test]
    fn skipping_costs_steps_per_event_waiting_not_per_seq_skipped() {
        let max = 1 << 20;
        let mut w = ReorderWindow::new(64, max);
        let mut delivered = 0;
        for k in 1..=1000u64 {
            let far = k * 3 * max;
            if w.insert(ev(far), b"") == Insert::TooFar {
                w.make_room_for(far);
                while !w.fits(far) {
                    if let Some(Pop::Event(_)) = w.pop() {
                        delivered += 1;
                    }
                }
                assert_eq!(w.insert(ev(far), b""), Insert::Stored);
            }
            // Something waits just below, for the next skip to stop at.
            assert_eq!(w.insert(ev(far - 1), b""), Insert::Stored);
        }
        w.start_flush();
        delivered += drain(&mut w).0.len();
        assert_eq!(delivered, 2000);
        assert!(
            w.skip_steps < 100_000,
            "{} slots looked at to skip 2000 times",
            w.skip_steps
        );
    }

    #[test]
    fn session_end_flushes_what_waits_in_order_then_resets() {
        let mut w = ReorderWindow::new(4, 1000);
        for s in [9, 3, 7, 4, 100] {
            w.insert(ev(s), b"");
        }
        assert_eq!(drain(&mut w).0, Vec::<u64>::new());
        w.start_flush();
        let (got, skipped) = drain(&mut w);
        assert_eq!(got, vec![3, 4, 7, 9, 100]);
        assert_eq!(skipped, vec![(1, 2), (5, 6), (8, 8), (10, 99)]);
        assert!(w.flushed());
        assert_eq!(w.pop(), None);
        w.reset();
        assert_eq!(w.capacity(), 4);
        assert_eq!(w.next_seq(), 1);
        assert_eq!(w.insert(ev(1), b""), Insert::Stored);
        assert_eq!(drain(&mut w).0, vec![1]);
    }

    #[test]
    fn non_canonical_payloads_come_back_unchanged() {
        let mut w = ReorderWindow::new(4, 100);
        let odd = crate::event::parse(b"02|P|1|2").unwrap();
        w.insert(odd, b"02|P|1|2");
        w.insert(ev(1), b"1|B");
        assert_eq!(w.pop(), Some(Pop::Event(ev(1))));
        assert_eq!(w.pop(), Some(Pop::Event(odd)));
        assert_eq!(w.take_payload(2).as_deref(), Some(&b"02|P|1|2"[..]));
    }

    /// Checks one pop against the model: strictly increasing, each seq accounted once.
    fn account(p: Pop, prev: &mut u64, accounted: &mut u64) {
        let (from, through) = match p {
            Pop::Event(e) => (e.seq, e.seq),
            Pop::Skipped { from, through } => (from, through),
        };
        assert_eq!(from, *prev + 1, "nothing lost between pops");
        assert!(through >= from);
        *prev = through;
        *accounted += through - from + 1;
    }

    #[test]
    fn random_streams_with_holes_against_the_model() {
        // Model: every seq up to the last one out is delivered or skipped exactly once, in
        // order, and the ring never exceeds max.
        for seed in 0..100 {
            let mut rng = Rng::new(seed);
            let max = 1 + rng.below(64);
            let mut w = ReorderWindow::new(2, max);
            let (mut prev, mut accounted, mut stored) = (0u64, 0u64, 0u64);
            for _ in 0..500 {
                let s = w.next_seq() + rng.below(max + max / 2 + 1);
                match w.insert(ev(s), b"") {
                    Insert::TooFar => {
                        w.make_room_for(s);
                        while !w.fits(s) {
                            let p = w.pop().expect("make_room_for must let pop progress");
                            account(p, &mut prev, &mut accounted);
                        }
                        assert_eq!(w.insert(ev(s), b""), Insert::Stored);
                        stored += 1;
                    }
                    Insert::Stored => stored += 1,
                    Insert::Duplicate => {}
                    Insert::Late => panic!("never generated"),
                }
                if rng.below(10) == 0 {
                    if let Some(p) = w.skip_gap() {
                        account(p, &mut prev, &mut accounted);
                    }
                }
                while let Some(p) = w.pop() {
                    account(p, &mut prev, &mut accounted);
                }
                assert!(w.capacity() as u64 <= max.next_power_of_two());
            }
            assert_eq!(accounted, w.next_seq() - 1, "seed {seed}");
            w.start_flush();
            while let Some(p) = w.pop() {
                account(p, &mut prev, &mut accounted);
            }
            assert!(w.flushed());
            assert!(stored > 0);
        }
    }
}
