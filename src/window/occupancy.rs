//! Which ring slots may hold an event: a bitmap with a summary level above it, and one
//! above that, until one word covers everything. A bit one level up is set whenever the
//! word below it has a bit set, so the next set bit after any position is found in a few
//! word reads per level (4 levels for 2^24 slots), however many empty slots lie between.
//!
//! Setting is a few unconditional ORs, on the hot path (every stored event). Clearing is
//! lazy: a popped event's bit stays, and [`Occupancy::next_full`] clears the stale bits it
//! meets, checking each candidate against the ring. Every bit is cleared at most once
//! per time it was set, so the search costs O(levels) amortised, and popping costs
//! nothing here.

/// See the module docs.
pub struct Occupancy {
    /// `levels[0]` has one bit per slot; `levels[k + 1]` one bit per word of `levels[k]`.
    levels: Vec<Box<[u64]>>,
}

/// What one search through the levels met.
enum Search {
    Found(usize),
    /// A summary bit (level, index) over an all-zero word: stale, to be cleared.
    Stale(usize, usize),
    None,
}

impl Occupancy {
    /// An empty map of `slots` slots.
    pub fn new(slots: usize) -> Self {
        let mut levels = Vec::new();
        let mut bits = slots.max(1);
        loop {
            let words = bits.div_ceil(64);
            levels.push(vec![0u64; words].into_boxed_slice());
            if words == 1 {
                break;
            }
            bits = words;
        }
        Occupancy { levels }
    }

    /// The bytes a map of `slots` slots takes.
    pub fn bytes_for(slots: usize) -> usize {
        // Each level is 1/64 of the one below: under 1/63 of the bottom level more.
        slots.div_ceil(64) * 8 * 64 / 63 + 8
    }

    /// Marks slot `i` as (maybe) full.
    #[inline]
    pub fn set(&mut self, mut i: usize) {
        for level in self.levels.iter_mut() {
            level[i / 64] |= 1 << (i % 64);
            i /= 64;
        }
    }

    /// Clears bit `i` of `level`, and the summary bits above it that no longer cover any.
    fn clear_at(&mut self, mut level: usize, mut i: usize) {
        while level < self.levels.len() {
            let word = &mut self.levels[level][i / 64];
            *word &= !(1 << (i % 64));
            if *word != 0 {
                return;
            }
            i /= 64;
            level += 1;
        }
    }

    /// The first slot at or after `from`, else the first from slot 0 (ring order), that is
    /// marked and for which `full` holds; marks found stale are cleared. Also returns the
    /// number of words read.
    pub fn next_full(&mut self, from: usize, full: impl Fn(usize) -> bool) -> (Option<usize>, u64) {
        let mut steps = 0;
        let mut start = from;
        loop {
            match self.search(start, &mut steps) {
                Search::Found(i) if full(i) => return (Some(i), steps),
                Search::Found(i) => self.clear_at(0, i),
                Search::Stale(level, i) => self.clear_at(level, i),
                Search::None if start != 0 => start = 0,
                Search::None => return (None, steps),
            }
        }
    }

    /// The first marked slot at or after `i`.
    fn search(&self, mut i: usize, steps: &mut u64) -> Search {
        let mut level = 0;
        // Up: until a word at this level has a set bit at or after position `i`.
        loop {
            let Some(&word) = self.levels[level].get(i / 64) else {
                return Search::None;
            };
            *steps += 1;
            let rest = word & (!0u64 << (i % 64));
            if rest != 0 {
                i = i / 64 * 64 + rest.trailing_zeros() as usize;
                break;
            }
            if level + 1 == self.levels.len() {
                return Search::None;
            }
            // Nothing left in this word: on to the next word, one level up.
            i = i / 64 + 1;
            level += 1;
        }
        // Down: the lowest set bit of each word below.
        while level > 0 {
            let word = self.levels[level - 1][i];
            *steps += 1;
            if word == 0 {
                return Search::Stale(level, i);
            }
            level -= 1;
            i = i * 64 + word.trailing_zeros() as usize;
        }
        Search::Found(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The naive model: a plain vector of flags, scanned in ring order.
    fn naive_next(flags: &[bool], from: usize) -> Option<usize> {
        (from..flags.len()).chain(0..from).find(|&i| flags[i])
    }

    #[test]
    fn next_full_matches_a_linear_scan() {
        for seed in 0..60 {
            let mut rng = Rng::new(seed);
            let slots = [1, 2, 63, 64, 65, 4096, 4097, 300_000][(seed % 8) as usize];
            let mut map = Occupancy::new(slots);
            let mut flags = vec![false; slots];
            for _ in 0..400 {
                let i = rng.below(slots as u64) as usize;
                // An emptied slot keeps its mark: the search must see through it.
                if rng.below(3) == 0 {
                    flags[i] = false;
                } else {
                    map.set(i);
                    flags[i] = true;
                }
                let from = rng.below(slots as u64) as usize;
                let found = map.next_full(from, |i| flags[i]).0;
                assert_eq!(found, naive_next(&flags, from), "seed {seed}");
            }
            flags.fill(false);
            assert_eq!(map.next_full(0, |i| flags[i]).0, None);
            let clean = map.levels.iter().all(|l| l.iter().all(|&w| w == 0));
            assert!(clean, "seed {seed}: every stale mark met is cleared");
        }
    }

    #[test]
    fn a_lone_bit_far_away_is_found_in_a_few_reads() {
        let slots = 1 << 24;
        let mut map = Occupancy::new(slots);
        map.set(slots - 1);
        let (found, steps) = map.next_full(0, |_| true);
        assert_eq!(found, Some(slots - 1));
        assert!(steps <= 12, "{steps} words read");
        map.set(5);
        assert_eq!(map.next_full(6, |_| true).0, Some(slots - 1));
        assert_eq!(map.next_full(6, |i| i == 5).0, Some(5), "wraps around");
    }
}
