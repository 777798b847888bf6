//! The reorder window: events in, in any order, from the parser; events out, in sequence
//! order, to the router.
//!
//! A ring of slots indexed by `seq & (capacity - 1)`. It starts small and doubles on demand
//! up to the smallest power of two holding `max` events, so memory follows the disorder
//! actually seen. A slot is one 32-byte [`Event`]; `seq == 0` marks it empty (seqs start
//! at 1). Payloads in canonical form are not stored (the router re-renders them); the
//! rare non-canonical payload is kept in a side map.
//!
//! Everything held for waiting events (ring and side map) has one byte budget. The ring
//! takes at most half of it, which caps `max`; an event that would take the window past
//! `max` events or past the budget is refused as [`Insert::Full`], and the caller makes
//! room the one way that loses least: the oldest missing seqs are skipped (delivering
//! what waits between them, which frees its bytes) until the event fits.
//!
//! Skipping is the caller's policy, applied here: [`ReorderWindow::skip_gap`] for the gap
//! timeout, [`ReorderWindow::make_room`] for an event that does not fit, and
//! [`ReorderWindow::start_flush`] at session end. Skips come out of [`ReorderWindow::pop`]
//! one range at a time, so the caller can count and warn, and can stop popping at any
//! point (backpressure) without losing anything. An occupancy bitmap finds the next
//! waiting event in a few word reads, so a skip costs the same over one missing seq or
//! over 2^64 of them.
//!
//! The sequence space ends: after `u64::MAX` comes 1 again. Inside, a seq is kept at its
//! [`Pos`], its place in the stream with the cycles laid end to end, so near the end the
//! next cycle's first seqs may wait behind this one's last, and every comparison stays a
//! plain one. The ring is indexed by position too, so the end (which is no seq) takes no
//! slot.

mod loss;
mod occupancy;
mod payloads;

use crate::event::Event;
use crate::prefetch::prefetch;
pub use loss::LossDetector;
use occupancy::Occupancy;
use payloads::Payloads;

/// What [`ReorderWindow::insert`] did with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Insert {
    Stored,
    /// Already delivered or skipped: discarded.
    Late,
    /// The same seq is already waiting: discarded.
    Duplicate,
    /// The seq was skipped as lost, and now arrived after all: discarded, and the lateness
    /// it shows is learned.
    FalseSkip,
    /// `max` or more beyond the next expected seq, or its payload would pass the byte
    /// budget. Call [`make_room`](ReorderWindow::make_room), pop until
    /// [`fits`](ReorderWindow::fits), then insert again.
    Full,
    /// Behind the last seq delivered, with the next ones ready to pop: events stored
    /// together are all stored before any is popped, and the ones ready may move the last
    /// seq on (at the end of the sequence space, into the next cycle, where this one may
    /// be ahead). Pop until `None`, then insert again: it is judged as if it came alone.
    Deferred,
}

/// Why missing seqs were given up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The session ended: every gap goes.
    SessionEnd,
    /// An event `max` or more ahead, or over the byte budget, needed the room.
    Room,
    /// Missing for the gap timeout, or given up on by [`ReorderWindow::skip_gap`].
    Timeout,
    /// Far more events waiting than the learned disorder explains.
    Lost,
}

/// One step out of the window.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop {
    /// The next event. If it is not canonical, its original payload is to be taken with
    /// [`take_payload`](ReorderWindow::take_payload).
    Event(Event),
    /// Missing seqs `from..=through` were given up on, and why.
    Skipped { from: u64, through: u64, why: Skip },
    /// Seq `u64::MAX` is behind: the sequence starts again at 1.
    Wrapped,
}

const EMPTY: Event = Event {
    seq: 0,
    kind: crate::event::Kind::NoOp,
    from: 0,
    to: 0,
    canonical: true,
};

/// A seq's place in the session's stream, the cycles of the sequence space laid end to
/// end: cycle `c`'s seq `s` is at `c * u64::MAX + s` (there is no seq 0, and the end
/// takes no place). In the first cycle positions and seqs agree. A position's low 64 bits
/// index the ring: in cycle `c`, `seq - c`.
pub type Pos = u128;

/// Seqs in one cycle of the sequence space.
const CYCLE: Pos = u64::MAX as Pos;

/// Bytes of one ring slot.
const SLOT_BYTES: usize = std::mem::size_of::<Event>();
/// Events stored this close to the next seq are found by looking at their slots, not
/// marked in the occupancy bitmap: most of a lightly shuffled stream, and marking costs
/// more than the stream ever needs searching. 256, not 64: the classic stream (batches of
/// 100 shuffled, stored up to a run of 64 ahead) lands within 64 about half the time, and
/// the branch on it was mispredicted as often; a skip now looks at up to 256 slots (8 KiB)
/// before the bitmap, against marks on every event.
const NEAR: u64 = 256;
/// The smallest byte budget: a ring of 64 slots and the longest payload fit in half of it.
pub const MIN_BUDGET: usize = 64 * 1024;

/// See the module docs.
pub struct ReorderWindow {
    slots: Vec<Event>,
    /// Which slots may hold an event (marks of popped ones are cleared lazily).
    occupied: Occupancy,
    /// The last seq delivered or skipped (0 at the start of a cycle); the next expected
    /// is `last + 1`. With `base`, its position (kept apart so the hot path stays in 64
    /// bits: see [`at`](Self::at)).
    last: u64,
    /// Ends of the sequence space passed this session.
    cycle: u64,
    /// The position of the start of this cycle: `cycle * u64::MAX`.
    base: Pos,
    /// Seqs `1..=unsent` of this cycle were skipped before any was delivered (a session
    /// that starts far ahead): none of them reached anyone.
    unsent: u64,
    /// Events stored.
    waiting: usize,
    /// Making room for this event (its seq and the length of its payload, if kept): skip
    /// until it fits.
    wanted: Option<(Pos, Option<usize>)>,
    /// Session end: skip every gap until nothing waits.
    flushing: bool,
    /// Gap timeout: missing seqs up to here are skipped when reached.
    gap_through: Pos,
    /// Most events held beyond `last`.
    max: u64,
    initial: usize,
    /// Non-canonical payloads of waiting events, except the next one's.
    payloads: Payloads,
    /// The next event's non-canonical payload, if it was stored while next: it is popped
    /// at once, so it is held apart and needs no room in the budget.
    next_payload: Option<(u64, Vec<u8>)>,
    /// Bytes for the ring and the payloads together.
    budget: usize,
    /// Learns the source's disorder; says when a missing seq is lost.
    loss: LossDetector,
    /// Bitmap words read while looking for the next waiting event: the work skipping
    /// costs (see the tests).
    skip_steps: u64,
}

impl ReorderWindow {
    /// A window starting at `initial` slots (rounded up to a power of two) that holds
    /// events up to `max` beyond the next expected seq, in at most `budget` bytes (ring
    /// and payloads; at least [`MIN_BUDGET`]). The ring gets at most half of the budget,
    /// which may lower `max`.
    pub fn new(initial: usize, max: u64, budget: usize, loss: LossDetector) -> Self {
        assert!(max >= 1, "a window must hold at least one event");
        let budget = budget.max(MIN_BUDGET);
        // The largest ring within half the budget: a power of two, at least 64 slots.
        let ring_limit = 1u64 << (budget / 2 / SLOT_BYTES).ilog2();
        let max = max.min(ring_limit);
        let cap = ring_size(initial as u64).min(ring_size(max));
        ReorderWindow {
            slots: empty_ring(cap).expect("a small first ring"),
            occupied: Occupancy::new(cap),
            last: 0,
            cycle: 0,
            base: 0,
            unsent: 0,
            waiting: 0,
            wanted: None,
            flushing: false,
            gap_through: 0,
            max,
            initial: cap,
            payloads: Payloads::new(budget),
            next_payload: None,
            budget,
            loss,
            skip_steps: 0,
        }
    }

    /// The next seq to deliver.
    pub fn next_seq(&self) -> u64 {
        self.last.wrapping_add(1)
    }

    /// The position of the next seq to deliver.
    pub fn next(&self) -> Pos {
        self.at() + 1
    }

    /// The position of the last seq delivered or skipped.
    fn at(&self) -> Pos {
        self.base + Pos::from(self.last)
    }

    /// Events waiting for an earlier seq.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Slots allocated now.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Most events held beyond the next expected seq (`max`, as the budget allows).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Bytes held for waiting events now: the ring and the kept payloads.
    pub fn bytes(&self) -> usize {
        self.ring_bytes(self.slots.len())
            + self.payloads.bytes()
            + self.next_payload.as_ref().map_or(0, |(_, p)| p.capacity())
    }

    /// The source's reorder distance, as learned this session.
    pub fn disorder(&self) -> u64 {
        self.loss.disorder()
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    fn ring_bytes(&self, slots: usize) -> usize {
        slots * SLOT_BYTES + Occupancy::bytes_for(slots)
    }

    /// The length of `ev`'s payload if it is to be kept (not canonical).
    fn kept(ev: &Event, payload: &[u8]) -> Option<usize> {
        (!ev.canonical).then_some(payload.len())
    }

    /// How many seqs `seq` is ahead of the last seq delivered, or `None` if it is behind:
    /// late. Above the last seq, in this cycle: ahead, and once the sequence has wrapped,
    /// more than half the space above is taken for a late one of the previous cycle (a
    /// copy of `u64::MAX` just after the end); in the first cycle nothing earlier passed
    /// it. At or below the last seq: ahead in the next cycle if within `max` of the highest
    /// seq stored (near the end; arrivals are stored before the pops that follow them), or
    /// if this cycle skipped it before delivering anything and it is less than half the
    /// space ahead (a session that started near the end: it is ahead as it would be in
    /// any other part of the space); else passed in this cycle, however far behind.
    #[inline]
    fn ahead(&self, seq: u64) -> Option<u64> {
        if seq > self.last {
            let ahead = seq - self.last;
            let far = self.cycle == 0 || ahead < 1 << 63;
            (ahead <= self.max || far).then_some(ahead)
        } else {
            // `u64::MAX - last + seq` (no overflow: seq <= last).
            let ahead = seq.wrapping_sub(self.last).wrapping_sub(1);
            // What waits lies within `max` of the last seq, so this is at most 2 * max.
            let stored = u64::try_from(self.loss.highest().saturating_sub(self.at()));
            let reach = self.max.saturating_add(stored.unwrap_or(u64::MAX));
            let unsent = seq <= self.unsent && ahead < 1 << 63;
            (ahead <= reach || unsent).then_some(ahead)
        }
    }

    /// `seq`'s position (see [`ahead`](Self::ahead)).
    fn position(&self, seq: u64) -> Pos {
        match self.ahead(seq) {
            Some(ahead) => self.at() + Pos::from(ahead),
            None => self.behind(seq),
        }
    }

    /// The position of `seq`, one that [`ahead`](Self::ahead) finds behind.
    fn behind(&self, seq: u64) -> Pos {
        if seq <= self.last {
            self.base + Pos::from(seq)
        } else {
            // The previous cycle's (only once wrapped, so no underflow).
            self.base + Pos::from(seq) - CYCLE
        }
    }

    /// The ring index of `seq`, one that [`ahead`](Self::ahead) finds ahead: its
    /// position's low 64 bits.
    fn index(&self, seq: u64) -> u64 {
        let next_cycle = u64::from(seq <= self.last);
        seq.wrapping_sub(self.cycle).wrapping_sub(next_cycle)
    }

    /// Whether a pop would move the last seq on now: the next seq waits, or the end of
    /// the space is next.
    fn ready(&self) -> bool {
        let Some(next) = self.last.checked_add(1) else {
            return true;
        };
        self.slots[self.slot(next.wrapping_sub(self.cycle))].seq == next
    }

    /// The seq `k` seqs after the last one (past the end, the next cycle's).
    fn seq_after(&self, k: u64) -> u64 {
        let (seq, past_the_end) = self.last.overflowing_add(k);
        seq + u64::from(past_the_end)
    }

    /// Whether `ev` (with `payload`, the line as read) can be stored without skipping.
    pub fn fits(&self, ev: &Event, payload: &[u8]) -> bool {
        self.fits_cost(self.position(ev.seq), Self::kept(ev, payload))
    }

    fn fits_distance(&self, pos: Pos) -> bool {
        let at = self.at();
        pos <= at || pos - at <= Pos::from(self.max)
    }

    fn fits_cost(&self, pos: Pos, kept: Option<usize>) -> bool {
        let at = self.at();
        if pos <= at + 1 {
            // Late: stored nowhere. Next: the next pop takes it, so its payload is held
            // for no longer than that (the only moment the budget may be passed, by one
            // line).
            return true;
        }
        if !self.fits_distance(pos) {
            return false;
        }
        let slots = self.slots.len().max(ring_size((pos - at) as u64));
        let payloads = match kept {
            Some(len) => self.payloads.bytes_after(len),
            None => self.payloads.bytes(),
        };
        self.ring_bytes(slots) + payloads <= self.budget
    }

    /// The slot of ring index `index` (see [`index`](Self::index)).
    fn slot(&self, index: u64) -> usize {
        debug_assert!(self.slots.len().is_power_of_two());
        (index & (self.slots.len() as u64 - 1)) as usize
    }

    /// Stores `ev`. `payload` (the line as read) is copied only when the event is not
    /// canonical.
    #[inline(always)]
    pub fn insert(&mut self, ev: Event, payload: &[u8]) -> Insert {
        debug_assert!(ev.seq >= 1);
        // Late (or, near the end of the space, the next cycle's), past the ring, past
        // `max` (the ring may be larger: a power of two at or above it), or with a
        // payload to keep: checked.
        if ev.seq <= self.last {
            return self.insert_rare(ev, payload);
        }
        let distance = ev.seq - self.last;
        if distance > self.slots.len() as u64 || distance > self.max || !ev.canonical {
            return self.insert_rare(ev, payload);
        }
        let i = self.slot(ev.seq.wrapping_sub(self.cycle));
        if self.slots[i].seq == ev.seq {
            return Insert::Duplicate;
        }
        self.store_at(i, ev, distance);
        Insert::Stored
    }

    /// `seq`, which [`ahead`](Self::ahead) found behind: late, or a false skip.
    #[cold]
    fn late(&mut self, seq: u64) -> Insert {
        if self.loss.false_skip(self.behind(seq), self.max) {
            Insert::FalseSkip
        } else {
            Insert::Late
        }
    }

    /// [`insert`](Self::insert) for an event behind, beyond the ring or with a payload to
    /// keep: the budget is checked, the ring may grow.
    #[cold]
    #[inline(never)]
    fn insert_rare(&mut self, ev: Event, payload: &[u8]) -> Insert {
        let Some(distance) = self.ahead(ev.seq) else {
            if self.ready() {
                return Insert::Deferred;
            }
            return self.late(ev.seq);
        };
        let within = distance <= self.slots.len() as u64;
        if within && self.slots[self.slot(self.index(ev.seq))].seq == ev.seq {
            return Insert::Duplicate;
        }
        if !self.fits(&ev, payload) {
            return Insert::Full;
        }
        if !within && !self.grow(distance) {
            return Insert::Full; // no memory for a larger ring: `max` was lowered to fit
        }
        self.store_at(self.slot(self.index(ev.seq)), ev, distance);
        if !ev.canonical {
            if distance == 1 {
                let mut kept = self.next_payload.take().map(|(_, p)| p).unwrap_or_default();
                kept.clear();
                kept.extend_from_slice(payload);
                self.next_payload = Some((ev.seq, kept));
            } else {
                self.payloads.put(ev.seq, payload);
            }
        }
        Insert::Stored
    }

    #[inline(always)]
    fn store_at(&mut self, i: usize, ev: Event, distance: u64) {
        // Every stored seq lies in last+1 ..= last+capacity, so no two share a slot.
        debug_assert_eq!(self.slots[i].seq, 0);
        self.slots[i] = ev;
        // Within `NEAR` of the next seq it stays within `NEAR` (`last` only grows), where
        // `next_waiting` looks at the slots themselves: no mark needed.
        if distance > NEAR {
            self.occupied.set(i);
        }
        self.waiting += 1;
        self.loss.arrived(self.at() + Pos::from(distance));
    }

    /// Grows the ring to hold `distance`; if the memory cannot be had, the window stays as
    /// it is and holds no more than it can from now on (warned): refused, not aborted.
    fn grow(&mut self, distance: u64) -> bool {
        let cap = ring_size(distance).min(ring_size(self.max));
        debug_assert!(cap as u64 >= distance);
        let Some(mut slots) = empty_ring(cap) else {
            self.max = self.slots.len() as u64;
            log::warn!(
                "reorder window cannot grow to {cap} slots (out of memory): it holds at most {} events from now on",
                self.max
            );
            return false;
        };
        let mut occupied = Occupancy::new(cap);
        for ev in self.slots.iter().filter(|e| e.seq != 0) {
            let i = (self.index(ev.seq) & (cap as u64 - 1)) as usize;
            slots[i] = *ev;
            occupied.set(i);
        }
        self.slots = slots;
        self.occupied = occupied;
        true
    }

    /// The next event if it is here; else a skip if policy says so; else `None`.
    #[inline(always)]
    pub fn pop(&mut self) -> Option<Pop> {
        if self.last == u64::MAX {
            // The position stays: the end is no seq.
            self.last = 0;
            self.cycle += 1;
            self.base += CYCLE;
            self.unsent = 0;
            return Some(Pop::Wrapped);
        }
        let seq = self.last + 1;
        let index = seq.wrapping_sub(self.cycle);
        let i = self.slot(index);
        if self.slots[i].seq == seq {
            let ev = self.slots[i];
            self.slots[i].seq = 0; // empty: the rest of the slot is never read (nor its mark)
            self.last = seq;
            self.waiting -= 1;
            // Half a ring ahead: where events arriving soon will be stored.
            let ahead = self.slot(index.wrapping_add(self.slots.len() as u64 / 2));
            prefetch(self.slots.as_ptr().wrapping_add(ahead));
            return Some(Pop::Event(ev));
        }
        // The next seq is not here; usually nothing is to be skipped either. (These are the
        // conditions `pop_missing` skips on, tested first here without a call: keep them in
        // step.)
        if !self.flushing
            && self.wanted.is_none()
            && self.at() >= self.gap_through
            && !self.loss.lost(self.waiting)
        {
            return None;
        }
        self.pop_missing()
    }

    /// [`pop`](Self::pop) when the next seq is not here and a skip may be due.
    #[cold]
    #[inline(never)]
    fn pop_missing(&mut self) -> Option<Pop> {
        let (through, why) = if self.flushing && self.waiting > 0 {
            (Pos::MAX, Skip::SessionEnd)
        } else if let Some((pos, cost)) = self.wanted {
            if self.fits_cost(pos, cost) {
                self.wanted = None;
                return None;
            }
            if !self.fits_distance(pos) {
                (pos - Pos::from(self.max), Skip::Room)
            } else {
                // Near enough, but over the byte budget: give up on the oldest gap, which
                // delivers what waits behind it; at worst the event becomes the next one.
                (pos - 1, Skip::Room)
            }
        } else if self.at() < self.gap_through {
            (self.gap_through, Skip::Timeout)
        } else if self.loss.lost(self.waiting) {
            (Pos::MAX, Skip::Lost) // up to the first waiting event
        } else {
            return None;
        };
        self.skip_missing(through, why)
    }

    /// Appends the original payload of the non-canonical event `seq` just popped to
    /// `out`; false if none was kept. (Kept apart from [`Pop`] so the common event moves
    /// through the pipeline as 32 plain bytes.)
    pub fn take_payload(&mut self, seq: u64, out: &mut Vec<u8>) -> bool {
        if let Some((next, kept)) = &mut self.next_payload {
            if *next == seq {
                out.extend_from_slice(kept);
                *next = 0; // taken; the buffer stays for the next one
                return true;
            }
        }
        self.payloads.take(seq, out)
    }

    /// Moves `last` over missing seqs, up to `through`, the first waiting event or the
    /// end of the cycle (the next pop passes it), whichever comes first.
    fn skip_missing(&mut self, through: Pos, why: Skip) -> Option<Pop> {
        let from = self.at() + 1;
        if through < from || self.last == u64::MAX {
            return None; // (at the end, the next pop passes it first)
        }
        let stop = match self.next_waiting() {
            Some(pos) => through.min(pos - 1),
            None => through,
        };
        if stop < from {
            return None;
        }
        let through = stop.min(self.base + CYCLE);
        if self.last == self.unsent {
            self.unsent = (through - self.base) as u64; // nothing delivered yet this cycle
        }
        self.last = (through - self.base) as u64;
        self.loss.skipped(from, through);
        Some(Pop::Skipped {
            from: (from - self.base) as u64,
            through: self.last,
            why,
        })
    }

    /// The position of the lowest waiting seq: among the next `NEAR` slots by looking at
    /// them, beyond through the occupancy bitmap. Every waiting seq lies within the
    /// capacity after the last one, so ring order from the next one's slot is seq order.
    fn next_waiting(&mut self) -> Option<Pos> {
        if self.waiting == 0 {
            return None;
        }
        let cap = self.slots.len() as u64;
        let near = NEAR.min(cap);
        let last = self.last.wrapping_sub(self.cycle); // its ring index
        let found = (1..=near)
            .find(|&k| self.slots[self.slot(last.wrapping_add(k))].seq == self.seq_after(k));
        if let Some(k) = found {
            self.skip_steps += k;
            return Some(self.at() + Pos::from(k));
        }
        self.skip_steps += near;
        if near == cap {
            debug_assert!(false, "{} waiting, none in the ring", self.waiting);
            return None;
        }
        let start = self.slot(last.wrapping_add(1));
        let slots = &self.slots;
        let (found, steps) = self
            .occupied
            .next_full(self.slot(last.wrapping_add(1 + near)), |i| {
                slots[i].seq != 0
            });
        self.skip_steps += steps;
        let i = found?;
        let k = 1 + (i.wrapping_sub(start) & (self.slots.len() - 1)) as u64;
        debug_assert_eq!(self.slots[i].seq, self.seq_after(k));
        Some(self.at() + Pos::from(k))
    }

    /// Gap timeout: from now on, [`pop`](Self::pop) gives up on every missing seq up to
    /// `through` (at most the highest seq stored), delivering what waits between them: holes
    /// that were missing together are given up together.
    pub fn skip_gaps_through(&mut self, through: Pos) {
        self.gap_through = self.gap_through.max(through.min(self.loss.highest()));
    }

    /// Holds loss detection off while several sources are connected (or lets it resume):
    /// their merged stream is as disordered as one runs ahead of another, which is no
    /// evidence of loss; the gap timeout still applies.
    pub fn suspend_loss_detection(&mut self, suspended: bool) {
        self.loss.suspend(suspended, self.next());
    }

    /// The position of the highest seq stored this session.
    pub fn highest(&self) -> Pos {
        self.loss.highest()
    }

    /// Gives up on the missing seqs before the first waiting event, now.
    pub fn skip_gap(&mut self) -> Option<Pop> {
        if self.waiting == 0 {
            return None;
        }
        self.skip_missing(Pos::MAX, Skip::Timeout)
    }

    /// Window full for `ev`: from now on, missing seqs are skipped, oldest first, until it
    /// [`fits`](Self::fits).
    pub fn make_room(&mut self, ev: &Event, payload: &[u8]) {
        self.wanted = Some((self.position(ev.seq), Self::kept(ev, payload)));
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
            self.slots = empty_ring(self.initial).expect("a small first ring");
        } else {
            self.slots.fill(EMPTY);
        }
        self.occupied = Occupancy::new(self.slots.len());
        self.payloads.release();
        self.next_payload = None;
        self.last = 0;
        self.cycle = 0;
        self.base = 0;
        self.unsent = 0;
        self.waiting = 0;
        self.wanted = None;
        self.flushing = false;
        self.gap_through = 0;
        self.loss.reset();
    }
}

/// `n` empty slots, zeroed by the allocator. A large ring then comes from fresh pages the
/// kernel zeroes on first touch, so growing it costs the slots written, not a fill of the
/// whole ring (a 32 MiB fill was a 10 ms turn per growth, repeatable by any source).
/// `None` if the memory cannot be had.
fn empty_ring(n: usize) -> Option<Vec<Event>> {
    let layout = std::alloc::Layout::array::<Event>(n).ok()?;
    if layout.size() == 0 {
        return Some(Vec::new());
    }
    // SAFETY: the layout has a non-zero size. An all-zero `Event` is a valid value (seq 0,
    // `Kind::Follow` = 0 under `repr(u8)`, from and to 0, canonical false) and an empty slot
    // (seq 0). The allocation is the global allocator's, with exactly the size and
    // alignment of `n` events, as `Vec::from_raw_parts` requires for length and capacity n.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<Event>();
        if ptr.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(ptr, n, n))
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
                Pop::Skipped { from, through, .. } => skipped.push((from, through)),
                Pop::Wrapped => skipped.push((u64::MAX, 0)),
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
            let mut w = ReorderWindow::new(4, 1 << 20, usize::MAX, LossDetector::new(false));
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
        let mut w = ReorderWindow::new(4, 1 << 20, usize::MAX, LossDetector::new(false));
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
        let mut w = ReorderWindow::new(8, 8, usize::MAX, LossDetector::new(false));
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
        let mut w = ReorderWindow::new(4, 100, usize::MAX, LossDetector::new(false));
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
        let mut w = ReorderWindow::new(4, 100, usize::MAX, LossDetector::new(false));
        assert_eq!(w.skip_gap(), None, "nothing waits: nothing to skip");
        for s in [5, 6, 9] {
            w.insert(ev(s), b"");
        }
        assert_eq!(drain(&mut w), (vec![], vec![]));
        assert_eq!(
            w.skip_gap(),
            Some(Pop::Skipped {
                from: 1,
                through: 4,
                why: Skip::Timeout
            })
        );
        assert_eq!(drain(&mut w).0, vec![5, 6]);
        assert_eq!(
            w.skip_gap(),
            Some(Pop::Skipped {
                from: 7,
                through: 8,
                why: Skip::Timeout
            })
        );
        assert_eq!(drain(&mut w).0, vec![9]);
        assert_eq!(w.skip_gap(), None);
        assert_eq!(
            w.insert(ev(7), b""),
            Insert::FalseSkip,
            "given up on, then arrived"
        );
        assert_eq!(w.insert(ev(6), b""), Insert::Late, "delivered");
    }

    #[test]
    fn window_full_skips_the_oldest_missing_seqs_until_it_fits() {
        let mut w = ReorderWindow::new(4, 8, usize::MAX, LossDetector::new(false));
        w.insert(ev(3), b"");
        w.insert(ev(5), b"");
        // Next expected is 1: 8 beyond it no longer fits.
        assert!(w.fits(&ev(8), b""));
        assert!(!w.fits(&ev(9), b""));
        assert_eq!(w.insert(ev(12), b""), Insert::Full);
        w.make_room(&ev(12), b"");
        let (got, skipped) = drain(&mut w);
        // 12 needs last >= 4: 1-2 skipped, 3 delivered, 4 skipped; 5 delivered on the way.
        assert_eq!(got, vec![3, 5]);
        assert_eq!(skipped, vec![(1, 2), (4, 4)]);
        assert!(w.fits(&ev(12), b""));
        assert_eq!(w.insert(ev(12), b""), Insert::Stored);
        assert_eq!(w.capacity(), 8, "never past max");
        assert_eq!(w.insert(ev(6), b""), Insert::Stored);
        assert_eq!(drain(&mut w).0, vec![6]);
    }

    /// Each skip says why: the reason reaches the operator's warning.
    #[test]
    fn a_skip_says_why() {
        // Pops until nothing more; the reasons of the skips on the way.
        let whys = |w: &mut ReorderWindow| {
            let mut whys = Vec::new();
            while let Some(p) = w.pop() {
                if let Pop::Skipped { why, .. } = p {
                    whys.push(why);
                }
            }
            whys
        };
        let mut w = ReorderWindow::new(4, 8, usize::MAX, LossDetector::new(false));
        w.insert(ev(3), b"");
        assert_eq!(w.insert(ev(12), b""), Insert::Full);
        w.make_room(&ev(12), b"");
        assert_eq!(whys(&mut w), [Skip::Room, Skip::Room], "1-2, then 4");
        assert_eq!(w.insert(ev(12), b""), Insert::Stored);
        w.skip_gaps_through(12);
        assert_eq!(whys(&mut w), [Skip::Timeout]);
        w.insert(ev(14), b"");
        w.start_flush();
        assert_eq!(whys(&mut w), [Skip::SessionEnd]);
        let mut w = ReorderWindow::new(4, 1 << 20, usize::MAX, LossDetector::new(true));
        for seq in 2..=600 {
            w.insert(ev(seq), b"");
        }
        assert_eq!(whys(&mut w), [Skip::Lost], "599 waiting, none out of order");
    }

    /// `max` is the limit even where the ring is larger than it (the ring is the power of
    /// two at or above it): found by a fresh-eyes attack with `--max-window 100`.
    #[test]
    fn max_holds_exactly_whatever_the_ring_size() {
        for max in [1u64, 5, 6, 8, 100] {
            let mut w = ReorderWindow::new(4, max, usize::MAX, LossDetector::new(false));
            // The ring at its largest: the power of two at or above max.
            assert_eq!(w.insert(ev(max), b""), Insert::Stored, "max {max}");
            assert_eq!(w.capacity() as u64, max.next_power_of_two());
            assert!(!w.fits(&ev(max + 1), b""), "max {max}");
            assert_eq!(w.insert(ev(max + 1), b""), Insert::Full, "max {max}");
        }
    }

    /// Within `NEAR` of the end of the sequence space, a hole is skipped alone and what
    /// waits behind it is delivered (found by a fresh-eyes attack: the search for the next
    /// waiting event overflowed past u64::MAX, skipped the waiting event with the hole, and
    /// session end then looped for ever on an event counted as waiting that was gone).
    #[test]
    fn a_hole_near_the_end_of_the_sequence_space_skips_only_itself() {
        for back in [2u64, 3, 4, 10, NEAR - 1, NEAR, NEAR + 1, NEAR + 5, 5000] {
            let mut w = ReorderWindow::new(4, 1 << 20, usize::MAX, LossDetector::new(false));
            let first = u64::MAX - back;
            if w.insert(ev(first), b"") == Insert::Full {
                w.make_room(&ev(first), b"");
                drain(&mut w);
                assert_eq!(w.insert(ev(first), b""), Insert::Stored);
            }
            assert!(w.skip_gap().is_some());
            assert_eq!(drain(&mut w).0, vec![first], "back {back}");
            // The next seq missing, the one after it waiting.
            let later = first + 2;
            assert_eq!(w.insert(ev(later), b""), Insert::Stored);
            assert_eq!(
                w.skip_gap(),
                Some(Pop::Skipped {
                    from: first + 1,
                    through: first + 1,
                    why: Skip::Timeout
                }),
                "back {back}"
            );
            let (got, skipped) = drain(&mut w);
            assert_eq!(got, vec![later], "back {back}");
            assert!(skipped.iter().all(|&s| s == (u64::MAX, 0)), "{skipped:?}");
            assert_eq!(w.waiting(), 0);
            // Session end with nothing waiting: nothing to skip, and it ends.
            w.start_flush();
            let mut pops = 0;
            while w.pop().is_some() {
                pops += 1;
                assert!(pops < 10, "back {back}: session end does not end");
            }
        }
    }

    /// Jumps `w` to `to`, far ahead: room made, the holes before it given up, it delivered.
    fn jump(w: &mut ReorderWindow, to: u64) {
        assert_eq!(w.insert(ev(to), b""), Insert::Full);
        w.make_room(&ev(to), b"");
        drain(w);
        assert_eq!(w.insert(ev(to), b""), Insert::Stored);
        assert!(w.skip_gap().is_some());
        assert_eq!(drain(w).0, vec![to]);
    }

    /// A window of `max` whose last seq delivered is `first` (reached by a far jump).
    fn jumped_to(first: u64, max: u64, loss: LossDetector) -> ReorderWindow {
        let mut w = ReorderWindow::new(4, max, usize::MAX, loss);
        jump(&mut w, first);
        w
    }

    /// A window whose last seq delivered is `u64::MAX - back` (reached by a far jump).
    fn near_the_end(back: u64, loss: LossDetector) -> ReorderWindow {
        jumped_to(u64::MAX - back, 1 << 20, loss)
    }

    /// The last `k` seqs of the space and the first `k` of the next cycle.
    fn across_the_end(k: u64) -> Vec<u64> {
        (u64::MAX - k + 1..=u64::MAX).chain(1..=k).collect()
    }

    /// Found by a second fresh-eyes attack (session 7): seqs of the next cycle that came
    /// before `u64::MAX` was delivered were judged late (seq <= last) and dropped. Within
    /// the window they are ahead, whatever the order, and learned loss detection sees the
    /// disorder as it is, not as 2^64.
    #[test]
    fn the_next_cycle_may_arrive_before_the_end_of_this_one() {
        for (k, seed) in [(1, 1), (3, 2), (100, 3), (NEAR + 7, 4), (5000, 5)] {
            for learned in [false, true] {
                let mut w = near_the_end(k, LossDetector::new(learned));
                let mut seqs = across_the_end(k);
                Rng::new(seed).shuffle(&mut seqs);
                let mut got = Vec::new();
                let mut wraps = 0;
                for s in seqs {
                    assert_eq!(w.insert(ev(s), b""), Insert::Stored, "k {k}: {s}");
                    let (mut out, skipped) = drain(&mut w);
                    got.append(&mut out);
                    assert!(skipped.iter().all(|&s| s == (u64::MAX, 0)), "{skipped:?}");
                    wraps += skipped.len();
                }
                assert_eq!(got, across_the_end(k), "k {k} learned {learned}");
                assert_eq!((wraps, w.waiting(), w.next_seq()), (1, 0, k + 1));
                // 2k seqs (the end between them is none).
                assert!(w.disorder() < 2 * k, "learned {}", w.disorder());
            }
        }
    }

    /// Found by a third fresh-eyes attack: the end of the space took a place in the window
    /// as if it were a seq, so across it an event `max` - 1 seqs ahead of the next one was
    /// refused as `max` ahead, and the next seq was skipped to make room (then lost). The
    /// end takes no place: `max` seqs fit across it as anywhere else.
    #[test]
    fn the_end_of_the_space_takes_no_place_in_the_window() {
        let max = u64::MAX;
        for (window, back, arrivals) in [
            (2, 3, vec![max - 1, max - 2, 1, max]),
            (4, 4, vec![max - 2, max - 3, 2, max - 1, 1, max]),
            (1 << 20, 11, vec![(1 << 20) - 11, max - 10]),
        ] {
            let first = max - back;
            let mut w = jumped_to(first, window, LossDetector::new(false));
            let mut got = Vec::new();
            for s in arrivals.iter().copied() {
                assert_eq!(w.insert(ev(s), b""), Insert::Stored, "window {window}: {s}");
                let (mut out, skipped) = drain(&mut w);
                assert!(skipped.iter().all(|&s| s == (max, 0)), "{skipped:?}");
                got.append(&mut out);
            }
            let mut want = arrivals;
            want.sort_by_key(|&s| s.wrapping_sub(first));
            if window == 1 << 20 {
                want.retain(|&s| s > first); // the rest waits behind a hole
            }
            assert_eq!(got, want, "window {window}");
        }
    }

    /// Arrivals are stored before the pops that follow them: a seq of the next cycle
    /// beyond `max` of the last seq delivered, but within `max` of the highest one stored,
    /// is ahead (room is made, delivering what waits), as it would be anywhere in the space,
    /// not late (found by the third fresh-eyes attack: `u64::MAX - 1`, `u64::MAX - 2`, 1,
    /// `u64::MAX` in one read at `--max-window 2` lost seq 1).
    #[test]
    fn the_next_cycle_is_ahead_within_max_of_the_highest_seq_stored() {
        let max = u64::MAX;
        let mut w = ReorderWindow::new(4, 2, usize::MAX, LossDetector::new(true));
        let mut got = Vec::new();
        for s in [max - 1, max - 2, 1, max] {
            if w.insert(ev(s), b"") == Insert::Full {
                w.make_room(&ev(s), b"");
                while !w.fits(&ev(s), b"") {
                    if let Some(Pop::Event(e)) = w.pop() {
                        got.push(e.seq);
                    }
                }
                assert_eq!(w.insert(ev(s), b""), Insert::Stored, "{s}");
            }
        }
        got.extend(drain(&mut w).0);
        assert_eq!(got, vec![max - 2, max - 1, max, 1]);
        // Beyond that, a seq at or below the last one is late.
        assert_eq!(
            w.insert(ev(1 << 40), b""),
            Insert::Full,
            "ahead in this cycle"
        );
        assert_eq!(w.insert(ev(1), b""), Insert::Late);
    }

    /// A session that starts far ahead skips seqs no one ever got: near the end, the
    /// next cycle's are ahead however far, as they would be anywhere else in the space
    /// (room is made), not late (the third fresh-eyes attack's differential test: the
    /// same shuffle mid-space and across the end delivered different events). Once one
    /// was delivered in this cycle, the rest below the last seq are late; and so is one
    /// that would be more than half the space ahead (a hole skipped at a cycle's start
    /// is not the next cycle's).
    #[test]
    fn seqs_this_cycle_only_skipped_are_ahead_in_the_next() {
        let max = u64::MAX;
        let mut w = near_the_end(3, LossDetector::new(false)); // 1..=max - 4 skipped
        assert_eq!(w.insert(ev(1 << 30), b""), Insert::Full);
        // Skipped, but as the next cycle's more than half the space ahead: late.
        assert_eq!(w.insert(ev(max - 4), b""), Insert::FalseSkip);
        assert_eq!(w.insert(ev(max - 3), b""), Insert::Late, "delivered");
        let mut w = ReorderWindow::new(4, 2, usize::MAX, LossDetector::new(false));
        assert_eq!(w.insert(ev(max - 3), b""), Insert::Full);
        w.make_room(&ev(max - 3), b"");
        drain(&mut w); // 1..=max - 5 skipped
        assert_eq!(w.insert(ev(max - 3), b""), Insert::Stored);
        assert_eq!(
            w.insert(ev(7), b""),
            Insert::Full,
            "skipped, never delivered"
        );
        assert_eq!(w.insert(ev(max - 4), b""), Insert::Stored);
        assert_eq!(drain(&mut w).0, vec![max - 4, max - 3]);
        assert_eq!(w.insert(ev(max - 3), b""), Insert::Late);
        assert_eq!(w.insert(ev(7), b""), Insert::Full, "still never delivered");
    }

    /// Found by a second fresh-eyes attack on the end of the space: lines that arrive
    /// together are all stored before any is delivered, so a line behind the last seq
    /// delivered may be judged against one the lines before it have already moved on
    /// (at the end, onto the next cycle). It is deferred until what is ready has been
    /// popped, and judged then, as if it had come alone.
    #[test]
    fn a_seq_behind_is_judged_after_what_is_ready_is_popped() {
        /// Offers `s` as the server does; what is popped meanwhile goes to `got`.
        fn offer(w: &mut ReorderWindow, s: u64, got: &mut Vec<u64>) -> Insert {
            loop {
                match w.insert(ev(s), b"") {
                    Insert::Full => {
                        w.make_room(&ev(s), b"");
                        while !w.fits(&ev(s), b"") {
                            if let Some(Pop::Event(e)) = w.pop() {
                                got.push(e.seq);
                            }
                        }
                    }
                    Insert::Deferred => got.extend(drain(w).0),
                    outcome => return outcome,
                }
            }
        }
        let max = u64::MAX;
        let mut w = ReorderWindow::new(4, 4, usize::MAX, LossDetector::new(false));
        let mut got = Vec::new();
        for s in [1, 2, 3] {
            assert_eq!(offer(&mut w, s, &mut got), Insert::Stored);
            got.extend(drain(&mut w).0);
        }
        for s in [max - 5, max - 4, max - 3, max - 2] {
            assert_eq!(offer(&mut w, s, &mut got), Insert::Stored);
        }
        got.extend(drain(&mut w).0);
        // One read: the end, and the next cycle's 12 (beyond the window of max - 2).
        assert_eq!(offer(&mut w, max, &mut got), Insert::Stored);
        assert_eq!(offer(&mut w, max - 1, &mut got), Insert::Stored);
        assert_eq!(w.insert(ev(12), b""), Insert::Deferred);
        assert_eq!(offer(&mut w, 12, &mut got), Insert::Stored);
        for s in [9, 10, 11] {
            assert_eq!(offer(&mut w, s, &mut got), Insert::Stored);
        }
        got.extend(drain(&mut w).0);
        let want = [
            1,
            2,
            3,
            max - 5,
            max - 4,
            max - 3,
            max - 2,
            max - 1,
            max,
            9,
            10,
            11,
            12,
        ];
        assert_eq!(got, want);
        // Nothing ready: a seq behind is judged at once.
        assert_eq!(w.insert(ev(10), b""), Insert::Late);
    }

    /// Holes on both sides of the end: each skip's range stays within one cycle, and what
    /// waits is delivered in order (by the gap timeout, and by a session end).
    #[test]
    fn holes_across_the_end_are_skipped_within_each_cycle() {
        for session_end in [false, true] {
            let mut w = near_the_end(3, LossDetector::new(false));
            for s in [u64::MAX, 2] {
                assert_eq!(w.insert(ev(s), b""), Insert::Stored);
            }
            assert_eq!(drain(&mut w), (vec![], vec![]));
            if session_end {
                w.start_flush();
            } else {
                w.skip_gaps_through(w.highest());
            }
            let max = u64::MAX;
            let (got, skipped) = drain(&mut w);
            assert_eq!(got, vec![max, 2]);
            assert_eq!(skipped, vec![(max - 2, max - 1), (max, 0), (1, 1)]);
            assert_eq!(w.waiting(), 0);
        }
    }

    /// After the end, a late copy of a seq from the end of the last cycle is late, not an
    /// event 2^64 ahead (which skipped the whole space to deliver it a second time, and then
    /// dropped the new cycle's seqs as late).
    #[test]
    fn after_the_end_the_last_cycle_is_behind() {
        let mut w = near_the_end(2, LossDetector::new(false));
        for s in [u64::MAX - 1, u64::MAX, 1] {
            assert_eq!(w.insert(ev(s), b""), Insert::Stored);
        }
        drain(&mut w);
        for s in [u64::MAX, u64::MAX - 1, 1] {
            assert_eq!(w.insert(ev(s), b""), Insert::Late, "{s}");
        }
        // Skipped by the jump to the end.
        assert_eq!(w.insert(ev(u64::MAX - 5000), b""), Insert::FalseSkip);
        assert_eq!(w.insert(ev(3), b""), Insert::Stored);
        assert_eq!(w.insert(ev(2), b""), Insert::Stored);
        assert_eq!(drain(&mut w), (vec![2, 3], vec![]));
        // Far ahead in the new cycle is still far ahead.
        assert_eq!(w.insert(ev(1 << 40), b""), Insert::Full);
    }

    /// Found by a third fresh-eyes attack: after a jump of more than half the space, a
    /// late copy of a seq delivered earlier in the same cycle read as the next cycle's
    /// (less than half the space ahead), was jumped to and delivered a second time.
    #[test]
    fn a_seq_passed_in_this_cycle_is_late_however_far_behind() {
        for wrapped in [false, true] {
            let mut w = ReorderWindow::new(4, 1 << 20, usize::MAX, LossDetector::new(false));
            if wrapped {
                w = near_the_end(0, LossDetector::new(false)); // delivered u64::MAX
                assert_eq!(w.next_seq(), 1);
            }
            for s in [1, 2] {
                assert_eq!(w.insert(ev(s), b""), Insert::Stored);
            }
            assert_eq!(drain(&mut w).0, vec![1, 2]);
            // Two jumps: once wrapped, more than half the space ahead reads as behind.
            let far = (1 << 63) + 2;
            for to in [1 << 62, far] {
                jump(&mut w, to);
            }
            for s in [1, 2, far - 5] {
                assert!(
                    matches!(w.insert(ev(s), b""), Insert::Late | Insert::FalseSkip),
                    "wrapped {wrapped}: {s}"
                );
            }
            assert_eq!(w.insert(ev(far + 1), b""), Insert::Stored);
            assert_eq!(drain(&mut w).0, vec![far + 1]);
        }
    }

    #[test]
    fn a_huge_jump_is_skipped_without_walking_every_seq() {
        let mut w = ReorderWindow::new(4, 1 << 20, usize::MAX, LossDetector::new(false));
        w.insert(ev(2), b"");
        let far = u64::MAX - 1;
        assert_eq!(w.insert(ev(far), b""), Insert::Full);
        w.make_room(&ev(far), b"");
        let (got, skipped) = drain(&mut w);
        assert_eq!(got, vec![2]);
        assert_eq!(skipped, vec![(1, 1), (3, far - (1 << 20))]);
        assert_eq!(w.insert(ev(far), b""), Insert::Stored);
        w.start_flush();
        let (got, _) = drain(&mut w);
        assert_eq!(got, vec![far]);
        assert_eq!(w.insert(ev(u64::MAX), b""), Insert::Stored);
        assert_eq!(w.capacity(), 1 << 20, "grown to max, never past it");
        // The last seq delivered, the sequence starts again at 1: nothing is wedged.
        assert_eq!(drain(&mut w), (vec![u64::MAX], vec![(u64::MAX, 0)]));
        assert_eq!(w.next_seq(), 1);
        assert_eq!(w.insert(ev(2), b""), Insert::Stored);
        assert_eq!(w.insert(ev(1), b""), Insert::Stored);
        assert_eq!(drain(&mut w).0, vec![1, 2]);
    }

    /// Zero-padded (non-canonical) events of random lengths under random budgets: the bytes
    /// held never pass the budget, room is always made, nothing is lost or reordered.
    #[test]
    fn kept_payloads_stay_within_the_byte_budget() {
        for seed in 0..40 {
            let mut rng = Rng::new(seed);
            let budget = MIN_BUDGET + rng.below(4 * MIN_BUDGET as u64) as usize;
            let mut w = ReorderWindow::new(2, 1 << 20, budget, LossDetector::new(false));
            assert!(w.bytes() <= budget);
            let (mut prev, mut accounted, mut full) = (0, 0, 0);
            for _ in 0..3000 {
                let s = w.next_seq() + rng.below(3000);
                let line = format!("0{s:0>width$}|B", width = rng.below(1000) as usize);
                let odd = crate::event::parse(line.as_bytes()).unwrap();
                let outcome = w.insert(odd, line.as_bytes());
                if outcome == Insert::Full {
                    full += 1;
                    w.make_room(&odd, line.as_bytes());
                    while !w.fits(&odd, line.as_bytes()) {
                        let p = w.pop().expect("room must be made");
                        if let Pop::Event(e) = p {
                            let mut kept = Vec::new();
                            assert!(w.take_payload(e.seq, &mut kept));
                            assert_eq!(crate::event::parse(&kept).unwrap().seq, e.seq);
                        }
                        account(p, &mut prev, &mut accounted);
                    }
                    assert_eq!(w.insert(odd, line.as_bytes()), Insert::Stored);
                } else if outcome == Insert::Duplicate {
                    // Never refused as full: a duplicate costs nothing and skips nothing.
                    assert_eq!(w.insert(odd, line.as_bytes()), Insert::Duplicate);
                }
                // The next event's payload, held apart until it is popped: a line's buffer.
                let line_max = 2 * 1002;
                assert!(w.bytes() <= budget + line_max, "{} > {budget}", w.bytes());
                if rng.below(50) == 0 {
                    while let Some(p) = w.pop() {
                        if let Pop::Event(e) = p {
                            assert!(w.take_payload(e.seq, &mut Vec::new()));
                        }
                        account(p, &mut prev, &mut accounted);
                    }
                }
            }
            assert!(full > 0, "seed {seed}: the budget was never reached");
        }
    }

    /// Far-ahead seqs, each `max` or more beyond the next expected one, with an event
    /// waiting at the far end of the ring every time: skipping must cost about one step
    /// per event waiting, not one per seq skipped.
    #[test]
    fn skipping_costs_steps_per_event_waiting_not_per_seq_skipped() {
        let max = 1 << 20;
        let mut w = ReorderWindow::new(64, max, usize::MAX, LossDetector::new(false));
        let mut delivered = 0;
        for k in 1..=1000u64 {
            let far = k * 3 * max;
            if w.insert(ev(far), b"") == Insert::Full {
                w.make_room(&ev(far), b"");
                while !w.fits(&ev(far), b"") {
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
        // Each skip looks at up to `NEAR` slots, then a few bitmap words: a bound that
        // does not grow with the 2^20 seqs each one skips.
        assert!(
            w.skip_steps < 2000 * (NEAR + 64),
            "{} slots looked at to skip 2000 times (NEAR {NEAR})",
            w.skip_steps
        );
    }

    #[test]
    fn session_end_flushes_what_waits_in_order_then_resets() {
        let mut w = ReorderWindow::new(4, 1000, usize::MAX, LossDetector::new(false));
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
        let mut w = ReorderWindow::new(4, 100, usize::MAX, LossDetector::new(false));
        let odd = crate::event::parse(b"02|P|1|2").unwrap();
        w.insert(odd, b"02|P|1|2");
        w.insert(ev(1), b"1|B");
        assert_eq!(w.pop(), Some(Pop::Event(ev(1))));
        assert_eq!(w.pop(), Some(Pop::Event(odd)));
        let mut kept = Vec::new();
        assert!(w.take_payload(2, &mut kept));
        assert_eq!(kept, b"02|P|1|2");
    }

    /// Checks one pop against the model: in order, each seq accounted once, the end of
    /// the space passed only as itself. `prev`: the last seq out.
    fn account(p: Pop, prev: &mut u64, accounted: &mut Pos) {
        let (from, through) = match p {
            Pop::Event(e) => (e.seq, e.seq),
            Pop::Skipped { from, through, .. } => (from, through),
            Pop::Wrapped => {
                assert_eq!(*prev, u64::MAX, "wrapped at the end only");
                *prev = 0;
                return;
            }
        };
        assert_eq!(Some(from), prev.checked_add(1), "nothing lost between pops");
        assert!(through >= from);
        *prev = through;
        *accounted += Pos::from(through - from) + 1;
    }

    #[test]
    fn random_streams_with_holes_against_the_model() {
        // Model: every seq up to the last one out is delivered or skipped exactly once, in
        // order, and the ring never exceeds max. Half the seeds start near the end of the
        // sequence space and go on past it.
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            // Small rings, and rings past `NEAR` where skips go through the bitmap.
            let max = 1 + rng.below(if seed % 2 == 0 { 64 } else { 2048 });
            let mut w = ReorderWindow::new(2, max, usize::MAX, LossDetector::new(false));
            let (mut prev, mut accounted, mut stored) = (0, 0, 0u64);
            let mut first = (seed % 4 >= 2).then(|| u64::MAX - rng.below(3 * max));
            for _ in 0..500 {
                let s = match first.take() {
                    Some(s) => s,
                    None => w.next_seq().wrapping_add(rng.below(max + max / 2 + 1)),
                };
                if s == 0 {
                    continue; // no such seq
                }
                match w.insert(ev(s), b"") {
                    Insert::Full => {
                        w.make_room(&ev(s), b"");
                        while !w.fits(&ev(s), b"") {
                            let p = w.pop().expect("make_room_for must let pop progress");
                            account(p, &mut prev, &mut accounted);
                        }
                        assert_eq!(w.insert(ev(s), b""), Insert::Stored);
                        stored += 1;
                    }
                    Insert::Stored => stored += 1,
                    Insert::Duplicate => {}
                    // Past the end and more than `max` ahead: passed in this cycle.
                    Insert::Late | Insert::FalseSkip => {
                        assert!(s < w.next_seq() && s.wrapping_sub(w.next_seq()) > max)
                    }
                    Insert::Deferred => panic!("nothing is ready after a drain"),
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
            assert_eq!(accounted + 1, w.next(), "seed {seed}");
            w.start_flush();
            while let Some(p) = w.pop() {
                account(p, &mut prev, &mut accounted);
            }
            assert!(w.flushed());
            assert!(stored > 0);
        }
    }

    /// Feeds `arrivals` to a window with loss detection, popping after each; returns the
    /// seqs skipped, the false skips, and the most events that ever waited.
    fn learn(arrivals: impl IntoIterator<Item = u64>) -> (Vec<u64>, Vec<u64>, usize) {
        let mut w = ReorderWindow::new(64, 1 << 20, usize::MAX, LossDetector::new(true));
        let (mut skipped, mut false_skips, mut most) = (Vec::new(), Vec::new(), 0);
        for s in arrivals {
            match w.insert(ev(s), b"") {
                Insert::FalseSkip => false_skips.push(s),
                Insert::Stored => {}
                other => panic!("{s}: {other:?}"),
            }
            most = most.max(w.waiting());
            while let Some(p) = w.pop() {
                if let Pop::Skipped { from, through, .. } = p {
                    skipped.extend(from..=through);
                }
            }
        }
        (skipped, false_skips, most)
    }

    /// Seqs `1..=n` in shuffled batches of random sizes `1..=batch(i)` (batch `i`).
    fn batches(seed: u64, n: u64, batch: impl Fn(u64) -> u64) -> Vec<u64> {
        let mut rng = Rng::new(seed);
        let (mut out, mut next, mut i) = (Vec::new(), 1, 0);
        while next <= n {
            let size = (1 + rng.below(batch(i))).min(n - next + 1);
            let mut b: Vec<u64> = (next..next + size).collect();
            rng.shuffle(&mut b);
            out.extend(b);
            next += size;
            i += 1;
        }
        out
    }

    #[test]
    fn the_classic_shuffle_skips_lost_seqs_soon_and_nothing_else() {
        for seed in 0..5 {
            let lost: Vec<u64> = (1..=5).map(|k| k * 40_000 + seed).collect();
            let arrivals = batches(seed, 210_000, |_| 100).into_iter();
            let (skipped, false_skips, most) = learn(arrivals.filter(|s| !lost.contains(s)));
            assert_eq!(skipped, lost, "seed {seed}");
            assert!(false_skips.is_empty());
            // Learned disorder under 100: each loss is given up after about 2 * 100 + 512
            // arrivals, so no more than that ever waits.
            assert!(most < 2 * 100 + loss::MIN as usize + 100, "{most} waited");
        }
    }

    #[test]
    fn deep_disorder_from_a_cold_start_loses_nothing() {
        for seed in 0..3 {
            let (skipped, false_skips, _) = learn(batches(seed, 1_000_000, |_| 200_000));
            assert!(skipped.is_empty(), "seed {seed}: {} skipped", skipped.len());
            assert!(false_skips.is_empty());
        }
    }

    #[test]
    fn disorder_that_grows_within_a_session_loses_nothing() {
        for seed in 0..3 {
            // Batches of up to 100 for 50,000 events, then of up to 10,000.
            let arrivals = batches(seed, 400_000, |i| if i < 1000 { 100 } else { 10_000 });
            let (skipped, false_skips, _) = learn(arrivals);
            assert!(skipped.is_empty(), "seed {seed}: {} skipped", skipped.len());
            assert!(false_skips.is_empty());
        }
    }

    #[test]
    fn a_pause_is_no_evidence() {
        let mut w = ReorderWindow::new(64, 1 << 20, usize::MAX, LossDetector::new(true));
        for s in (2..=100).rev() {
            w.insert(ev(s), b"");
        }
        // However long nothing arrives, nothing is given up: only the gap timeout can.
        assert_eq!(w.pop(), None);
        assert_eq!(w.pop(), None);
        assert_eq!(w.waiting(), 99);
    }

    #[test]
    fn a_false_skip_is_reported_and_widens_what_was_learned() {
        // In order, but seq 5 arrives 2,000 events late: with nothing learned that looks
        // like a loss.
        let mut arrivals: Vec<u64> = (1..=3000).filter(|&s| s != 5).collect();
        arrivals.insert(2000, 5);
        let (skipped, false_skips, _) = learn(arrivals.iter().copied());
        assert_eq!(skipped, vec![5]);
        assert_eq!(false_skips, vec![5]);
        // Once learned, the same lateness again is not taken for a loss.
        let mut w = ReorderWindow::new(64, 1 << 20, usize::MAX, LossDetector::new(true));
        let skips = |w: &mut ReorderWindow, seqs: &[u64]| -> usize {
            let mut n = 0;
            for &s in seqs {
                w.insert(ev(s), b"");
                while let Some(p) = w.pop() {
                    n += usize::from(matches!(p, Pop::Skipped { .. }));
                }
            }
            n
        };
        assert_eq!(skips(&mut w, &arrivals), 1);
        assert!(w.disorder() >= 1990, "learned {}", w.disorder());
        let again: Vec<u64> = (3001..=6000).filter(|&s| s != 3005).chain([3005]).collect();
        let mut again = again;
        let late = again.pop().unwrap();
        again.insert(2000, late);
        assert_eq!(
            skips(&mut w, &again),
            0,
            "3005, as late as 5 was, is waited for"
        );
    }

    #[test]
    fn loss_detection_off_waits_for_the_timeout() {
        let mut w = ReorderWindow::new(64, 1 << 20, usize::MAX, LossDetector::new(false));
        for s in 2..=10_000 {
            w.insert(ev(s), b"");
        }
        assert_eq!(w.pop(), None);
        assert_eq!(w.waiting(), 9_999);
    }

    #[test]
    fn holes_missing_together_are_given_up_together() {
        let mut w = ReorderWindow::new(64, 1 << 20, usize::MAX, LossDetector::new(false));
        for s in (2..=12).step_by(2) {
            w.insert(ev(s), b"");
        }
        assert_eq!(drain(&mut w), (vec![], vec![]));
        w.skip_gaps_through(12);
        let (got, skipped) = drain(&mut w);
        assert_eq!(got, vec![2, 4, 6, 8, 10, 12]);
        assert_eq!(
            skipped,
            vec![(1, 1), (3, 3), (5, 5), (7, 7), (9, 9), (11, 11)]
        );
        // A hole that opens later is not given up with them.
        w.insert(ev(14), b"");
        assert_eq!(drain(&mut w), (vec![], vec![]));
        w.skip_gaps_through(Pos::MAX); // bounded by the highest stored: 14
        assert_eq!(drain(&mut w), (vec![14], vec![(13, 13)]));
        w.insert(ev(16), b"");
        assert_eq!(
            drain(&mut w),
            (vec![], vec![]),
            "15 waits for its own timeout"
        );
    }

    #[test]
    fn a_zeroed_ring_is_empty_slots() {
        let ring = empty_ring(1 << 16).unwrap();
        assert_eq!(ring.len(), 1 << 16);
        assert!(ring
            .iter()
            .all(|e| e.seq == 0 && e.kind == Kind::Follow && !e.canonical));
        assert_eq!(
            empty_ring(usize::MAX / 8),
            None,
            "too large: refused, not aborted"
        );
    }
}
