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

use crate::gen::{Ev, Kind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

/// Events handed over and not yet taken, at most (counted, not blocks: blocks are a
/// write's worth, from one paced batch to 60 KiB of events).
const MAX_WAITING: usize = 1 << 20;

/// An event as handed over: 16 bytes where an [`Ev`] takes 40 (every event is written by
/// the source and read back by the model, both missing the cache). The seq with the kind
/// in bits 56..59 and `omitted` in bit 63 (seqs stay below 2^56: see expected.rs); ids
/// fit 32 bits (`GenConfig::new`).
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

/// The source's end.
pub struct FeedTx {
    block: Vec<Packed>,
    tx: Sender<Vec<Packed>>,
    spent: Receiver<Vec<Packed>>,
    waiting: Arc<AtomicUsize>,
}

/// The model's end: an iterator of the events handed over so far.
pub struct FeedRx {
    block: Vec<Packed>,
    /// Events of `block` taken.
    taken: usize,
    rx: Receiver<Vec<Packed>>,
    spent: Sender<Vec<Packed>>,
    waiting: Arc<AtomicUsize>,
    ended: bool,
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
        },
        FeedRx {
            block: Vec::new(),
            taken: 0,
            rx,
            spent: spent_tx,
            waiting,
            ended: false,
        },
    )
}

impl FeedTx {
    pub fn push(&mut self, ev: Ev) {
        self.block.push(Packed::new(ev));
    }

    /// Hands over what was pushed (before the source writes it).
    pub fn hand_over(&mut self) {
        if self.block.is_empty() {
            return;
        }
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
        let _ = self.tx.send(block);
    }
}

impl FeedRx {
    /// Whether the source has handed over its last event and all were taken.
    pub fn ended(&self) -> bool {
        self.ended && self.taken == self.block.len()
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
                return Some(ev.ev());
            }
            let next = match self.rx.try_recv() {
                Ok(block) => block,
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
        tx.hand_over();
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
        tx.hand_over();
        tx.push(Ev::new(6, Kind::Broadcast, 0, 0));
        tx.hand_over();
        let seqs: Vec<u64> = rx.by_ref().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        assert!(!rx.ended());
        tx.push(Ev::new(7, Kind::Broadcast, 0, 0));
        tx.hand_over();
        drop(tx);
        assert_eq!(rx.next().map(|e| e.seq), Some(7));
        assert!(!rx.ended());
        assert_eq!(rx.next(), None);
        assert!(rx.ended());
    }

    #[test]
    fn the_source_waits_for_the_model_but_not_for_one_that_is_gone() {
        let (mut tx, mut rx) = feed();
        for seq in 0..MAX_WAITING as u64 + 1 {
            tx.push(Ev::new(seq, Kind::Broadcast, 0, 0));
        }
        tx.hand_over(); // over the bound now
        let source = std::thread::spawn(move || {
            tx.push(Ev::new(0, Kind::Broadcast, 0, 0));
            tx.hand_over(); // waits until the model takes a block
            tx
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!source.is_finished(), "the source did not wait");
        assert!(rx.next().is_some()); // takes the big block
        let mut tx = source.join().unwrap();
        for seq in 0..MAX_WAITING as u64 + 1 {
            tx.push(Ev::new(seq, Kind::Broadcast, 0, 0));
        }
        tx.hand_over();
        drop(rx); // the run failed: the model is gone
        tx.push(Ev::new(0, Kind::Broadcast, 0, 0));
        tx.hand_over(); // returns
    }
}
