//! What one watched connection is owed: the bytes of its expected lines back to back.
//! Received bytes are compared with the owed bytes a whole read at a time (one `memcmp`,
//! no line splitting). Nothing is kept per line: lines are counted by the `\n`s among
//! the bytes matched (a SIMD count), and timed per stamp run, a stretch of lines that one
//! latency stamp times (see latency.rs), kept as where it starts (a few per source
//! write). A seq and length kept per line, to count and time lines, cost more than the
//! rest of the verifier's work per line: a cache miss per line written and read back.

use crate::gen::{leading_seq, Line};

/// Received lines are dropped once they are this many bytes and at least as many as
/// what is still owed (so a drop copies at most what was received since the last one).
/// Dropping that early keeps the owed bytes at the start of their buffer, in cache: the
/// buffers held the most ever owed (300 KiB a connection in the classic run), and
/// pushing and comparing walked through all of that, a miss at every cache line.
const DROP_AT: usize = 8 * 1024;

pub struct Owed {
    /// Owed bytes; `bytes[..matched]` have been received (dropped now and then in bulk).
    bytes: Vec<u8>,
    matched: usize,
    /// Where the line holding `bytes[matched]` starts (`matched` itself between lines).
    front: usize,
    /// Per stamp run, in order: where it starts in `bytes`, and its stamp seq (the
    /// highest below its lines' seqs: [`crate::model::Model::stamp_after`]).
    runs: Vec<(usize, u64)>,
    /// The run holding `bytes[matched]`.
    run: usize,
    /// The stamp seq of the last line pushed (`u64::MAX` before the first).
    last: u64,
}

impl Default for Owed {
    fn default() -> Self {
        Owed {
            bytes: Vec::new(),
            matched: 0,
            front: 0,
            runs: Vec::new(),
            run: 0,
            last: u64::MAX,
        }
    }
}

impl Owed {
    /// One more line (with its `\r\n`), of stamp run `after`.
    #[inline]
    pub fn push(&mut self, line: &Line, after: u64) {
        if after != self.last {
            self.runs.push((self.bytes.len(), after));
            self.last = after;
        }
        line.append_to(&mut self.bytes);
    }

    /// Whether no line is owed.
    pub fn is_empty(&self) -> bool {
        self.matched == self.bytes.len()
    }

    /// The owed bytes not received yet.
    pub fn unmatched(&self) -> &[u8] {
        &self.bytes[self.matched..]
    }

    /// `n` more bytes arrived as owed; `done(after, lines)` gets, per stamp run, how
    /// many of its lines they completed, oldest first.
    #[inline]
    pub fn matched(&mut self, n: usize, mut done: impl FnMut(u64, u64)) {
        let (from, to) = (self.matched, self.matched + n);
        self.matched = to;
        let mut at = from;
        while at < to {
            let end = self.runs.get(self.run + 1).map_or(usize::MAX, |r| r.0);
            let stop = end.min(to);
            let lines = memchr::memchr_iter(b'\n', &self.bytes[at..stop]).count();
            if lines > 0 {
                done(self.runs[self.run].1, lines as u64);
            }
            if stop == end {
                self.run += 1;
            }
            at = stop;
        }
        if let Some(k) = memchr::memrchr(b'\n', &self.bytes[from..to]) {
            self.front = from + k + 1;
        }
        // Not the part of a line received: a failure quotes the line from its start.
        if self.front >= DROP_AT && self.front >= self.bytes.len() - self.front {
            let front = self.front;
            self.bytes.drain(..front);
            self.matched -= front;
            self.front = 0;
            self.runs.drain(..self.run);
            self.run = 0;
            for r in &mut self.runs {
                // The run holding the front may start before it.
                r.0 = r.0.saturating_sub(front);
            }
        }
    }

    /// The line holding the first unmatched byte, and that byte's place in it.
    pub fn current_line(&self) -> Option<(&[u8], usize)> {
        let rest = &self.bytes[self.front..];
        let end = memchr::memchr(b'\n', rest)?;
        Some((&rest[..=end], self.matched - self.front))
    }

    /// Drops owed lines with a seq below `seq` (a connection that joined late starts at
    /// its first line's seq). Rare: each line's seq is read back from its bytes.
    pub fn skip_below(&mut self, seq: u64) {
        while let Some(end) = memchr::memchr(b'\n', &self.bytes[self.front..]) {
            let line = &self.bytes[self.front..][..=end];
            if leading_seq(line).is_none_or(|s| s >= seq) {
                break;
            }
            self.front += end + 1;
        }
        while self
            .runs
            .get(self.run + 1)
            .is_some_and(|r| r.0 <= self.front)
        {
            self.run += 1;
        }
        self.restart_line();
    }

    /// A new connection starts at a line boundary: the part of a line the last one got
    /// is owed again.
    pub fn restart_line(&mut self) {
        self.matched = self.front;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::Rng;

    /// Everything `matched` reported: (stamp run, lines) as given.
    fn take(o: &mut Owed, n: usize, done: &mut Vec<(u64, u64)>) {
        o.matched(n, |after, lines| done.push((after, lines)));
    }

    #[test]
    fn owed_bytes_are_matched_across_reads_and_lines_counted_when_complete() {
        let mut o = Owed::default();
        assert!(o.is_empty());
        o.push(&Line::of(b"3|P|1|2\r\n"), 0);
        o.push(&Line::of(b"9|B\r\n"), 5);
        assert_eq!(o.unmatched(), b"3|P|1|2\r\n9|B\r\n");
        let mut done = Vec::new();
        take(&mut o, 4, &mut done); // "3|P|"
        assert!(done.is_empty());
        assert_eq!(o.current_line(), Some((&b"3|P|1|2\r\n"[..], 4)));
        take(&mut o, 7, &mut done); // "1|2\r\n9|"
        assert_eq!(done, [(0, 1)]);
        assert_eq!(o.current_line(), Some((&b"9|B\r\n"[..], 2)));
        o.restart_line(); // a new connection: "9|" is owed again
        assert_eq!(o.unmatched(), b"9|B\r\n");
        take(&mut o, 5, &mut done);
        assert_eq!(done, [(0, 1), (5, 1)]);
        assert!(o.is_empty());
        assert_eq!(o.current_line(), None);
    }

    #[test]
    fn received_bytes_are_dropped_in_bulk_and_offsets_hold() {
        let mut o = Owed::default();
        let line = b"1234567|S|42\r\n";
        let mut done = 0u64;
        for seq in 0..100_000u64 {
            o.push(&Line::of(line), seq / 7);
            o.matched(line.len(), |after, n| {
                assert_eq!((after, n), (seq / 7, 1));
                done += n;
            });
        }
        assert_eq!(done, 100_000);
        assert!(o.bytes.capacity() <= 2 * DROP_AT, "{}", o.bytes.capacity());
        assert!(
            o.runs.len() <= 2 * DROP_AT / line.len() / 7,
            "{}",
            o.runs.len()
        );
        // A line half received when the rest is dropped keeps its start.
        o.push(&Line::of(b"5|P|1|2\r\n"), 1);
        o.matched(3, |_, _| panic!("no line completed"));
        for _ in 0..2 * DROP_AT {
            o.push(&Line::of(b"6|B\r\n"), 2);
        }
        let mut runs = Vec::new();
        take(&mut o, 6, &mut runs);
        assert_eq!(runs, [(1, 1)]);
        let rest = o.unmatched().len();
        take(&mut o, rest - 7, &mut runs);
        assert_eq!(runs, [(1, 1), (2, 2 * DROP_AT as u64 - 2)]);
        assert!(o.front < DROP_AT, "dropped");
        assert_eq!(o.current_line(), Some((&b"6|B\r\n"[..], 3)));
        o.push(&Line::of(b"7|B\r\n"), 6);
        o.push(&Line::of(b"8|B\r\n"), 7);
        o.skip_below(8);
        assert_eq!(o.unmatched(), b"8|B\r\n");
        take(&mut o, 5, &mut runs);
        assert_eq!(runs.last(), Some(&(7, 1)));
    }

    /// The naive model: a list of (stamp run, line) per line pushed, matched a line at a
    /// time. Random lines in random runs, received in random pieces, reconnections and
    /// late starts: the same lines counted in the same runs, the same line quoted.
    #[test]
    fn counts_and_runs_match_a_list_of_lines() {
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let mut o = Owed::default();
            // Naive: every line pushed, its run, and how much of it was received.
            let mut lines: Vec<(u64, Vec<u8>)> = Vec::new();
            let (mut head, mut into) = (0usize, 0usize);
            let mut after = 0u64;
            let mut seq = 0u64;
            for _ in 0..2_000 {
                match rng.below(10) {
                    0..=4 => {
                        seq += 1 + rng.below(3);
                        if rng.below(8) == 0 {
                            after = seq - 1;
                        }
                        let bytes = format!("{seq}|P|{}|1\r\n", rng.below(1 << 40));
                        o.push(&Line::of(bytes.as_bytes()), after);
                        lines.push((after, bytes.into_bytes()));
                    }
                    5..=8 => {
                        let n = (rng.below(3 * DROP_AT as u64) as usize).min(o.unmatched().len());
                        let mut got = Vec::new();
                        take(&mut o, n, &mut got);
                        let mut want: Vec<(u64, u64)> = Vec::new();
                        let mut left = n;
                        while left > 0 {
                            let (run, line) = &lines[head];
                            let k = left.min(line.len() - into);
                            (into, left) = (into + k, left - k);
                            if into == line.len() {
                                match want.last_mut() {
                                    Some((r, c)) if r == run => *c += 1,
                                    _ => want.push((*run, 1)),
                                }
                                (head, into) = (head + 1, 0);
                            }
                        }
                        // Adjacent pieces of one run may come apart at run starts.
                        let mut merged: Vec<(u64, u64)> = Vec::new();
                        for (r, c) in got {
                            match merged.last_mut() {
                                Some((m, k)) if *m == r => *k += c,
                                _ => merged.push((r, c)),
                            }
                        }
                        assert_eq!(merged, want);
                    }
                    _ if rng.below(4) == 0 => {
                        let from = lines
                            .get(head)
                            .map_or(seq + 1, |l| leading_seq(&l.1).unwrap() + rng.below(6));
                        o.skip_below(from);
                        while lines
                            .get(head)
                            .is_some_and(|l| leading_seq(&l.1).unwrap() < from)
                        {
                            head += 1;
                        }
                        into = 0;
                    }
                    _ => {
                        o.restart_line();
                        into = 0;
                    }
                }
                let want = lines.get(head).map(|(_, l)| (&l[..], into));
                assert_eq!(o.current_line(), want);
                assert_eq!(o.is_empty(), head == lines.len());
            }
        }
    }
}
