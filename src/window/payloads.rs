//! The payloads of waiting events that are not in canonical form (leading zeros), kept
//! beside the ring: byte blocks (256 KiB at the default budget) and an index by seq.
//!
//! Blocks, not one allocation per payload: 60,000 kept lines as separate boxes freed into
//! 60,000 heap chunks, and handing those back to the OS (`malloc_trim`) took one loop turn
//! 129 ms. Blocks, not one growing arena either: doubling and compacting a 32 MB arena
//! page-faulted and copied for up to 72 ms in one turn. A block is filled in arrival
//! order and freed (returned to the OS at once: it is above glibc's mmap threshold) when
//! its last payload is taken; nothing is ever copied.

use hashbrown::HashMap;
use slab::Slab;

/// Bytes per block at most; a payload (at most 1 KiB and its line end) never spans two.
const BLOCK: usize = 256 * 1024;
/// Bytes per block at least.
const MIN_BLOCK: usize = 2 * 1024;
/// What one index entry is counted as: a 32-byte bucket and its control byte, in a table
/// that is kept at least a quarter full (so at most ~4.6 buckets per entry).
const ENTRY: usize = 160;
/// The index of a few entries is counted as this much at least.
const INDEX_MIN: usize = 4096;

/// One block: its bytes and how many kept payloads are in it.
struct Block {
    bytes: Vec<u8>,
    live: usize,
}

/// See the module docs.
pub struct Payloads {
    /// Bytes per block: a small budget gets small blocks, so it still holds a few.
    block: usize,
    blocks: Slab<Block>,
    /// The block being filled.
    current: Option<usize>,
    /// seq -> where its payload is: (block, offset, length).
    at: HashMap<u64, (usize, usize, usize)>,
}

impl Payloads {
    /// Payloads for a window of `budget` bytes: blocks of 1/64 of it, within 2-256 KiB.
    pub fn new(budget: usize) -> Self {
        Payloads {
            block: (budget / 64).clamp(MIN_BLOCK, BLOCK),
            blocks: Slab::new(),
            current: None,
            at: HashMap::new(),
        }
    }

    /// The bytes this takes now.
    pub fn bytes(&self) -> usize {
        self.blocks.len() * self.block + index_bytes(self.at.len())
    }

    /// What [`bytes`](Self::bytes) will be after a [`put`](Self::put) of `len` bytes.
    pub fn bytes_after(&self, len: usize) -> usize {
        let blocks = self.blocks.len() + usize::from(self.room() < len);
        blocks * self.block + index_bytes(self.at.len() + 1)
    }

    /// Free bytes in the block being filled.
    fn room(&self) -> usize {
        self.current
            .map_or(0, |b| self.block - self.blocks[b].bytes.len())
    }

    /// Keeps `payload` as `seq`'s.
    pub fn put(&mut self, seq: u64, payload: &[u8]) {
        debug_assert!(payload.len() <= self.block);
        let b = match self.current {
            Some(b) if self.room() >= payload.len() => b,
            _ => {
                let b = self.blocks.insert(Block {
                    bytes: Vec::with_capacity(self.block),
                    live: 0,
                });
                self.retire_current();
                self.current = Some(b);
                b
            }
        };
        let block = &mut self.blocks[b];
        self.at.insert(seq, (b, block.bytes.len(), payload.len()));
        block.bytes.extend_from_slice(payload);
        block.live += 1;
    }

    /// Appends `seq`'s payload to `out` and forgets it; false if none is kept.
    pub fn take(&mut self, seq: u64, out: &mut Vec<u8>) -> bool {
        let Some((b, at, len)) = self.at.remove(&seq) else {
            return false;
        };
        let block = &mut self.blocks[b];
        out.extend_from_slice(&block.bytes[at..at + len]);
        block.live -= 1;
        if block.live == 0 {
            if self.current == Some(b) {
                block.bytes.clear(); // refill it from the start
            } else {
                self.blocks.remove(b);
            }
        }
        if self.at.is_empty() {
            self.release();
        } else if self.at.capacity() > 4 * self.at.len() + 64 {
            // Keep the table near its entries, as `ENTRY` counts it.
            self.at.shrink_to(2 * self.at.len());
        }
        true
    }

    /// The block being filled is no longer: free it now if nothing in it is kept.
    fn retire_current(&mut self) {
        if let Some(b) = self.current.take() {
            if self.blocks[b].live == 0 {
                self.blocks.remove(b);
            }
        }
    }

    /// Forgets everything and frees every block.
    pub fn release(&mut self) {
        self.blocks = Slab::new();
        self.current = None;
        if self.at.capacity() > 64 {
            self.at = HashMap::new();
        } else {
            self.at.clear();
        }
    }
}

/// The bytes counted for an index of `entries`.
fn index_bytes(entries: usize) -> usize {
    (entries * ENTRY).max(INDEX_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Against the naive model (a map of owned payloads): same payloads back, and the
    /// bytes it reports before a put are what it takes after.
    #[test]
    fn payloads_come_back_as_put_and_the_cost_is_foretold() {
        let mut rng = Rng::new(7);
        let mut p = Payloads::new(64 << 20);
        let mut model: std::collections::HashMap<u64, Vec<u8>> = Default::default();
        let mut out = Vec::new();
        for seq in 1..20_000u64 {
            if rng.below(3) > 0 {
                let payload: Vec<u8> = (0..rng.below(1000)).map(|i| (seq + i) as u8).collect();
                let foretold = p.bytes_after(payload.len());
                p.put(seq, &payload);
                assert!(p.bytes() <= foretold, "{} > {foretold}", p.bytes());
                model.insert(seq, payload);
            }
            if rng.below(2) == 0 && !model.is_empty() {
                let k = *model.keys().next().unwrap();
                out.clear();
                assert!(p.take(k, &mut out));
                assert_eq!(out, model.remove(&k).unwrap());
            }
        }
        assert!(!p.take(0, &mut out));
        for (k, v) in model {
            out.clear();
            assert!(p.take(k, &mut out));
            assert_eq!(out, v);
        }
        assert_eq!(p.blocks.len(), 0, "released when nothing is kept");
    }
}
