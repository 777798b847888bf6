//! The generated stream, handed from the source's thread to the verifier's model in
//! blocks, so the stream is generated once (a second generator in the model cost as much
//! as everything else the verifier does per event).
//!
//! The source hands over a block before it writes any of its events, so every line the
//! server can have sent is in a block the model can take: the model never waits, and a
//! block not there yet means only that the source has not got that far. The model is
//! never more than [`MAX_WAITING`] events behind the source (16 MB of them; the source
//! waits, which it does only if the verifier's clients lag the source by that much, more
//! than the server's own window holds); emptied blocks go back to the source to be
//! filled again.
//!
//! Only the events that can matter to the model go over ([`FeedTx::keep_only`]): in the
//! classic run, with a tenth of users watched, a little under half of them.
//!
//! Each block also carries the seq the source's latency stamp for that write will name
//! (see latency.rs), so the model can tell each event's stamp run without a seq per
//! owed line: [`FeedRx::stamp_after`].

use crate::gen::{Ev, Kind};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

/// Events handed over and not yet taken, at most (counted, not blocks: blocks are a
/// write's worth, from one paced batch to 60 KiB of events).
const MAX_WAITING: usize = 1 << 20;

/// An event as handed over: 16 bytes where an [`Ev`] takes 40 (every event is written by
/// the source and read back by the model, both missing the cache). The seq with the kind
/// in bits 56..59 and `omitted` in bit 63 (seqs stay below 2^56: main.rs refuses more
/// events); ids fit 32 bits (`GenConfig::new`).
#[derive(Clone, Copy)]
struct Packed {
    seq: u64,
    from: u32,
    to: u32,
}

/// Kinds by their number in [`Packed`].
const KINDS: [Kind; 6] = [
    Kind::Follow,
    Kind::Unfollow,
    Kind::Broadcast,
    Kind::Private,
    Kind::Status,
    Kind::NoOp,
];

impl Packed {
    #[inline]
    fn new(ev: Ev) -> Packed {
        debug_assert!(ev.seq < 1 << 56 && ev.from <= u32::MAX.into() && ev.to <= u32::MAX.into());
        // The index in KINDS (a match, not `as`: the server's order may change).
        let kind: u64 = match ev.kind {
            Kind::Follow => 0,
            Kind::Unfollow => 1,
            Kind::Broadcast => 2,
            Kind::Private => 3,
            Kind::Status => 4,
            Kind::NoOp => 5,
        };
        Packed {
            seq: ev.seq | kind << 56 | u64::from(ev.omitted) << 63,
            from: ev.from as u32,
            to: ev.to as u32,
        }
    }

    #[inline]
    fn ev(self) -> Ev {
        Ev {
            seq: self.seq & ((1 << 56) - 1),
            kind: KINDS[(self.seq >> 56 & 7) as usize % KINDS.len()],
            from: self.from.into(),
            to: self.to.into(),
            omitted: self.seq >> 63 != 0,
        }
    }
}

/// A block of events and the seq its write's stamp names (at most its last seq).
type Block = (Vec<Packed>, u64);

/// The source's end.
pub struct FeedTx {
    block: Vec<Packed>,
    tx: Sender<Block>,
    spent: Receiver<Vec<Packed>>,
    waiting: Arc<AtomicUsize>,
    /// The highest stamp seq handed over.
    stamped: u64,
    /// Watched users, a bit per id; empty: every event goes over.
    watched: Vec<u64>,
}

/// The model's end: an iterator of the events handed over so far.
pub struct FeedRx {
    block: Vec<Packed>,
    /// Events of `block` taken.
    taken: usize,
    rx: Receiver<Block>,
    spent: Sender<Vec<Packed>>,
    waiting: Arc<AtomicUsize>,
    ended: bool,
    /// Stamp seqs handed over and not yet passed by the events taken, in order.
    stamps: VecDeque<u64>,
    /// The first of `stamps`, or `u64::MAX`: one comparison per event.
    next_stamp: u64,
    /// The highest stamp seq below the last event taken's seq (0: none).
    after: u64,
}

pub fn feed() -> (FeedTx, FeedRx) {
    let (tx, rx) = channel();
    let (spent_tx, spent_rx) = channel();
    let waiting = Arc::new(AtomicUsize::new(0));
    (
        FeedTx {
            block: Vec::new(),
            tx,
            spent: spent_rx,
            waiting: waiting.clone(),
            stamped: 0,
            watched: Vec::new(),
        },
        FeedRx {
            block: Vec::new(),
            taken: 0,
            rx,
            spent: spent_tx,
            waiting,
            ended: false,
            stamps: VecDeque::new(),
            next_stamp: u64::MAX,
            after: 0,
        },
    )
}

/// Watched ids above this are not kept in a bitmap (of up to 8 MiB): with one that high,
/// every event goes over.
const MAX_BITMAP_ID: u64 = 1 << 26;

impl FeedTx {
    /// From now on, only events that can matter to a model watching `users` go over:
    /// broadcasts, status updates (whether an author has watched followers is the
    /// model's to know), and follows, unfollows and private messages that name a watched
    /// user. The rest (messages and follows between users nobody watches, no-ops, gaps)
    /// neither change what the model keeps nor notify anyone it watches, and were half of
    /// what the model stepped through.
    pub fn keep_only(&mut self, users: impl IntoIterator<Item = u64>) {
        let users: Vec<u64> = users.into_iter().collect();
        let Some(&max) = users.iter().max() else {
            return;
        };
        if max >= MAX_BITMAP_ID {
            return;
        }
        self.watched = vec![0; (max / 64 + 1) as usize];
        for u in users {
            self.watched[(u / 64) as usize] |= 1 << (u % 64);
        }
    }

    pub fn push(&mut self, ev: Ev) {
        if self.matters(&ev) {
            self.block.push(Packed::new(ev));
        }
    }

    #[inline]
    fn matters(&self, ev: &Ev) -> bool {
        if self.watched.is_empty() {
            return true;
        }
        let watched = |u: u64| {
            self.watched
                .get((u / 64) as usize)
                .is_some_and(|b| b >> (u % 64) & 1 != 0)
        };
        !ev.omitted
            && match ev.kind {
                Kind::Broadcast | Kind::Status => true,
                Kind::Follow | Kind::Unfollow | Kind::Private => watched(ev.from) || watched(ev.to),
                Kind::NoOp => false,
            }
    }

    /// Hands over what was pushed, before the source writes it; `stamp` is the seq the
    /// write's latency stamp will name. A new stamp seq goes over even with no events:
    /// every stamp's seq must be one the model knows (see [`FeedRx::stamp_after`]).
    pub fn hand_over(&mut self, stamp: u64) {
        if self.block.is_empty() && stamp <= self.stamped {
            return;
        }
        self.stamped = self.stamped.max(stamp);
        // (Unless the model is gone: then nothing will be taken.)
        while self.waiting.load(Ordering::Acquire) > MAX_WAITING
            && Arc::strong_count(&self.waiting) > 1
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.waiting.fetch_add(self.block.len(), Ordering::AcqRel);
        // A new block (none came back yet) starts as large as this one: grown from
        // nothing it was copied a dozen times.
        let next = self
            .spent
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.block.len()));
        let block = std::mem::replace(&mut self.block, next);
        // The model gone (the run failed) is no reason for the source to stop.
        let _ = self.tx.send((block, stamp));
    }
}

impl FeedRx {
    /// Whether the source has handed over its last event and all were taken.
    pub fn ended(&self) -> bool {
        self.ended && self.taken == self.block.len()
    }

    /// The highest stamp seq below the seq of the last event taken: events with the same
    /// value are timed from the same stamp. Every stamp the source makes names a seq it
    /// handed over with a block no later than the block of the events that stamp covers,
    /// so this is final when the event is taken.
    pub fn stamp_after(&self) -> u64 {
        self.after
    }

    #[cold]
    fn pass_stamps(&mut self, seq: u64) {
        while let Some(&s) = self.stamps.front() {
            if s >= seq {
                break;
            }
            self.after = s;
            self.stamps.pop_front();
        }
        self.next_stamp = self.stamps.front().copied().unwrap_or(u64::MAX);
    }
}

impl Iterator for FeedRx {
    type Item = Ev;

    /// The next event handed over; `None` when none is there yet, or none will be
    /// ([`FeedRx::ended`] tells which).
    fn next(&mut self) -> Option<Ev> {
        loop {
            if let Some(&ev) = self.block.get(self.taken) {
                self.taken += 1;
                let ev = ev.ev();
                if ev.seq > self.next_stamp {
                    self.pass_stamps(ev.seq);
                }
                return Some(ev);
            }
            let next = match self.rx.try_recv() {
                Ok((block, stamp)) => {
                    if self.stamps.back().is_none_or(|&s| s < stamp) && stamp > self.after {
                        self.stamps.push_back(stamp);
                        self.next_stamp = self.next_stamp.min(stamp);
                    }
                    block
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    self.ended = true;
                    return None;
                }
            };
            self.waiting.fetch_sub(next.len(), Ordering::AcqRel);
            let mut spent = std::mem::replace(&mut self.block, next);
            self.taken = 0;
            spent.clear();
            let _ = self.spent.send(spent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::Kind;

    #[test]
    fn events_arrive_whole() {
        let (mut tx, rx) = feed();
        let mut sent = Vec::new();
        for (k, &kind) in KINDS.iter().enumerate() {
            let mut ev = Ev::new(1 << 55 | k as u64, kind, u32::MAX.into(), k as u64);
            ev.omitted = k % 2 == 0;
            sent.push(ev);
            tx.push(ev);
        }
        tx.hand_over(0);
        drop(tx);
        assert_eq!(rx.collect::<Vec<_>>(), sent);
    }

    #[test]
    fn events_arrive_in_order_once_handed_over_and_the_end_is_told_apart() {
        let (mut tx, mut rx) = feed();
        assert_eq!(rx.next(), None);
        assert!(!rx.ended(), "nothing yet is not the end");
        for seq in 1..=5 {
            tx.push(Ev::new(seq, Kind::Broadcast, 0, 0));
        }
        assert_eq!(rx.next(), None, "pushed, not handed over");
        tx.hand_over(0);
        tx.push(Ev::new(6, Kind::Broadcast, 0, 0));
        tx.hand_over(0);
        let seqs: Vec<u64> = rx.by_ref().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        assert!(!rx.ended());
        tx.push(Ev::new(7, Kind::Broadcast, 0, 0));
        tx.hand_over(0);
        drop(tx);
        assert_eq!(rx.next().map(|e| e.seq), Some(7));
        assert!(!rx.ended());
        assert_eq!(rx.next(), None);
        assert!(rx.ended());
    }

    /// Against the naive rule (the highest stamp seq below the event's, of all stamps
    /// handed over in the whole run), with stamps as the source makes them: a block's
    /// stamp is at least the last seq of the block before and at most its own last,
    /// and a stamp may come with no events.
    #[test]
    fn each_event_knows_the_stamp_run_it_is_in() {
        let mut rng = crate::gen::Rng::new(5);
        let (mut tx, mut rx) = feed();
        let (mut seq, mut prev_end, mut stamps) = (0u64, 0u64, Vec::new());
        let mut taken = Vec::new();
        for _ in 0..2_000 {
            let n = rng.below(4) * rng.below(20);
            for _ in 0..n {
                seq += 1;
                tx.push(Ev::new(seq, Kind::Private, 1, 2));
            }
            let stamp = prev_end + rng.below(seq - prev_end + 1);
            tx.hand_over(stamp);
            stamps.push(stamp);
            prev_end = seq;
            // Taken at once or some blocks later (with later stamps known by then).
            if rng.below(3) == 0 {
                while let Some(e) = rx.next() {
                    taken.push((e.seq, rx.stamp_after()));
                }
            }
        }
        while let Some(e) = rx.next() {
            taken.push((e.seq, rx.stamp_after()));
        }
        assert_eq!(taken.len() as u64, seq);
        let naive = |s: u64| stamps.iter().copied().filter(|&t| t < s).max().unwrap_or(0);
        for (s, after) in taken {
            assert_eq!(after, naive(s), "seq {s}");
        }
    }

    /// What the model makes of the events kept is what it makes of them all: the same
    /// notifications for every watched connection (several per user, too), with no-ops,
    /// gaps, self-follows and unfollows of edges never made in the stream.
    #[test]
    fn the_events_left_out_change_nothing_the_model_does() {
        use crate::gen::{Gen, GenConfig};
        use crate::model::tests::received;
        use crate::model::Model;
        let mut cfg = GenConfig::new(300_000, 40, 9);
        cfg.noop_every = 37;
        cfg.gaps = vec![5, 1_000, 77_777];
        cfg.gap_len = 5;
        cfg.hot_share = 10;
        cfg.hot_user = 3;
        let watched = [(1, 0), (7, 1), (7, 2), (12, 3), (40, 4)];
        let all: Vec<Ev> = Gen::new(cfg.clone()).collect();
        let want = received(&mut Model::new(all.clone().into_iter()), &watched);
        let (mut tx, rx) = feed();
        tx.keep_only(watched.iter().map(|&(u, _)| u));
        for e in all {
            tx.push(e);
        }
        tx.hand_over(0);
        let kept = tx.waiting.load(Ordering::Acquire);
        drop(tx);
        assert_eq!(received(&mut Model::new(rx), &watched), want);
        assert!(want.iter().all(|w| w.len() > 1000));
        assert!(kept < 300_000 * 6 / 10, "{kept} kept");
    }

    #[test]
    fn the_source_waits_for_the_model_but_not_for_one_that_is_gone() {
        let (mut tx, mut rx) = feed();
        for seq in 0..MAX_WAITING as u64 + 1 {
            tx.push(Ev::new(seq, Kind::Broadcast, 0, 0));
        }
        tx.hand_over(0); // over the bound now
        let source = std::thread::spawn(move || {
            tx.push(Ev::new(0, Kind::Broadcast, 0, 0));
            tx.hand_over(0); // waits until the model takes a block
            tx
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!source.is_finished(), "the source did not wait");
        assert!(rx.next().is_some()); // takes the big block
        let mut tx = source.join().unwrap();
        for seq in 0..MAX_WAITING as u64 + 1 {
            tx.push(Ev::new(seq, Kind::Broadcast, 0, 0));
        }
        tx.hand_over(0);
        drop(rx); // the run failed: the model is gone
        tx.push(Ev::new(0, Kind::Broadcast, 0, 0));
        tx.hand_over(0); // returns
    }
}
