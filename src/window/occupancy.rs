//! Which ring slots hold an event: a bitmap with a summary level above it, and one above
//! that, until one word covers everything. A bit one level up is set exactly when the
//! word below it is non-zero, so the next occupied slot after any position is found in a
//! few word reads per level (4 levels for 2^24 slots), however many empty slots lie
//! between. Setting and clearing touch the upper levels only when a word turns empty or
//! non-empty.

/// See the module docs.
pub struct Occupancy {
    /// `levels[0]` has one bit per slot; `levels[k + 1]` one bit per word of `levels[k]`.
    levels: Vec<Box<[u64]>>,
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

    pub fn set(&mut self, mut i: usize) {
        for level in self.levels.iter_mut() {
            let word = &mut level[i / 64];
            let was = *word;
            *word = was | 1 << (i % 64);
            if was != 0 {
                return;
            }
            i /= 64;
        }
    }

    pub fn clear(&mut self, mut i: usize) {
        for level in self.levels.iter_mut() {
            let word = &mut level[i / 64];
            *word &= !(1 << (i % 64));
            if *word != 0 {
                return;
            }
            i /= 64;
        }
    }

    /// The first occupied slot at or after `from`, else the first from slot 0 (ring
    /// order), with the number of words read to find it.
    pub fn next_from(&self, from: usize) -> (Option<usize>, u64) {
        let (found, steps) = self.next_at_or_after(from);
        if found.is_some() || from == 0 {
            return (found, steps);
        }
        let (found, more) = self.next_at_or_after(0);
        (found, steps + more)
    }

    /// The first occupied slot at or after `i`.
    fn next_at_or_after(&self, mut i: usize) -> (Option<usize>, u64) {
        let mut steps = 0;
        let mut level = 0;
        // Up: until a word at this level has a set bit at or after position `i`.
        loop {
            let Some(&word) = self.levels[level].get(i / 64) else {
                return (None, steps);
            };
            steps += 1;
            let rest = word & (!0u64 << (i % 64));
            if rest != 0 {
                i = i / 64 * 64 + rest.trailing_zeros() as usize;
                break;
            }
            if level + 1 == self.levels.len() {
                return (None, steps);
            }
            // Nothing left in this word: on to the next word, one level up.
            i = i / 64 + 1;
            level += 1;
        }
        // Down: the lowest set bit of each word below.
        while level > 0 {
            level -= 1;
            let word = self.levels[level][i];
            steps += 1;
            debug_assert_ne!(word, 0, "a summary bit is set only over a non-empty word");
            i = i * 64 + word.trailing_zeros() as usize;
        }
        (Some(i), steps)
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
    fn next_from_matches_a_linear_scan() {
        for seed in 0..60 {
            let mut rng = Rng::new(seed);
            let slots = [1, 2, 63, 64, 65, 4096, 4097, 300_000][(seed % 8) as usize];
            let mut map = Occupancy::new(slots);
            let mut flags = vec![false; slots];
            for _ in 0..400 {
                let i = rng.below(slots as u64) as usize;
                if rng.below(3) == 0 {
                    map.clear(i);
                    flags[i] = false;
                } else {
                    map.set(i);
                    flags[i] = true;
                }
                let from = rng.below(slots as u64) as usize;
                assert_eq!(
                    map.next_from(from).0,
                    naive_next(&flags, from),
                    "seed {seed}"
                );
            }
            for (i, _) in flags.iter().enumerate().filter(|(_, &set)| set) {
                map.clear(i);
            }
            assert_eq!(map.next_from(0).0, None);
        }
    }

    #[test]
    fn a_lone_bit_far_away_is_found_in_a_few_reads() {
        let slots = 1 << 24;
        let mut map = Occupancy::new(slots);
        map.set(slots - 1);
        let (found, steps) = map.next_from(0);
        assert_eq!(found, Some(slots - 1));
        assert!(steps <= 12, "{steps} words read");
        map.set(5);
        assert_eq!(map.next_from(6).0, Some(slots - 1));
        map.clear(slots - 1);
        assert_eq!(map.next_from(6).0, Some(5), "wraps around");
    }
}
