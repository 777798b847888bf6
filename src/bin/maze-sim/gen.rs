//! The event generator: a deterministic stream of events in seq order, from a seed.
//!
//! The event source runs it and hands each block of events to the verifier's model
//! (feed.rs) before writing it: generation streams, and 100M events cost no more memory
//! than 1,000. Two generators with the same settings yield the same stream (the tests
//! rely on it).
//!
//! The mix (shares of events, before scenario extras):
//! broadcast 0.5% (`broadcastPermille`), and of the rest follow 20.1%, unfollow 8%,
//! private message 38.2%, status update 33.7%.
//! Follow targets and status authors are skewed toward low ids (`id = users * r^3`), so a
//! few users are popular. The follow graph is bounded: at `4 * users` edges a follow
//! becomes an unfollow of a random existing edge, so graph size (in the server and
//! here) stays flat however long the run.

use follower_maze::event::put_back;
// hashbrown's default hasher: SipHash here cost more than everything else together.
use hashbrown::HashSet;

/// The generator's random numbers (shared with the tests).
pub use follower_maze::rng::Rng;

/// What an event is (the server's own tag type; `NoOp` events have a valid seq and a
/// malformed rest).
pub use follower_maze::event::Kind;

/// One generated event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ev {
    pub seq: u64,
    pub kind: Kind,
    pub from: u64,
    pub to: u64,
    /// Never sent (a gap the server must skip); the model must not apply it either.
    pub omitted: bool,
}

impl Ev {
    /// An event that is sent (not part of a gap).
    pub fn new(seq: u64, kind: Kind, from: u64, to: u64) -> Ev {
        Ev {
            seq,
            kind,
            from,
            to,
            omitted: false,
        }
    }

    /// The payload line plus `\r\n`, appended to `out`.
    #[cfg(test)]
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut line = Line::default();
        line.render(self);
        line.append_to(out);
    }

    /// Renders the payload line plus `\r\n` as the tail of `line`, from the end back, so
    /// every number's digits land in place; returns where the line starts. The source
    /// and the verifier render every line, and pushing piece by piece onto a `Vec` cost
    /// three times as much.
    pub fn render(&self, line: &mut [u8; MAX_LINE]) -> usize {
        // Tags are written 4 bytes at a time, ending where they end (a fixed-size copy,
        // not a call to memcpy); the seq's digits overwrite what is in front of a short one.
        let (tag, len, ids): (&[u8; 4], usize, usize) = match self.kind {
            Kind::Follow => (b"  |F", 2, 2),
            Kind::Unfollow => (b"  |U", 2, 2),
            Kind::Broadcast => (b"  |B", 2, 0),
            Kind::Private => (b"  |P", 2, 2),
            Kind::Status => (b"  |S", 2, 1),
            // Malformed in one of three ways, chosen by seq: unknown type, missing field,
            // bad id. All must hold their place and notify no one.
            Kind::NoOp => match self.seq % 3 {
                0 => (b"  |X", 2, 2),
                1 => (b"  |F", 2, 1),
                _ => (b"|P|x", 4, 2),
            },
        };
        let mut i = MAX_LINE - 2;
        line[i..].copy_from_slice(b"\r\n");
        if ids == 2 {
            i = put_back(line, i, self.to);
            i -= 1;
            line[i] = b'|';
        }
        if ids >= 1 {
            i = put_back(line, i, self.from);
            // The bad-id form glues its `x` to the first id.
            if len == 2 {
                i -= 1;
                line[i] = b'|';
            }
        }
        line[i - 4..i].copy_from_slice(tag);
        put_back(line, i - len, self.seq)
    }
}

/// The longest line: seq, `|P|x`, two ids, separators and `\r\n`.
pub const MAX_LINE: usize = 20 + 4 + 20 + 1 + 20 + 2;

/// Bytes after a [`Line`], copied along with it.
const SLACK: usize = 32;

/// A rendered line, `buf[start..MAX_LINE]`, and [`SLACK`] bytes after it: a line is
/// appended 32 bytes at a time (one or two fixed-size copies, then the length cut back),
/// which cost less than a call to `memcpy` per line. The source appends every line it
/// writes, the verifier every line to every client it notifies. Made once and rendered
/// into again and again (not zeroed for every line).
pub struct Line {
    buf: [u8; MAX_LINE + SLACK],
    start: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; MAX_LINE + SLACK],
            start: MAX_LINE,
        }
    }
}

impl Line {
    /// Makes this the line of `ev`.
    #[inline]
    pub fn render(&mut self, ev: &Ev) {
        let head: &mut [u8; MAX_LINE] = (&mut self.buf[..MAX_LINE]).try_into().unwrap();
        self.start = ev.render(head);
    }

    /// Appends the line to `out`.
    #[inline(always)]
    pub fn append_to(&self, out: &mut Vec<u8>) {
        let (start, end) = (self.start, out.len() + MAX_LINE - self.start);
        if start >= MAX_LINE - SLACK {
            out.extend_from_slice(&self.buf[start..][..SLACK]);
        } else if start >= MAX_LINE - 2 * SLACK {
            out.extend_from_slice(&self.buf[start..][..2 * SLACK]);
        } else {
            out.extend_from_slice(&self.buf[start..MAX_LINE]);
        }
        out.truncate(end);
    }

    /// A line of the given bytes (for tests).
    #[cfg(test)]
    pub fn of(bytes: &[u8]) -> Line {
        let mut line = Line {
            start: MAX_LINE - bytes.len(),
            ..Line::default()
        };
        line.buf[line.start..MAX_LINE].copy_from_slice(bytes);
        line
    }
}

/// The seq a line starts with (the digits before its first `|`), if it has one.
pub fn leading_seq(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|&b| b == b'|')?;
    std::str::from_utf8(&line[..end]).ok()?.parse().ok()
}

/// Generator settings. Two generators with equal settings yield equal streams.
#[derive(Clone, Debug)]
pub struct GenConfig {
    pub total: u64,
    pub users: u64,
    pub seed: u64,
    /// One event in this many is a no-op line (0: none).
    pub noop_every: u64,
    /// Seqs never sent: each listed seq starts a gap of `gap_len` seqs.
    pub gaps: Vec<u64>,
    pub gap_len: u64,
    /// Share of events (percent) that are private messages to `hot_user`.
    pub hot_share: u64,
    pub hot_user: u64,
    /// Broadcasts per thousand events.
    pub broadcast_permille: u64,
}

impl GenConfig {
    /// `users` is clamped to 1..=u32::MAX.
    pub fn new(total: u64, users: u64, seed: u64) -> GenConfig {
        GenConfig {
            total,
            users: users.clamp(1, u64::from(u32::MAX)),
            seed,
            noop_every: 0,
            gaps: Vec::new(),
            gap_len: 0,
            hot_share: 0,
            hot_user: 0,
            broadcast_permille: 5,
        }
    }
}

/// Users at most this many: the edge set is a bit per (from, to) pair (at most 512 KiB).
const EDGE_BITS_USERS: u64 = 2048;

/// The generator's edges as a set of `from << 32 | to`: a bit per pair while users are
/// few, a hash set beyond. A hash set's lookup, on every follow and unfollow, read its
/// control bytes and then its slot, each a miss, and hashed first.
enum EdgeSet {
    Bits {
        bits: Vec<u64>,
        users: u64,
        len: usize,
    },
    Hash(HashSet<u64>),
}

impl EdgeSet {
    fn new(users: u64) -> EdgeSet {
        match users <= EDGE_BITS_USERS {
            true => EdgeSet::Bits {
                bits: vec![0; ((users + 1) * (users + 1)).div_ceil(64) as usize],
                users,
                len: 0,
            },
            false => EdgeSet::Hash(HashSet::new()),
        }
    }

    /// The bit of `edge`: ids are in `1..=users`.
    #[inline]
    fn bit(edge: u64, users: u64) -> (usize, u64) {
        let i = (edge >> 32) * (users + 1) + (edge & u64::from(u32::MAX));
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Adds `edge`; whether it was new.
    #[inline]
    fn insert(&mut self, edge: u64) -> bool {
        match self {
            EdgeSet::Bits { bits, users, len } => {
                let (w, b) = Self::bit(edge, *users);
                let new = bits[w] & b == 0;
                bits[w] |= b;
                *len += usize::from(new);
                new
            }
            EdgeSet::Hash(set) => set.insert(edge),
        }
    }

    #[inline]
    fn remove(&mut self, edge: u64) {
        match self {
            EdgeSet::Bits { bits, users, len } => {
                let (w, b) = Self::bit(edge, *users);
                *len -= usize::from(bits[w] & b != 0);
                bits[w] &= !b;
            }
            EdgeSet::Hash(set) => {
                set.remove(&edge);
            }
        }
    }

    #[cfg(test)]
    fn contains(&self, edge: u64) -> bool {
        match self {
            EdgeSet::Bits { bits, users, .. } => {
                let (w, b) = Self::bit(edge, *users);
                bits[w] & b != 0
            }
            EdgeSet::Hash(set) => set.contains(&edge),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            EdgeSet::Bits { len, .. } => *len,
            EdgeSet::Hash(set) => set.len(),
        }
    }
}

/// The stream itself: an iterator of events in seq order.
pub struct Gen {
    cfg: GenConfig,
    rng: Rng,
    seq: u64,
    /// The follow graph's edges, for picking one at random, and as a set, for not
    /// adding one twice: `from << 32 | to` (ids fit 32 bits: `GenConfig::new`), half the
    /// bytes of a pair, and the set is looked up at random on every follow.
    edges: Vec<u64>,
    edge_set: EdgeSet,
}

impl Gen {
    pub fn new(cfg: GenConfig) -> Gen {
        Gen {
            rng: Rng::new(cfg.seed ^ 0x6d61_7a65),
            edge_set: EdgeSet::new(cfg.users),
            cfg,
            seq: 0,
            edges: Vec::new(),
        }
    }

    fn uniform_user(&mut self) -> u64 {
        1 + self.rng.below(self.cfg.users)
    }

    fn popular_user(&mut self) -> u64 {
        let r = self.rng.unit();
        let id = ((self.cfg.users as f64) * r * r * r) as u64;
        // Below `users` but for rounding: a division only then (one per follow and
        // status update cost a tenth of the source's time).
        1 + if id < self.cfg.users {
            id
        } else {
            id % self.cfg.users
        }
    }

    fn unfollow_some_edge(&mut self) -> Option<(u64, u64)> {
        if self.edges.is_empty() {
            return None;
        }
        let i = self.rng.below(self.edges.len() as u64) as usize;
        let edge = self.edges.swap_remove(i);
        self.edge_set.remove(edge);
        Some((edge >> 32, edge & u64::from(u32::MAX)))
    }

    fn is_omitted(&self, seq: u64) -> bool {
        self.cfg
            .gaps
            .iter()
            .any(|&g| seq >= g && seq < g + self.cfg.gap_len)
    }
}

impl Iterator for Gen {
    type Item = Ev;

    fn next(&mut self) -> Option<Ev> {
        if self.seq >= self.cfg.total {
            return None;
        }
        self.seq += 1;
        let seq = self.seq;
        let omitted = self.is_omitted(seq);
        let ev = |kind, from, to| {
            Some(Ev {
                omitted,
                ..Ev::new(seq, kind, from, to)
            })
        };
        if self.cfg.noop_every > 0 && seq.is_multiple_of(self.cfg.noop_every) {
            let (a, b) = (self.uniform_user(), self.uniform_user());
            return ev(Kind::NoOp, a, b);
        }
        if self.cfg.hot_share > 0 && self.rng.below(100) < self.cfg.hot_share {
            let from = self.uniform_user();
            return ev(Kind::Private, from, self.cfg.hot_user);
        }
        if self.rng.below(1000) < self.cfg.broadcast_permille {
            return ev(Kind::Broadcast, 0, 0);
        }
        match self.rng.below(995) {
            0..=199 => {
                let cap = (self.cfg.users * 4) as usize;
                if self.edges.len() >= cap {
                    if let Some((a, b)) = self.unfollow_some_edge() {
                        return ev(Kind::Unfollow, a, b);
                    }
                }
                let (from, to) = (self.uniform_user(), self.popular_user());
                let edge = from << 32 | to;
                if from != to && self.edge_set.insert(edge) {
                    self.edges.push(edge);
                }
                ev(Kind::Follow, from, to)
            }
            200..=279 => match self.unfollow_some_edge() {
                Some((a, b)) => ev(Kind::Unfollow, a, b),
                None => {
                    let (a, b) = (self.uniform_user(), self.uniform_user());
                    ev(Kind::Unfollow, a, b)
                }
            },
            280..=659 => {
                let (a, b) = (self.uniform_user(), self.uniform_user());
                ev(Kind::Private, a, b)
            }
            _ => {
                let from = self.popular_user();
                ev(Kind::Status, from, 0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(cfg: GenConfig) -> Vec<String> {
        Gen::new(cfg)
            .map(|e| {
                let mut v = Vec::new();
                e.write(&mut v);
                String::from_utf8(v).unwrap()
            })
            .collect()
    }

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let a = lines(GenConfig::new(5000, 100, 1));
        assert_eq!(a, lines(GenConfig::new(5000, 100, 1)));
        assert_ne!(a, lines(GenConfig::new(5000, 100, 2)));
        assert_eq!(a.len(), 5000);
    }

    #[test]
    fn the_edge_bits_give_the_stream_a_hash_set_gives() {
        let cfg = GenConfig::new(300_000, 60, 4);
        let mut hashed = Gen::new(cfg.clone());
        hashed.edge_set = EdgeSet::Hash(HashSet::new());
        assert!(matches!(
            Gen::new(cfg.clone()).edge_set,
            EdgeSet::Bits { .. }
        ));
        assert!(Gen::new(cfg).eq(hashed));
    }

    #[test]
    fn seqs_run_from_one_in_order_and_ids_in_range() {
        for (i, e) in Gen::new(GenConfig::new(20_000, 50, 7)).enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
            match e.kind {
                Kind::Broadcast => {}
                Kind::Status => assert!((1..=50).contains(&e.from)),
                _ => assert!((1..=50).contains(&e.from) && (1..=50).contains(&e.to)),
            }
        }
    }

    #[test]
    fn the_mix_has_every_kind_and_the_graph_stays_bounded() {
        let mut g = Gen::new(GenConfig::new(200_000, 10, 3));
        let mut counts = hashbrown::HashMap::new();
        for e in g.by_ref() {
            *counts.entry(e.kind).or_insert(0u64) += 1;
        }
        for k in [
            Kind::Follow,
            Kind::Unfollow,
            Kind::Private,
            Kind::Status,
            Kind::Broadcast,
        ] {
            assert!(
                counts.get(&k).copied().unwrap_or(0) > 1000,
                "{k:?}: {counts:?}"
            );
        }
        assert!(g.edges.len() <= 40);
        assert_eq!(g.edges.len(), g.edge_set.len());
        // Both kinds of set hold what the edge list holds.
        for users in [10, 1 << 20] {
            let mut g = Gen::new(GenConfig::new(100_000, users, 3));
            let mut all = HashSet::new();
            for e in g.by_ref() {
                if e.kind == Kind::Follow && e.from != e.to {
                    all.insert(e.from << 32 | e.to);
                }
            }
            for &e in &g.edges {
                assert!(g.edge_set.contains(e) && all.contains(&e));
            }
            assert_eq!(g.edges.len(), g.edge_set.len());
        }
    }

    #[test]
    fn gaps_noops_and_hot_user() {
        let mut cfg = GenConfig::new(1000, 10, 1);
        cfg.gaps = vec![100, 500];
        cfg.gap_len = 3;
        cfg.noop_every = 10;
        cfg.hot_share = 50;
        cfg.hot_user = 4;
        let evs: Vec<Ev> = Gen::new(cfg).collect();
        let omitted: Vec<u64> = evs.iter().filter(|e| e.omitted).map(|e| e.seq).collect();
        assert_eq!(omitted, vec![100, 101, 102, 500, 501, 502]);
        assert!(evs
            .iter()
            .filter(|e| e.seq % 10 == 0)
            .all(|e| e.kind == Kind::NoOp));
        let hot = evs
            .iter()
            .filter(|e| e.kind == Kind::Private && e.to == 4)
            .count();
        assert!(hot > 300, "{hot}");
    }

    #[test]
    fn a_lines_leading_seq() {
        assert_eq!(leading_seq(b"42|B\r\n"), Some(42));
        assert_eq!(leading_seq(b"7|P|1|2"), Some(7));
        for bad in [
            &b"42\r\n"[..],
            b"|B",
            b"x|B",
            b"-1|B",
            b"18446744073709551616|B",
        ] {
            assert_eq!(leading_seq(bad), None);
        }
    }

    #[test]
    fn rendering() {
        let ev = |kind, from, to| Ev::new(9, kind, from, to);
        let s = |e: Ev| {
            let mut v = Vec::new();
            e.write(&mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(s(ev(Kind::Follow, 1, 2)), "9|F|1|2\r\n");
        assert_eq!(s(ev(Kind::Unfollow, 1, 2)), "9|U|1|2\r\n");
        assert_eq!(s(ev(Kind::Broadcast, 0, 0)), "9|B\r\n");
        assert_eq!(s(ev(Kind::Private, 1, 2)), "9|P|1|2\r\n");
        assert_eq!(s(ev(Kind::Status, 1, 0)), "9|S|1\r\n");
        assert_eq!(s(ev(Kind::NoOp, 1, 2)), "9|X|1|2\r\n");
        let noop = |seq| s(Ev::new(seq, Kind::NoOp, 1, 2));
        assert_eq!(noop(10), "10|F|1\r\n");
        assert_eq!(noop(11), "11|P|x1|2\r\n");
        assert_eq!(
            s(ev(Kind::Private, 0, u64::MAX)),
            "9|P|0|18446744073709551615\r\n"
        );
        for v in [
            1u64,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            12345,
            987654321,
            99_999_999,
            100_000_000,
            100_000_001,
            1_000_000_007,
            10_000_000_000_000_000,
            u64::MAX - 1,
        ] {
            let e = Ev::new(v, Kind::Private, v, v);
            assert_eq!(s(e), format!("{v}|P|{v}|{v}\r\n"));
        }
        // The longest line there is fits MAX_LINE.
        let m = u64::MAX - 1; // m % 3 == 2: the glued bad-id form
        let longest = s(Ev::new(m, Kind::NoOp, m, m));
        assert_eq!(longest, format!("{m}|P|x{m}|{m}\r\n"));
        assert_eq!(longest.len(), MAX_LINE);
    }
}
