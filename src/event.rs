//! Events: one payload line from the splitter in, a compact [`Event`] out.
//!
//! [`parse`] tells three cases apart, as SPEC.md asks: a valid event; a **no-op** (valid seq,
//! malformed rest: it keeps its place in the sequence and notifies no one); and **junk**
//! (no valid seq: discarded). Parsing reads bytes only: no UTF-8 check, no allocation.
//!
//! An event does not keep its payload bytes. A payload in canonical form (no leading zeros)
//! is re-rendered from the numbers at delivery by [`Event::render`], so a window slot stays
//! 32 bytes; the rare non-canonical payload is kept by the caller (see [`Event::canonical`]).

/// What an event does. `NoOp` holds the place of a malformed line with a valid seq.
/// (`repr(u8)`, `Follow` = 0: an all-zero `Event` is a valid value, so the reorder window
/// can take its ring zeroed from the allocator.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Follow,
    Unfollow,
    Broadcast,
    Private,
    Status,
    NoOp,
}

/// One parsed event. `from`/`to` are 0 where the kind has no such field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub kind: Kind,
    pub from: u64,
    pub to: u64,
    /// The payload is exactly what [`Event::render`] produces; when false the caller must
    /// keep the original bytes to deliver them unchanged.
    pub canonical: bool,
}

/// Why a line is not a valid event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The first field is not a seq (empty, not digits, 0, or over u64): discard the line.
    Junk,
    /// The seq is valid but the rest is malformed: the seq still takes its place.
    NoOp { seq: u64, why: Malformed },
}

/// What was wrong with the rest of a line that had a valid seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// No type field, or not one of F, U, B, P, S.
    UnknownType,
    /// Too few or too many fields for the type.
    FieldCount,
    /// A user id that is not a decimal u64.
    BadId,
}

/// Longest canonical rendering: `seq|F|from|to\r\n` with three 20-digit numbers.
pub const MAX_RENDERED: usize = 20 + 3 + 20 + 1 + 20 + 2;

/// Parses one payload (terminator already stripped), in one pass over its bytes.
#[inline(always)]
pub fn parse(line: &[u8]) -> Result<Event, ParseError> {
    let (seq, n) = digits(line);
    let seq = match field_value(line, seq, n) {
        Some(seq) if seq >= 1 => seq,
        _ => return Err(ParseError::Junk),
    };
    let noop = |why| Err(ParseError::NoOp { seq, why });
    let mut canonical = is_canonical(line, n);
    // The type: exactly one byte between two separators (or the end).
    let (kind, wanted, mut rest) = match &line[n..] {
        [b'|', tag, rest @ ..] if matches!(rest.first(), None | Some(b'|')) => {
            match TAGS[usize::from(*tag)] {
                (Kind::NoOp, _) => return noop(Malformed::UnknownType),
                (kind, wanted) => (kind, usize::from(wanted), rest),
            }
        }
        _ => return noop(Malformed::UnknownType),
    };
    let mut ids = [0u64; 2];
    let mut count = 0;
    // Invariant: `rest` is empty or starts with the `|` before another field.
    while let [_, field @ ..] = rest {
        if count == wanted {
            return noop(Malformed::FieldCount);
        }
        let (id, n) = digits(field);
        let Some(id) = field_value(field, id, n) else {
            return noop(Malformed::BadId);
        };
        ids[count] = id;
        canonical &= is_canonical(field, n);
        count += 1;
        rest = &field[n..];
    }
    if count != wanted {
        return noop(Malformed::FieldCount);
    }
    Ok(Event {
        seq,
        kind,
        from: ids[0],
        to: ids[1],
        canonical,
    })
}

/// Each type byte's kind and id count (`NoOp`: not a type). A table, not a `match`: the
/// type of the next event is random, and a jump on it was mispredicted most of the time
/// (a second time, after the router's own).
const TAGS: [(Kind, u8); 256] = {
    let mut t = [(Kind::NoOp, 0); 256];
    t[b'F' as usize] = (Kind::Follow, 2);
    t[b'U' as usize] = (Kind::Unfollow, 2);
    t[b'B' as usize] = (Kind::Broadcast, 0);
    t[b'P' as usize] = (Kind::Private, 2);
    t[b'S' as usize] = (Kind::Status, 1);
    t
};

/// The leading ASCII digits of `bytes`: their value (wrapped past 19 digits) and count.
#[inline(always)]
fn digits(bytes: &[u8]) -> (u64, usize) {
    let (mut value, mut n) = (0u64, 0);
    if let Some(chunk) = bytes.first_chunk::<8>() {
        (value, n) = digits8(*chunk);
        if n < 8 {
            return (value, n);
        }
    }
    for &b in &bytes[n..] {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
        n += 1;
    }
    (value, n)
}

/// The leading ASCII digits of `chunk`, eight at a time (SWAR): value and count.
#[inline(always)]
fn digits8(chunk: [u8; 8]) -> (u64, usize) {
    const LANES: u64 = u64::from_ne_bytes([1; 8]);
    let x = u64::from_le_bytes(chunk).wrapping_sub(b'0' as u64 * LANES);
    // A byte is not a digit if it is now over 9: +0x76 sets its high bit, or it was set.
    // Carries and borrows only leave a non-digit byte, so the first one is exact.
    let flags = (x.wrapping_add(0x76 * LANES) | x) & (0x80 * LANES);
    let n = (flags.trailing_zeros() / 8) as usize;
    if n == 0 {
        return (0, 0);
    }
    // The n digits to the top bytes, then pairs, quads, octets combined.
    let v = x << (8 * (8 - n));
    let v = (v.wrapping_mul(10).wrapping_add(v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v.wrapping_mul(100).wrapping_add(v >> 16)) & 0x0000_FFFF_0000_FFFF;
    let v = (v.wrapping_mul(10000).wrapping_add(v >> 32)) & 0xFFFF_FFFF;
    (v, n)
}

/// The value of a field that starts `bytes` and whose first `n` bytes are digits
/// (`value` as [`digits`] read it), if the field is a decimal u64 ending at `|` or the end.
#[inline(always)]
fn field_value(bytes: &[u8], value: u64, n: usize) -> Option<u64> {
    if n == 0 || !matches!(bytes.get(n), None | Some(b'|')) {
        return None;
    }
    // Up to 19 digits cannot overflow; longer fields (leading zeros) take the checked path.
    if n > 19 {
        return number(&bytes[..n]);
    }
    Some(value)
}

/// A decimal u64: one or more ASCII digits, no sign, no overflow.
#[inline]
pub fn number(field: &[u8]) -> Option<u64> {
    if field.is_empty() {
        return None;
    }
    // Up to 19 digits cannot overflow: the common case needs no checked arithmetic.
    if field.len() <= 19 {
        let mut v = 0u64;
        for &b in field {
            let digit = b.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            v = v * 10 + u64::from(digit);
        }
        return Some(v);
    }
    field.iter().try_fold(0u64, |acc, &b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Rendering the `n`-digit number that starts `field` gives back its exact bytes (no
/// leading zeros).
fn is_canonical(field: &[u8], n: usize) -> bool {
    n == 1 || field.first() != Some(&b'0')
}

/// SPEC.md's parsing rules, the slow and obvious way: what [`parse`] is checked against,
/// by the tests here and by the fuzz target (feature `reference`).
#[cfg(any(test, feature = "reference"))]
pub fn reference(line: &[u8]) -> Result<Event, ParseError> {
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

impl Event {
    /// A no-op placeholder holding `seq`'s place in the sequence.
    pub fn noop(seq: u64) -> Event {
        Event {
            seq,
            kind: Kind::NoOp,
            from: 0,
            to: 0,
            canonical: true,
        }
    }

    /// Renders the canonical payload plus `\r\n` into the end of `out` and returns it.
    /// Only meaningful for a delivered kind (not `NoOp`). Written from the end back, so
    /// each number's digits go straight to their place (no digit buffer, no copies).
    pub fn render<'a>(&self, out: &'a mut [u8; MAX_RENDERED]) -> &'a [u8] {
        let mut at = MAX_RENDERED - 2;
        out[at..].copy_from_slice(b"\r\n");
        // A table, not a `match`: a jump on the random kind was mispredicted most times.
        const TAG: [u8; 6] = [b'F', b'U', b'B', b'P', b'S', b'B'];
        let tag = TAG[self.kind as usize];
        if matches!(self.kind, Kind::Follow | Kind::Unfollow | Kind::Private) {
            at = put_back(out, at, self.to) - 1;
            out[at] = b'|';
        }
        if matches!(
            self.kind,
            Kind::Follow | Kind::Unfollow | Kind::Private | Kind::Status
        ) {
            at = put_back(out, at, self.from) - 1;
            out[at] = b'|';
        }
        at -= 2;
        out[at] = b'|';
        out[at + 1] = tag;
        at = put_back(out, at, self.seq);
        &out[at..]
    }
}

/// Writes `v` in decimal to end just before `out[end]`; returns where its digits start.
/// Two digits per step, in 32-bit arithmetic once the value fits (cheaper division).
/// Notifications here and maze-sim's expected lines are both rendered with it.
#[inline(always)]
pub fn put_back(out: &mut [u8], end: usize, mut v: u64) -> usize {
    let mut i = end;
    while v > u64::from(u32::MAX) {
        i = put_pair(out, i, (v % 100) as usize);
        v /= 100;
    }
    let mut v = v as u32;
    while v >= 100 {
        i = put_pair(out, i, (v % 100) as usize);
        v /= 100;
    }
    if v >= 10 {
        put_pair(out, i, v as usize)
    } else {
        out[i - 1] = b'0' + v as u8;
        i - 1
    }
}

/// Writes the two digits of `pair` (below 100) to end just before `out[end]`.
#[inline(always)]
fn put_pair(out: &mut [u8], end: usize, pair: usize) -> usize {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    out[end - 2] = PAIRS[pair * 2];
    out[end - 1] = PAIRS[pair * 2 + 1];
    end - 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn ev(seq: u64, kind: Kind, from: u64, to: u64) -> Result<Event, ParseError> {
        Ok(Event {
            seq,
            kind,
            from,
            to,
            canonical: true,
        })
    }

    fn noop(seq: u64, why: Malformed) -> Result<Event, ParseError> {
        Err(ParseError::NoOp { seq, why })
    }

    #[test]
    fn the_five_kinds() {
        assert_eq!(parse(b"666|F|60|50"), ev(666, Kind::Follow, 60, 50));
        assert_eq!(parse(b"1|U|12|9"), ev(1, Kind::Unfollow, 12, 9));
        assert_eq!(parse(b"542532|B"), ev(542532, Kind::Broadcast, 0, 0));
        assert_eq!(parse(b"43|P|32|56"), ev(43, Kind::Private, 32, 56));
        assert_eq!(parse(b"634|S|32"), ev(634, Kind::Status, 32, 0));
    }

    #[test]
    fn extreme_numbers() {
        let max = u64::MAX;
        assert_eq!(
            parse(format!("{max}|P|{max}|0").as_bytes()),
            ev(max, Kind::Private, max, 0)
        );
        assert_eq!(parse(b"18446744073709551616|B"), Err(ParseError::Junk));
        assert_eq!(
            parse(b"7|S|18446744073709551616"),
            noop(7, Malformed::BadId)
        );
    }

    #[test]
    fn junk_lines_have_no_valid_seq() {
        for line in [
            &b""[..],
            b"|B",
            b"0|B",
            b"00|B",
            b"-1|B",
            b"+1|B",
            b" 1|B",
            b"1 |B",
            b"x|F|1|2",
            b"1x|B",
            b"\xff\xfe|B",
            b"F|1|2",
        ] {
            assert_eq!(
                parse(line),
                Err(ParseError::Junk),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn noop_lines_have_a_seq_and_a_malformed_rest() {
        let cases: &[(&[u8], Malformed)] = &[
            (b"5", Malformed::UnknownType),
            (b"5|", Malformed::UnknownType),
            (b"5|X|1|2", Malformed::UnknownType),
            (b"5|f|1|2", Malformed::UnknownType),
            (b"5|FF|1|2", Malformed::UnknownType),
            (b"5|F", Malformed::FieldCount),
            (b"5|F|1", Malformed::FieldCount),
            (b"5|F|1|2|3", Malformed::FieldCount),
            (b"5|U|1", Malformed::FieldCount),
            (b"5|P|1|2|", Malformed::FieldCount),
            (b"5|B|1", Malformed::FieldCount),
            (b"5|B|", Malformed::FieldCount),
            (b"5|S", Malformed::FieldCount),
            (b"5|S|1|2", Malformed::FieldCount),
            (b"5|F|a|2", Malformed::BadId),
            (b"5|F|1|", Malformed::BadId),
            (b"5|P||2", Malformed::BadId),
            (b"5|S|-3", Malformed::BadId),
            (b"5|S| 3", Malformed::BadId),
        ];
        for (line, why) in cases {
            assert_eq!(
                parse(line),
                noop(5, *why),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn leading_zeros_parse_but_are_not_canonical() {
        let e = parse(b"007|F|01|2").unwrap();
        assert_eq!((e.seq, e.kind, e.from, e.to), (7, Kind::Follow, 1, 2));
        assert!(!e.canonical);
        assert!(parse(b"7|F|0|2").unwrap().canonical);
    }

    #[test]
    fn render_gives_back_canonical_payloads() {
        let max = u64::MAX.to_string();
        let long = format!("{max}|F|{max}|{max}");
        for line in [
            "666|F|60|50",
            "1|U|12|9",
            "542532|B",
            "43|P|32|56",
            "634|S|32",
            "9|P|0|0",
            long.as_str(),
        ] {
            let e = parse(line.as_bytes()).unwrap();
            assert!(e.canonical);
            let mut out = [0u8; MAX_RENDERED];
            assert_eq!(e.render(&mut out), format!("{line}\r\n").as_bytes());
        }
    }

    #[test]
    fn put_back_matches_std_formatting() {
        // Every digit count, both sides of each power of ten and of the 32-bit switch,
        // and random values of every size.
        let mut rng = Rng::new(5);
        let near_tens = (0..20).flat_map(|k| {
            let t = 10u64.pow(k);
            [t - 1, t, t + 1]
        });
        let values = (0..100_000)
            .chain(near_tens)
            .chain([u32::MAX.into(), u64::from(u32::MAX) + 1, 1 << 63, u64::MAX])
            .chain((0..100_000).map(|_| rng.next_u64() >> rng.below(64)));
        for v in values {
            let mut buf = [b'x'; 22];
            let start = put_back(&mut buf, 21, v);
            assert_eq!(&buf[start..21], v.to_string().as_bytes());
            assert_eq!(
                (buf[start - 1], buf[21]),
                (b'x', b'x'),
                "{v}: only its digits"
            );
        }
    }

    #[test]
    fn digits_match_a_plain_loop() {
        // Bytes next to '0' and '9', and ones that carry or borrow in a SWAR lane.
        let odd = *b"/:|\x00\xff\x80\x7fa";
        let mut rng = Rng::new(3);
        for len in 0..30 {
            for _ in 0..300 {
                // Mostly digits, so long runs occur.
                let bytes: Vec<u8> = (0..len)
                    .map(|_| match rng.below(4) {
                        0 => rng.pick(&odd),
                        _ => b'0' + rng.below(10) as u8,
                    })
                    .collect();
                let n = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
                let value = bytes[..n].iter().fold(0u64, |v, &b| {
                    v.wrapping_mul(10).wrapping_add(u64::from(b - b'0'))
                });
                assert_eq!(digits(&bytes), (value, n), "{bytes:?}");
            }
        }
    }

    #[test]
    fn number_matches_std_parse() {
        for s in [
            "0",
            "9",
            "10",
            "000",
            "18446744073709551615",
            "18446744073709551616",
            "",
            "1a",
            "٣",
        ] {
            let want = if s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse::<u64>().ok()
            } else {
                None
            };
            assert_eq!(number(s.as_bytes()), want, "{s:?}");
        }
    }

    /// Random lines, most shaped like events, with fields of every length and bytes that
    /// a word-at-a-time reading could mistake (below `0`, above `9`, with high bits set)
    /// right before the last field.
    #[test]
    fn parse_matches_the_plain_reading_of_the_rules() {
        let mut rng = Rng::new(11);
        let numbers: [&[u8]; 12] = [
            b"0",
            b"1",
            b"9",
            b"12",
            b"007",
            b"4567",
            b"99999999",
            b"123456789",
            b"18446744073709551615",
            b"18446744073709551616",
            b"",
            b"1x",
        ];
        let odd: [u8; 8] = [b' ', 0, 0x2f, 0x3a, 0x7f, 0xb5, 0xff, b'|'];
        for _ in 0..300_000 {
            let mut line = Vec::new();
            line.extend_from_slice(rng.pick(&numbers[..10]));
            line.push(b'|');
            line.extend_from_slice(rng.pick(&[&b"F"[..], b"U", b"P", b"S", b"B", b"X"]));
            for _ in 0..rng.below(4) {
                if rng.below(8) == 0 {
                    line.push(rng.pick(&odd));
                } else {
                    line.push(b'|');
                }
                line.extend_from_slice(rng.pick(&numbers));
            }
            assert_eq!(
                parse(&line),
                reference(&line),
                "{:?}",
                String::from_utf8_lossy(&line)
            );
        }
    }
}
