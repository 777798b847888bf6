//! Fuzzes the pure pipeline with arbitrary bytes: splitter (cut into reads of sizes the
//! input chooses) -> parser -> reorder window (small max, the smallest byte budget,
//! random gap skips) -> pops. Checks, beyond "no panic": every seq leaves the window at
//! most once and in order (across the wrap after u64::MAX), the ring and the bytes held
//! never exceed their bounds, the splitter's buffer stays bounded, and the parser agrees
//! with a naive one built on `split` and `str::parse`.
#![no_main]

use follower_maze::event::{parse, reference, Event, ParseError};
use follower_maze::lines::{Line, LineSplitter};
use follower_maze::window::{Insert, LossDetector, Pop, ReorderWindow, MIN_BUDGET};
use libfuzzer_sys::fuzz_target;

const MAX: u64 = 64;

struct Checker {
    window: ReorderWindow,
    /// The last seq out.
    prev: u64,
}

impl Checker {
    fn account(&mut self, p: Pop) {
        let (from, through) = match p {
            Pop::Event(e) => {
                if !e.canonical {
                    assert!(self.window.take_payload(e.seq, &mut Vec::new()));
                }
                (e.seq, e.seq)
            }
            Pop::Skipped { from, through, .. } => (from, through),
            Pop::Wrapped => {
                assert_eq!(self.prev, u64::MAX);
                self.prev = 0;
                return;
            }
        };
        assert_eq!(Some(from), self.prev.checked_add(1));
        assert!(through >= from);
        self.prev = through;
    }

    fn drain(&mut self) {
        while let Some(p) = self.window.pop() {
            self.account(p);
        }
    }

    fn offer(&mut self, ev: Event, raw: &[u8]) {
        match self.window.insert(ev, raw) {
            Insert::Full => {
                self.window.make_room(&ev, raw);
                while !self.window.fits(&ev, raw) {
                    let p = self.window.pop().expect("room must be made");
                    self.account(p);
                }
                assert_eq!(self.window.insert(ev, raw), Insert::Stored);
            }
            // Never within the window ahead (in this cycle or, past the end, the next).
            Insert::Late | Insert::FalseSkip => {
                let ahead = ev.seq.wrapping_sub(self.prev);
                let ahead = if ev.seq > self.prev { ahead } else { ahead.wrapping_sub(1) };
                assert!(ahead > MAX);
            }
            Insert::Stored | Insert::Duplicate => {}
            // Judged again once what is ready has gone out.
            Insert::Deferred => {
                self.drain();
                return self.offer(ev, raw);
            }
        }
        assert!(self.window.capacity() as u64 <= MAX.next_power_of_two());
        // The next event's payload is held apart, in a buffer of at most two lines.
        assert!(self.window.bytes() <= MIN_BUDGET + 2 * (32 + 2));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let chunk = 1 + (cut as usize % 64);
    let mut lines = LineSplitter::new(32, chunk);
    let mut c = Checker { window: ReorderWindow::new(2, MAX, MIN_BUDGET, LossDetector::new(true)), prev: 0 };
    let mut rest = data;
    while !rest.is_empty() {
        let spare = lines.spare();
        let n = spare.len().min(rest.len()).min(chunk);
        spare[..n].copy_from_slice(&rest[..n]);
        lines.filled(n);
        rest = &rest[n..];
        while let Some(line) = lines.next_line() {
            let Line::Full(l) = line else { continue };
            let raw = l.to_vec();
            assert_eq!(parse(&raw), reference(&raw), "{:?}", String::from_utf8_lossy(&raw));
            match parse(&raw) {
                Ok(ev) => c.offer(ev, &raw),
                Err(ParseError::NoOp { seq, .. }) => c.offer(Event::noop(seq), &raw),
                Err(ParseError::Junk) => {}
            }
            if raw.first() == Some(&b'!') {
                if let Some(p) = c.window.skip_gap() {
                    c.account(p);
                }
            }
            c.drain();
        }
        assert!(lines.buffered() <= 32 + 2 + chunk);
    }
    c.window.start_flush();
    c.drain();
    assert!(c.window.flushed());
});
