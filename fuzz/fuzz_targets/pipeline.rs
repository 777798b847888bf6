//! Fuzzes the pure pipeline with arbitrary bytes: splitter (cut into reads of sizes the
//! input chooses) -> parser -> reorder window (small max, the smallest byte budget,
//! random gap skips) -> pops. Checks, beyond "no panic": every seq leaves the window at
//! most once and in order (across the wrap after u64::MAX), the ring and the bytes held
//! never exceed their bounds, the splitter's buffer stays bounded, and the parser agrees
//! with a naive one built on `split` and `str::parse`.
#![no_main]

use follower_maze::event::{parse, Event, Kind, Malformed, ParseError};
use follower_maze::lines::{Line, LineSplitter};
use follower_maze::window::{Insert, LossDetector, Pop, ReorderWindow, MIN_BUDGET};
use libfuzzer_sys::fuzz_target;

const MAX: u64 = 64;

struct Checker {
    window: ReorderWindow,
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
        assert_eq!(from, self.prev.wrapping_add(1));
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
            Insert::Late | Insert::FalseSkip => assert!(ev.seq <= self.prev),
            Insert::Stored | Insert::Duplicate => {}
        }
        assert!(self.window.capacity() as u64 <= MAX.next_power_of_two());
        // The next event's payload is held apart, in a buffer of at most two lines.
        assert!(self.window.bytes() <= MIN_BUDGET + 2 * (32 + 2));
    }
}

/// SPEC.md's parsing rules, the slow and obvious way.
fn reference(line: &[u8]) -> Result<Event, ParseError> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b'|').collect();
    let num = |f: &[u8]| -> Option<u64> {
        if f.is_empty() || !f.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(f).ok()?.parse().ok()
    };
    let canonical = |f: &[u8]| f.len() == 1 || f[0] != b'0';
    let seq = match num(fields[0]) {
        Some(seq) if seq >= 1 => seq,
        _ => return Err(ParseError::Junk),
    };
    let noop = |why| Err(ParseError::NoOp { seq, why });
    let (kind, wanted) = match fields.get(1).copied() {
        Some(b"F") => (Kind::Follow, 2),
        Some(b"U") => (Kind::Unfollow, 2),
        Some(b"B") => (Kind::Broadcast, 0),
        Some(b"P") => (Kind::Private, 2),
        Some(b"S") => (Kind::Status, 1),
        _ => return noop(Malformed::UnknownType),
    };
    let ids = &fields[2..];
    for (k, f) in ids.iter().enumerate() {
        if k == wanted {
            return noop(Malformed::FieldCount);
        }
        if num(f).is_none() {
            return noop(Malformed::BadId);
        }
    }
    if ids.len() != wanted {
        return noop(Malformed::FieldCount);
    }
    let id = |k: usize| ids.get(k).and_then(|f| num(f)).unwrap_or(0);
    Ok(Event {
        seq,
        kind,
        from: id(0),
        to: id(1),
        canonical: canonical(fields[0]) && ids.iter().all(|f| canonical(f)),
    })
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
