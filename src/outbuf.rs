//! One connection's write buffer: notifications in from the router (via the server),
//! bytes out to the socket in one `write` per flush.
//!
//! Appending never touches the socket, so a burst of notifications costs one syscall
//! (the server flushes a buffer before it would pass `WRITE_AT`, or once `--flush-delay-us`
//! is up).
//! The pending byte count is what the server compares against `--client-buffer-limit`.

use crate::prefetch::prefetch;
use std::io::{self, Write};

/// A buffer drained with more capacity than this releases it at once: only bursts grow a
/// buffer this far, and keeping every client's burst peak would add up.
const BURST_CAPACITY: usize = 64 * 1024;

/// A client's pending output is written as soon as it would pass this, mid-turn, instead
/// of growing: large writes (the kernel's cost is mostly per `write`) without every client
/// holding a turn's output. A buffer that fills up grows to exactly this much (see
/// `grow`), not to the next power of two.
pub const WRITE_AT: usize = 12 * 1024;

/// What [`OutBuf::append_short`] copies, whatever the length committed.
pub const SHORT: usize = 32;

/// Whether buffers may grow straight to `WRITE_AT` (see [`OutBuf::grow`]): only while
/// `clients` buffers of that size fit in `total_limit` (`--total-buffer-limit`).
pub fn grows_straight(clients: usize, total_limit: usize) -> bool {
    clients.saturating_mul(WRITE_AT + SHORT) <= total_limit
}

/// Most write buffer capacity an idle connection keeps through a release: enough for an
/// ordinary turn's output, so a connection written every turn does not allocate every turn.
pub const KEEP_CAPACITY: usize = 16 * 1024;

/// Capacity each idle buffer keeps through a release: `KEEP_CAPACITY`, or less when
/// `clients` buffers of it would pass an eighth of `total_limit` (`--total-buffer-limit`):
/// what idle connections hold together is bounded by the configuration, not by how many
/// connect (10,000 clients kept 16 KiB each, 58.7 MiB after a burst).
pub fn idle_keep(clients: usize, total_limit: usize) -> usize {
    KEEP_CAPACITY.min(total_limit / 8 / clients.max(1))
}

/// Bytes waiting to be written, with a consumed-prefix cursor.
#[derive(Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    /// Bytes before this were written already.
    head: usize,
}

impl OutBuf {
    /// Queues `bytes` after everything pending (`straight`: see [`grow`](Self::grow)).
    pub fn append(&mut self, bytes: &[u8], straight: bool) {
        if self.buf.capacity() - self.buf.len() < bytes.len() {
            self.grow(bytes.len(), straight);
        }
        self.buf.extend_from_slice(bytes);
        // The next line of this buffer is written a few notifications from now, after
        // many to other clients have pushed it out of cache: ask for it now.
        prefetch(self.buf.as_ptr().wrapping_add(self.buf.len() + 64));
    }

    /// Queues the first `len` (at most [`SHORT`]) bytes of `block`. All of `block` is
    /// copied, in two 16-byte moves with neither a `memcpy` call nor a branch on the
    /// length (a notification is 12-25 bytes, and the call was 6% of the server's time);
    /// the bytes past `len` land in spare capacity, to be overwritten by the next append.
    #[inline(always)]
    pub fn append_short(&mut self, block: &[u8; SHORT], len: usize, straight: bool) {
        debug_assert!(len <= SHORT);
        if self.buf.capacity() - self.buf.len() < SHORT {
            self.grow(SHORT, straight);
        }
        let at = self.buf.len();
        // SAFETY: at least `SHORT` bytes of capacity follow `at` (just ensured), so the
        // copy stays in the allocation; the `len <= SHORT` bytes committed were written.
        unsafe {
            std::ptr::copy_nonoverlapping(block.as_ptr(), self.buf.as_mut_ptr().add(at), SHORT);
            self.buf.set_len(at + len.min(SHORT));
        }
        prefetch(self.buf.as_ptr().wrapping_add(self.buf.len() + 64));
    }

    /// Makes room for `more` bytes: doubling, as a `Vec` does (a client that gets little
    /// keeps a small buffer: 10,000 of them must not hold 12 KiB each), but, if
    /// `straight`, once past a quarter of `WRITE_AT` straight to it (doubling would make
    /// it the next power of two, and each step on the way leaves a freed block behind in
    /// the heap: 100 busy clients peaked 0.2 MiB higher with the 8 KiB step); past it (a
    /// reader that does not keep up) doubling again. The server asks for `straight` only
    /// while every client holding `WRITE_AT` fits in `--total-buffer-limit`: with 10,000
    /// clients, each written a few KiB at a time, the step would be 8 KiB of nothing each.
    #[cold]
    fn grow(&mut self, more: usize, straight: bool) {
        let need = self.buf.len() + more;
        let doubled = need.max(2 * self.buf.capacity());
        // `SHORT` more than `WRITE_AT`: a short append copies that much past the end.
        let step = if straight { WRITE_AT / 4 } else { WRITE_AT };
        let target = if need <= WRITE_AT + SHORT && doubled > step {
            WRITE_AT + SHORT
        } else {
            doubled
        };
        self.buf.reserve_exact(target - self.buf.len());
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.head
    }

    /// Bytes allocated, pending or not.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Empty, and holding more than `keep`: what [`shrink_idle`](Self::shrink_idle) releases.
    pub fn holds_idle_excess(&self, keep: usize) -> bool {
        self.pending() == 0 && self.buf.capacity() > keep
    }

    /// Releases the memory of an empty buffer whose capacity exceeds `keep`: after a burst,
    /// an idle connection should not hold on to its peak. (Not done on every drain: a
    /// buffer that fills again next turn would then allocate every turn.)
    pub fn shrink_idle(&mut self, keep: usize) {
        if self.holds_idle_excess(keep) {
            self.buf = Vec::new();
            self.head = 0;
        }
    }

    /// One `write` of everything pending. Returns the bytes the socket took (0 when
    /// nothing is pending); `WouldBlock` and other errors are returned as they are.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<usize> {
        if self.pending() == 0 {
            return Ok(0);
        }
        let n = w.write(&self.buf[self.head..])?;
        self.head += n;
        debug_assert!(self.head <= self.buf.len());
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
            if self.buf.capacity() > BURST_CAPACITY {
                self.buf = Vec::new();
            }
        } else if self.head >= self.buf.len() / 2 {
            // Compact once per write, and only when that moves less than it frees.
            self.buf.drain(..self.head);
            self.head = 0;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes per write.
    struct Sink {
        got: Vec<u8>,
        room: usize,
        writes: usize,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.room);
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn many_appends_one_write() {
        let mut o = OutBuf::default();
        for i in 0..100 {
            o.append(format!("{i}|B\r\n").as_bytes(), true);
        }
        let total = o.pending();
        let mut s = Sink {
            got: vec![],
            room: usize::MAX,
            writes: 0,
        };
        assert_eq!(o.write_to(&mut s).unwrap(), total);
        assert_eq!(s.writes, 1);
        assert_eq!(o.pending(), 0);
        assert_eq!(o.write_to(&mut s).unwrap(), 0);
        assert_eq!(s.writes, 1, "nothing pending: no syscall");
    }

    #[test]
    fn partial_writes_keep_order_and_count() {
        let mut o = OutBuf::default();
        let mut want = Vec::new();
        let mut s = Sink {
            got: vec![],
            room: 7,
            writes: 0,
        };
        for i in 0..500u32 {
            let line = format!("{i}|P|1|2\r\n");
            want.extend_from_slice(line.as_bytes());
            o.append(line.as_bytes(), true);
            if i % 3 == 0 {
                o.write_to(&mut s).unwrap();
            }
            assert_eq!(o.pending(), want.len() - s.got.len());
        }
        while o.pending() > 0 {
            o.write_to(&mut s).unwrap();
        }
        assert_eq!(s.got, want);
    }

    #[test]
    fn would_block_keeps_everything() {
        let mut o = OutBuf::default();
        o.append(b"1|B\r\n", true);
        let mut s = Sink {
            got: vec![],
            room: 0,
            writes: 0,
        };
        assert_eq!(
            o.write_to(&mut s).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(o.pending(), 5);
    }

    /// A line as the server hands it over: `len` bytes at the start of a `SHORT` block.
    fn block(line: &[u8]) -> [u8; SHORT] {
        let mut b = [b'#'; SHORT];
        b[..line.len()].copy_from_slice(line);
        b
    }

    /// The server writes a buffer before it would pass `WRITE_AT`: a buffer that fills up
    /// holds that much (plus the `SHORT` bytes a short append copies past its end), not
    /// the next power of two; one that gets little stays small. Straight, it goes there
    /// from a quarter of it; otherwise (many clients) it doubles all the way.
    #[test]
    fn a_buffer_grows_to_the_write_size_and_not_past_it() {
        for straight in [true, false] {
            let mut o = OutBuf::default();
            let line = b"1234567|P|123|456\r\n";
            o.append_short(&block(line), line.len(), straight);
            assert!(o.buf.capacity() < 64, "a first line: {}", o.buf.capacity());
            let mut steps = Vec::new();
            while o.pending() + line.len() <= WRITE_AT {
                if steps.last() != Some(&o.buf.capacity()) {
                    steps.push(o.buf.capacity());
                }
                o.append_short(&block(line), line.len(), straight);
            }
            assert_eq!(o.buf.capacity(), WRITE_AT + SHORT, "filled up to it");
            let below = steps[steps.len() - 2];
            if straight {
                assert!(
                    below <= WRITE_AT / 4,
                    "straight from {below} to it, no step between: {steps:?}"
                );
            } else {
                assert!(
                    steps.windows(2).all(|w| w[1] <= 2 * w[0].max(SHORT)),
                    "doubling, never more: {steps:?}"
                );
                assert!(below > WRITE_AT / 2, "{steps:?}");
            }
            o.append(line, straight);
            assert!(
                o.buf.capacity() >= WRITE_AT + line.len(),
                "past it (blocked), it grows"
            );
            let mut o = OutBuf::default();
            o.append(&vec![b'x'; WRITE_AT + 1], straight);
            assert_eq!(o.pending(), WRITE_AT + 1, "a long first append fits whole");
        }
    }

    /// At the default 16 MiB total limit, up to 1,361 clients; none past the limit.
    #[test]
    fn buffers_grow_straight_while_every_clients_write_size_fits_the_total_limit() {
        let limit = 16 << 20;
        assert!(grows_straight(0, limit));
        assert!(grows_straight(1361, limit));
        assert!(!grows_straight(1362, limit));
        assert!(!grows_straight(1, WRITE_AT));
        assert!(grows_straight(1, WRITE_AT + SHORT));
        assert!(!grows_straight(usize::MAX, usize::MAX - 1));
    }

    /// A buffer written at a few KiB (a client among 10,000) keeps a few KiB, not
    /// `WRITE_AT`, unless it may grow straight.
    #[test]
    fn a_buffer_written_at_a_few_kib_stays_near_that_unless_straight() {
        for (straight, most) in [(false, 4 * 1024 + SHORT), (true, WRITE_AT + SHORT)] {
            let mut o = OutBuf::default();
            let mut sink = Sink {
                got: Vec::new(),
                room: usize::MAX,
                writes: 0,
            };
            for _ in 0..100 {
                while o.pending() < 2600 {
                    o.append_short(&block(b"1234567|B\r\n"), 11, straight);
                }
                o.write_to(&mut sink).unwrap();
            }
            assert!(o.buf.capacity() <= most, "{straight}: {}", o.buf.capacity());
            assert!(o.buf.capacity() >= 2600);
        }
    }

    /// Short appends commit their length only: what follows in each block never shows,
    /// mixed with plain appends, at every fill level of the buffer.
    #[test]
    fn short_appends_queue_exactly_their_bytes() {
        let mut o = OutBuf::default();
        let mut want = Vec::new();
        let mut rng = crate::rng::Rng::new(3);
        let mut sink = Sink {
            got: Vec::new(),
            room: usize::MAX,
            writes: 0,
        };
        for k in 0..20_000 {
            let len = rng.below(SHORT as u64 + 1) as usize;
            let line: Vec<u8> = (0..len).map(|i| b'a' + ((k + i) % 26) as u8).collect();
            if rng.below(4) == 0 {
                o.append(&line, true);
            } else {
                o.append_short(&block(&line), len, true);
            }
            want.extend_from_slice(&line);
            if o.pending() > WRITE_AT - SHORT {
                o.write_to(&mut sink).unwrap();
            }
        }
        o.write_to(&mut sink).unwrap();
        assert_eq!(sink.got, want);
    }

    #[test]
    fn idle_buffers_keep_together_at_most_an_eighth_of_the_total_limit() {
        let total = 16 << 20;
        assert_eq!(idle_keep(1, total), KEEP_CAPACITY);
        assert_eq!(
            idle_keep(0, total),
            KEEP_CAPACITY,
            "no clients: no division by 0"
        );
        assert_eq!(
            idle_keep(128, total),
            KEEP_CAPACITY,
            "classic's 100 keep theirs"
        );
        assert_eq!(idle_keep(129, total), (2 << 20) / 129);
        assert!(idle_keep(10_000, total) * 10_000 <= total / 8);
        assert_eq!(idle_keep(10_000, 1 << 20), 13);
    }

    #[test]
    fn capacity_is_kept_for_ordinary_turns_and_released_after_bursts() {
        let mut o = OutBuf::default();
        o.append(&vec![b'x'; 1 << 20], true);
        o.shrink_idle(1024);
        assert!(o.buf.capacity() >= 1 << 20, "never while bytes are pending");
        let mut s = Sink {
            got: vec![],
            room: usize::MAX,
            writes: 0,
        };
        o.append(&[b'x'; 1000], true);
        o.write_to(&mut s).unwrap();
        assert_eq!(o.buf.capacity(), 0, "a burst's capacity goes when drained");
        o.append(&[b'x'; 10_000], true);
        o.write_to(&mut s).unwrap();
        assert!(
            o.buf.capacity() >= 10_000,
            "an ordinary turn's capacity stays for the next"
        );
        o.shrink_idle(1024);
        assert_eq!(o.buf.capacity(), 0, "until an idle shrink");
        o.append(b"1|B\r\n", true);
        o.shrink_idle(0);
        assert_eq!(o.pending(), 5);
    }
}
