//! Line splitting: bytes read from a socket in, complete lines out.
//!
//! A [`LineSplitter`] owns one connection's read buffer. The connection reads into
//! [`LineSplitter::spare`], commits what it read with [`LineSplitter::filled`], then takes
//! lines with [`LineSplitter::next_line`] until it returns `None` ("no whole line yet" is a
//! normal state, not an error). Lines end with `\n`; one `\r` right before it is stripped.
//! A line whose payload exceeds the cap is discarded up to its terminator and reported
//! once as [`Line::TooLong`], so the buffer never grows past `cap + read chunk`.

/// One item taken from the splitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete payload, terminator stripped.
    Full(&'a [u8]),
    /// A line longer than the cap; its bytes were discarded up to its terminator.
    TooLong,
}

/// Read buffer plus cursor over one byte stream.
pub struct LineSplitter {
    buf: Box<[u8]>,
    /// Consumed prefix: lines before it were handed out already.
    start: usize,
    /// End of valid bytes.
    end: usize,
    /// Inside an over-long line, dropping bytes until the next `\n`.
    discarding: bool,
    /// Longest payload accepted, terminator excluded.
    cap: usize,
    /// Bytes before this were searched for `\n`, up to 64 at a time; the ones found and
    /// not yet handed out are the bits of `found`, bit `k` for byte `base + k`.
    scanned: usize,
    base: usize,
    found: u64,
}

impl LineSplitter {
    /// A splitter accepting payloads of up to `cap` bytes, reading up to `chunk` bytes at a
    /// time. The buffer is `cap + 2 + chunk` bytes: a longest line plus its `\r\n` always
    /// fits next to a fresh read.
    pub fn new(cap: usize, chunk: usize) -> Self {
        LineSplitter {
            buf: vec![0; cap + 2 + chunk.max(1)].into_boxed_slice(),
            start: 0,
            end: 0,
            discarding: false,
            cap,
            scanned: 0,
            base: 0,
            found: 0,
        }
    }

    /// Free space to read into. Compacts first (once per read, not per line). Call only
    /// after [`next_line`](Self::next_line) returned `None`: then the slice is never empty.
    pub fn spare(&mut self) -> &mut [u8] {
        debug_assert!(self.found == 0 && self.scanned == self.end);
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned = self.end;
            self.start = 0;
        }
        debug_assert!(self.end < self.buf.len());
        &mut self.buf[self.end..]
    }

    /// Commits `n` bytes written into the slice last returned by [`spare`](Self::spare).
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.buf.len());
        self.end += n;
    }

    /// Bytes held that do not yet form a complete line.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Inside a line already known to be over-long (its terminator not yet seen).
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// The next complete line, or `None` when more bytes are needed.
    ///
    /// Line ends are found a 64-byte block at a time, as a bit mask: taking a line is then
    /// a trailing-zero count, and the search's loop exit is taken once per block instead
    /// of being mispredicted once per ~20-byte line.
    #[inline(always)]
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        while self.found == 0 {
            if self.scanned == self.end {
                self.no_line();
                return None;
            }
            let block = &self.buf[self.scanned..self.end.min(self.scanned + 64)];
            self.base = self.scanned;
            self.found = newlines(block);
            self.scanned += block.len();
        }
        let i = self.base + self.found.trailing_zeros() as usize;
        self.found &= self.found - 1;
        let line_start = self.start;
        self.start = i + 1;
        Some(self.classify(line_start, i))
    }

    /// No `\n` in the bytes held: they may be a line still arriving, or one already too
    /// long.
    fn no_line(&mut self) {
        // `cap + 1` bytes may still be a longest payload waiting for the `\n` of its
        // `\r\n`, if the last is that `\r`; past that the line is over-long whatever
        // follows, and known to be as soon as it is.
        let pending = &self.buf[self.start..self.end];
        let over = pending.len() > self.cap + 1
            || (pending.len() == self.cap + 1 && pending[self.cap] != b'\r');
        if over {
            self.discarding = true;
        }
        if self.discarding {
            self.start = self.end;
        }
    }

    /// At end of stream: the unterminated tail, if any, as a last line. Empties the buffer.
    pub fn take_tail(&mut self) -> Option<Line<'_>> {
        let (tail_start, tail_end) = (self.start, self.end);
        self.start = self.end;
        self.scanned = self.end;
        self.found = 0;
        if tail_start == tail_end && !self.discarding {
            return None;
        }
        Some(self.classify(tail_start, tail_end))
    }

    /// The line in `buf[from..to]` (terminator excluded), ending any discard in progress.
    fn classify(&mut self, from: usize, to: usize) -> Line<'_> {
        if std::mem::take(&mut self.discarding) {
            return Line::TooLong;
        }
        let mut line = &self.buf[from..to];
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        if line.len() > self.cap {
            Line::TooLong
        } else {
            Line::Full(line)
        }
    }
}

/// The `\n`s in `block` (at most 64 bytes) as a mask, bit `k` for byte `k`.
#[inline(always)]
fn newlines(block: &[u8]) -> u64 {
    match block.first_chunk::<64>() {
        Some(full) => newlines64(full),
        // The tail of a read: once per read, not per line.
        None => (block.iter().enumerate()).fold(0, |m, (k, &b)| m | u64::from(b == b'\n') << k),
    }
}

/// Sixteen bytes per compare (SSE2 is part of x86_64's baseline).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn newlines64(block: &[u8; 64]) -> u64 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    let mut mask = 0;
    for (k, part) in block.chunks_exact(16).enumerate() {
        // SAFETY: SSE2 is in every x86_64 CPU; `part` is 16 readable bytes, and this load
        // takes any alignment.
        let hits = unsafe {
            let v = _mm_loadu_si128(part.as_ptr().cast());
            _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'\n' as i8))) as u16
        };
        mask |= u64::from(hits) << (16 * k);
    }
    mask
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn newlines64(block: &[u8; 64]) -> u64 {
    newlines64_words(block)
}

/// Eight bytes per step, exact (no carries between bytes), elsewhere.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn newlines64_words(block: &[u8; 64]) -> u64 {
    const LOWS: u64 = u64::from_ne_bytes([0x7f; 8]);
    const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut mask = 0;
    for (k, word) in block.chunks_exact(8).enumerate() {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes) ^ NEWLINES;
        // The high bit of each byte that is zero (a `\n`), gathered into one byte.
        let zero = !(((x & LOWS) + LOWS) | x) & !LOWS;
        let hits = ((zero >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56;
        mask |= hits << (8 * k);
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn newlines_match_a_plain_search() {
        // Bytes around 0x0a and 0x01/0x80 are where a word-at-a-time search would go wrong.
        let tricky = [0x0a, 0x0b, 0x09, 0x01, 0x00, 0x8a, 0x80, 0xff, b'1', b'|'];
        let mut rng = Rng::new(1);
        for len in 0..=64 {
            for _ in 0..200 {
                let hay: Vec<u8> = (0..len).map(|_| rng.pick(&tricky)).collect();
                let want = (0..len)
                    .filter(|&k| hay[k] == b'\n')
                    .fold(0u64, |m, k| m | 1 << k);
                assert_eq!(newlines(&hay), want, "{hay:?}");
                if let Some(block) = hay.first_chunk::<64>() {
                    assert_eq!(newlines64_words(block), want, "{hay:?}");
                }
            }
        }
    }

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Item {
        Full(Vec<u8>),
        TooLong,
    }

    fn drain(s: &mut LineSplitter, out: &mut Vec<Item>) {
        while let Some(line) = s.next_line() {
            out.push(match line {
                Line::Full(l) => Item::Full(l.to_vec()),
                Line::TooLong => Item::TooLong,
            });
        }
    }

    /// Feeds `input` cut at `cuts` (sorted offsets) and returns what came out.
    fn split_at_cuts(input: &[u8], cuts: &[usize], cap: usize, chunk: usize) -> Vec<Item> {
        let mut s = LineSplitter::new(cap, chunk);
        let mut out = Vec::new();
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(input.len());
        for w in bounds.windows(2) {
            let mut piece = &input[w[0]..w[1]];
            // A read may be smaller than a piece: never more than `spare()` allows.
            while !piece.is_empty() {
                let spare = s.spare();
                let n = spare.len().min(piece.len());
                spare[..n].copy_from_slice(&piece[..n]);
                s.filled(n);
                piece = &piece[n..];
                drain(&mut s, &mut out);
            }
        }
        out
    }

    /// The naive reference: split on `\n`, strip one `\r`, classify by length.
    fn reference(input: &[u8], cap: usize) -> Vec<Item> {
        let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        parts.pop(); // after the last terminator: an incomplete line, not emitted
        parts
            .into_iter()
            .map(|p| {
                let p = p.strip_suffix(b"\r").unwrap_or(p);
                if p.len() > cap {
                    Item::TooLong
                } else {
                    Item::Full(p.to_vec())
                }
            })
            .collect()
    }

    const SAMPLE: &[u8] = b"666|F|60|50\r\n1|U|12|9\r\n542532|B\n43|P|32|56\r\n\r\n634|S|32\r\n";

    #[test]
    fn every_single_cut_point_gives_the_same_lines() {
        let want = reference(SAMPLE, 64);
        assert_eq!(want.len(), 6);
        for cut in 0..=SAMPLE.len() {
            assert_eq!(split_at_cuts(SAMPLE, &[cut], 64, 64), want, "cut at {cut}");
        }
    }

    #[test]
    fn every_pair_of_cut_points_gives_the_same_lines() {
        let want = reference(SAMPLE, 64);
        for a in 0..=SAMPLE.len() {
            for b in a..=SAMPLE.len() {
                assert_eq!(split_at_cuts(SAMPLE, &[a, b], 64, 64), want, "cuts {a},{b}");
            }
        }
    }

    #[test]
    fn cut_between_cr_and_lf_strips_the_cr() {
        let at = SAMPLE.iter().position(|&b| b == b'\r').unwrap() + 1;
        assert_eq!(SAMPLE[at], b'\n');
        let got = split_at_cuts(SAMPLE, &[at], 64, 64);
        assert_eq!(got[0], Item::Full(b"666|F|60|50".to_vec()));
    }

    #[test]
    fn byte_at_a_time_reads() {
        let cuts: Vec<usize> = (1..SAMPLE.len()).collect();
        assert_eq!(split_at_cuts(SAMPLE, &cuts, 64, 1), reference(SAMPLE, 64));
    }

    #[test]
    fn many_lines_in_one_read_and_bare_lf() {
        let input = b"1|B\n2|B\n3|B\r\n4|B\n";
        let got = split_at_cuts(input, &[], 64, 4096);
        let want: Vec<Item> = ["1|B", "2|B", "3|B", "4|B"]
            .iter()
            .map(|s| Item::Full(s.as_bytes().to_vec()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn only_one_cr_is_stripped_and_inner_cr_kept() {
        let got = split_at_cuts(b"a\rb\r\r\n", &[], 64, 64);
        assert_eq!(got, vec![Item::Full(b"a\rb\r".to_vec())]);
    }

    #[test]
    fn a_line_is_known_over_long_at_cap_plus_one_bytes_unless_the_last_is_cr() {
        fn feed(l: &mut LineSplitter, bytes: &[u8]) {
            l.spare()[..bytes.len()].copy_from_slice(bytes);
            l.filled(bytes.len());
        }
        let mut l = LineSplitter::new(4, 16);
        feed(&mut l, b"1234\r");
        assert_eq!(l.next_line(), None);
        assert!(
            !l.is_discarding(),
            "4 bytes and the \\r of a \\r\\n: not over-long yet"
        );
        feed(&mut l, b"\n");
        assert_eq!(l.next_line(), Some(Line::Full(b"1234")));
        feed(&mut l, b"12345");
        assert_eq!(l.next_line(), None);
        assert!(l.is_discarding(), "5 bytes, no \\r: over-long already");
    }

    #[test]
    fn over_long_lines_are_discarded_to_their_terminator_and_counted() {
        let cap = 16;
        let mut input = Vec::new();
        input.extend_from_slice(b"1|B\r\n");
        input.extend(std::iter::repeat_n(b'x', 100));
        input.extend_from_slice(b"\r\n2|B\r\n");
        input.extend(std::iter::repeat_n(b'y', 17)); // cap + 1: over-long by one byte
        input.extend_from_slice(b"\r\n");
        input.extend(std::iter::repeat_n(b'z', 16)); // exactly cap: accepted
        input.extend_from_slice(b"\r\n3|B\n");
        let want = reference(&input, cap);
        assert_eq!(want.iter().filter(|i| **i == Item::TooLong).count(), 2);
        for chunk in [1, 3, 7, 16, 64] {
            for cut in 0..=input.len() {
                assert_eq!(
                    split_at_cuts(&input, &[cut], cap, chunk),
                    want,
                    "chunk {chunk} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn buffer_stays_bounded_while_discarding() {
        let mut s = LineSplitter::new(8, 32);
        let mut out = Vec::new();
        for _ in 0..1000 {
            let spare = s.spare();
            spare.fill(b'x');
            let n = spare.len();
            s.filled(n);
            drain(&mut s, &mut out);
            assert!(s.buffered() <= 8 + 2 + 32);
        }
        assert!(out.is_empty());
        let spare = s.spare();
        spare[..4].copy_from_slice(b"\nok\n");
        s.filled(4);
        drain(&mut s, &mut out);
        assert_eq!(out, vec![Item::TooLong, Item::Full(b"ok".to_vec())]);
    }

    #[test]
    fn tail_without_terminator_is_a_last_line() {
        let mut s = LineSplitter::new(8, 32);
        s.spare()[..7].copy_from_slice(b"1|B\n2|B");
        s.filled(7);
        assert_eq!(s.next_line(), Some(Line::Full(b"1|B")));
        assert_eq!(s.next_line(), None);
        assert_eq!(s.take_tail(), Some(Line::Full(b"2|B")));
        assert_eq!(s.take_tail(), None);
    }

    #[test]
    fn random_streams_match_the_reference() {
        let mut rng = Rng::new(2);
        let mut rnd = move || rng.next_u64();
        for _ in 0..300 {
            let len = (rnd() % 200) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| match rnd() % 6 {
                    0 => b'\n',
                    1 => b'\r',
                    _ => b'a',
                })
                .collect();
            let mut cuts: Vec<usize> = (0..(rnd() % 5))
                .map(|_| (rnd() as usize) % (len + 1))
                .collect();
            cuts.sort();
            let chunk = 1 + (rnd() % 20) as usize;
            assert_eq!(
                split_at_cuts(&input, &cuts, 10, chunk),
                reference(&input, 10)
            );
        }
    }

    /// The event source's sizes (1 KiB cap, 32 KiB reads): streams of many 64-byte blocks,
    /// with runs of empty lines, lines across block and read boundaries, and over-long
    /// ones.
    #[test]
    fn random_long_streams_match_the_reference() {
        let mut rng = Rng::new(5);
        for _ in 0..200 {
            let mut input = Vec::new();
            while input.len() < 40_000 {
                let len = match rng.below(8) {
                    0 => 0,
                    1 => rng.below(4) as usize,
                    2 => 1000 + rng.below(2000) as usize,
                    _ => 5 + rng.below(40) as usize,
                };
                input.extend(std::iter::repeat_n(b'x', len));
                if rng.below(3) == 0 {
                    input.push(b'\r');
                }
                input.push(b'\n');
            }
            let mut cuts: Vec<usize> = (0..rng.below(8))
                .map(|_| rng.below(input.len() as u64 + 1) as usize)
                .collect();
            cuts.sort();
            assert_eq!(
                split_at_cuts(&input, &cuts, 1024, 32 * 1024),
                reference(&input, 1024)
            );
        }
    }
}
