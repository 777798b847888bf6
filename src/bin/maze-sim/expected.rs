//! What one watched connection is owed: the bytes of its expected lines back to back, and
//! where each line ends. Received bytes are compared with the owed bytes a whole read at
//! a time (one `memcmp`, no line splitting); the line ends are needed only to count lines,
//! time them, and quote one in a failure.

use crate::gen::{Line, MAX_LINE};

/// Received lines are dropped once they are this many bytes and at least as many as
/// what is still owed (so a drop copies at most what was received since the last one).
/// Dropping that early keeps the owed bytes at the start of their buffer, in cache: the
/// buffers held the most ever owed (300 KiB a connection in the classic run), and
/// pushing and comparing walked through all of that, a miss at every cache line.
const DROP_AT: usize = 8 * 1024;

/// A line's seq, with its length in the top byte (seqs stay below 2^56: 2,000 years of
/// events at a million a second).
const SEQ: u64 = (1 << 56) - 1;

#[derive(Default)]
pub struct Owed {
    /// Owed bytes; `bytes[..matched]` have been received (dropped now and then in bulk).
    bytes: Vec<u8>,
    matched: usize,
    /// Per line owed, in order: its seq and length (see [`SEQ`]), 8 bytes where a
    /// `VecDeque` of (seq, end) took 16 and, as a ring, walked its whole capacity.
    lines: Vec<u64>,
    /// Lines before `lines[head]` were received in full.
    head: usize,
    /// Where `lines[head]` starts in `bytes`.
    front: usize,
}

impl Owed {
    /// One more line (with its `\r\n`).
    #[inline]
    pub fn push(&mut self, seq: u64, line: &Line) {
        let len = line.bytes().len();
        debug_assert!(seq <= SEQ && len <= MAX_LINE);
        line.append_to(&mut self.bytes);
        self.lines.push(seq | (len as u64) << 56);
    }

    /// Whether no line is owed.
    pub fn is_empty(&self) -> bool {
        self.head == self.lines.len()
    }

    /// The owed bytes not received yet.
    pub fn unmatched(&self) -> &[u8] {
        &self.bytes[self.matched..]
    }

    /// `n` more bytes arrived as owed; `done` gets the seq of each line they completed,
    /// oldest first.
    #[inline]
    pub fn matched(&mut self, n: usize, mut done: impl FnMut(u64)) {
        self.matched += n;
        while let Some(&line) = self.lines.get(self.head) {
            let end = self.front + (line >> 56) as usize;
            if end > self.matched {
                break;
            }
            done(line & SEQ);
            self.front = end;
            self.head += 1;
        }
        // Not the part of a line received: a failure quotes the line from its start.
        if self.front >= DROP_AT && self.front >= self.bytes.len() - self.front {
            self.bytes.drain(..self.front);
            self.matched -= self.front;
            self.front = 0;
            self.lines.drain(..self.head);
            self.head = 0;
        }
    }

    /// The seq and bytes of the line holding unmatched byte `k`, and `k`'s place in it.
    pub fn line_at(&self, k: usize) -> Option<(u64, &[u8], usize)> {
        let at = self.matched + k;
        let mut start = self.front;
        for &line in &self.lines[self.head..] {
            let end = start + (line >> 56) as usize;
            if end > at {
                return Some((line & SEQ, &self.bytes[start..end], at - start));
            }
            start = end;
        }
        None
    }

    /// Drops owed lines with a seq below `seq` (a connection that joined late starts at
    /// its first line's seq).
    pub fn skip_below(&mut self, seq: u64) {
        while let Some(&line) = self.lines.get(self.head) {
            if line & SEQ >= seq {
                break;
            }
            self.front += (line >> 56) as usize;
            self.head += 1;
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

    #[test]
    fn owed_bytes_are_matched_across_reads_and_lines_counted_when_complete() {
        let mut o = Owed::default();
        assert!(o.is_empty());
        o.push(3, &Line::of(b"3|P|1|2\r\n"));
        o.push(9, &Line::of(b"9|B\r\n"));
        assert_eq!(o.unmatched(), b"3|P|1|2\r\n9|B\r\n");
        let mut done = Vec::new();
        o.matched(4, |s| done.push(s)); // "3|P|"
        assert!(done.is_empty());
        assert_eq!(o.line_at(0), Some((3, &b"3|P|1|2\r\n"[..], 4)));
        assert_eq!(o.line_at(6), Some((9, &b"9|B\r\n"[..], 1)));
        assert_eq!(o.line_at(10), None);
        o.matched(7, |s| done.push(s)); // "1|2\r\n9|"
        assert_eq!(done, [3]);
        o.restart_line(); // a new connection: "9|" is owed again
        assert_eq!(o.unmatched(), b"9|B\r\n");
        o.matched(5, |s| done.push(s));
        assert_eq!(done, [3, 9]);
        assert!(o.is_empty());
    }

    #[test]
    fn received_bytes_are_dropped_in_bulk_and_offsets_hold() {
        let mut o = Owed::default();
        let line = b"1234567|S|42\r\n";
        let mut done = 0u64;
        for seq in 0..100_000u64 {
            o.push(seq, &Line::of(line));
            o.matched(line.len(), |s| {
                assert_eq!(s, seq);
                done += 1;
            });
        }
        assert_eq!(done, 100_000);
        assert!(o.bytes.capacity() <= 2 * DROP_AT, "{}", o.bytes.capacity());
        // A line half received when the rest is dropped keeps its start.
        o.push(5, &Line::of(b"5|P|1|2\r\n"));
        o.matched(3, |_| {});
        for _ in 0..2 * DROP_AT {
            o.push(6, &Line::of(b"6|B\r\n"));
        }
        o.matched(6, |s| assert_eq!(s, 5));
        let rest = o.unmatched().len();
        o.matched(rest - 7, |s| assert_eq!(s, 6));
        assert!(o.front < DROP_AT, "dropped");
        assert_eq!(o.line_at(0), Some((6, &b"6|B\r\n"[..], 3)));
        assert_eq!(o.line_at(1), Some((6, &b"6|B\r\n"[..], 4)));
        assert_eq!(o.line_at(2), Some((6, &b"6|B\r\n"[..], 0)));
        assert_eq!(o.line_at(6), Some((6, &b"6|B\r\n"[..], 4)));
        assert_eq!(o.line_at(7), None);
        o.push(7, &Line::of(b"7|B\r\n"));
        o.push(8, &Line::of(b"8|B\r\n"));
        o.skip_below(8);
        assert_eq!(o.unmatched(), b"8|B\r\n");
        assert_eq!(o.line_at(2), Some((8, &b"8|B\r\n"[..], 2)));
        assert_eq!(o.line_at(5), None);
    }
}
