//! What one watched connection is owed: the bytes of its expected lines back to back, and
//! where each line ends. Received bytes are compared with the owed bytes a whole read at
//! a time (one `memcmp`, no line splitting); the line ends are needed only to count lines,
//! time them, and quote one in a failure.

use std::collections::VecDeque;

#[derive(Default)]
pub struct Owed {
    /// Owed bytes; `bytes[..matched]` have been received (dropped now and then in bulk).
    bytes: Vec<u8>,
    matched: usize,
    /// Offset, of all bytes ever owed, of `bytes[0]`.
    base: u64,
    /// Per line not yet received in full: its seq and the offset (of all bytes ever owed)
    /// where it ends.
    lines: VecDeque<(u64, u64)>,
    /// Offset (of all bytes ever owed) where the oldest of `lines` starts.
    front: u64,
}

impl Owed {
    /// One more line (with its `\r\n`).
    #[inline]
    pub fn push(&mut self, seq: u64, line: &[u8]) {
        // Full: drop the lines received in full rather than grow (copies at most as
        // much as was received since the last time). Not the part of a line received:
        // a failure quotes the line from its start.
        let done = (self.front - self.base) as usize;
        if self.bytes.len() + line.len() > self.bytes.capacity() && done >= self.bytes.len() / 2 {
            self.bytes.drain(..done);
            self.base = self.front;
            self.matched -= done;
        }
        let end = self.base + (self.bytes.len() + line.len()) as u64;
        self.bytes.extend_from_slice(line);
        self.lines.push_back((seq, end));
    }

    /// Whether no line is owed.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
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
        let at = self.base + self.matched as u64;
        while let Some(&(seq, end)) = self.lines.front() {
            if end > at {
                break;
            }
            done(seq);
            self.front = end;
            self.lines.pop_front();
        }
    }

    /// The seq and bytes of the line holding unmatched byte `k`, and `k`'s place in it.
    pub fn line_at(&self, k: usize) -> Option<(u64, &[u8], usize)> {
        let at = self.base + (self.matched + k) as u64;
        let i = self.lines.partition_point(|&(_, end)| end <= at);
        let &(seq, end) = self.lines.get(i)?;
        let start = match i {
            0 => self.front,
            _ => self.lines[i - 1].1,
        };
        let span = (start - self.base) as usize..(end - self.base) as usize;
        Some((seq, &self.bytes[span], (at - start) as usize))
    }

    /// Drops owed lines with a seq below `seq` (a connection that joined late starts at
    /// its first line's seq).
    pub fn skip_below(&mut self, seq: u64) {
        while let Some(&(s, end)) = self.lines.front() {
            if s >= seq {
                break;
            }
            self.lines.pop_front();
            self.front = end;
        }
        self.restart_line();
    }

    /// A new connection starts at a line boundary: the part of a line the last one got
    /// is owed again.
    pub fn restart_line(&mut self) {
        self.matched = (self.front - self.base) as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_bytes_are_matched_across_reads_and_lines_counted_when_complete() {
        let mut o = Owed::default();
        assert!(o.is_empty());
        o.push(3, b"3|P|1|2\r\n");
        o.push(9, b"9|B\r\n");
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
            o.push(seq, line);
            o.matched(line.len(), |s| {
                assert_eq!(s, seq);
                done += 1;
            });
        }
        assert_eq!(done, 100_000);
        assert!(o.bytes.len() < 200 * 1024, "{}", o.bytes.len());
        // A line half received when the buffer is full keeps its start.
        o.push(5, b"5|P|1|2\r\n");
        o.matched(3, |_| {});
        while o.bytes.len() < o.bytes.capacity() - 4 {
            o.push(6, b"6|B\r\n");
        }
        o.push(6, b"6|B\r\n");
        assert_eq!(o.line_at(0), Some((5, &b"5|P|1|2\r\n"[..], 3)));
        let mut rest = Vec::new();
        o.matched(o.unmatched().len(), |s| rest.push(s));
        assert_eq!(rest[0], 5);
        assert!(rest[1..].iter().all(|&s| s == 6));
        o.push(7, b"7|B\r\n");
        o.push(8, b"8|B\r\n");
        o.skip_below(8);
        assert_eq!(o.unmatched(), b"8|B\r\n");
        assert_eq!(o.line_at(2), Some((8, &b"8|B\r\n"[..], 2)));
    }
}
