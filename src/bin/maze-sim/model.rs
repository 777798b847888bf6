//! The model: what each watched connection must receive, by the rules of SPEC.md.
//!
//! It replays the generated stream in seq order (the events that can matter to it: see
//! [`crate::feed::FeedTx::keep_only`]) on its own follow graph and hands each event to the
//! connections it notifies. It runs lazily, only as far as the verifier
//! needs, so its memory is the follow graph plus what clients have yet to receive.

use crate::feed::FeedRx;
use crate::gen::{Ev, Kind};
use hashbrown::HashMap;

/// Where the model's events come from: an iterator whose `None` may mean "not there
/// yet" (the source has not got that far) rather than the end.
pub trait EventSource: Iterator<Item = Ev> {
    /// After `next` gave `None`: whether the stream is over.
    fn ended(&self) -> bool {
        true
    }

    /// The latency stamp run of the last event given (see [`FeedRx::stamp_after`]).
    fn stamp_after(&self) -> u64 {
        0
    }
}

impl EventSource for FeedRx {
    fn ended(&self) -> bool {
        FeedRx::ended(self)
    }

    fn stamp_after(&self) -> u64 {
        FeedRx::stamp_after(self)
    }
}

impl EventSource for std::vec::IntoIter<Ev> {}

/// The follow graph plus who is watched, stepping through a stream of events.
pub struct Model<I> {
    events: I,
    /// user -> its watched slot + 1 (0: not watched): asked of every event.
    slots: ByUser<u32, { 1 << 22 }>,
    /// slot -> indices of the watched connections of its user, as they are added.
    conns: Vec<Vec<usize>>,
    /// The same, laid out flat once stepping starts: slot `s` has
    /// `flat[start[s]..start[s + 1]]`. A status update asks it of each follower, and a
    /// `Vec` per slot was a pointer to chase and miss each time.
    flat: Vec<usize>,
    start: Vec<u32>,
    /// user -> slots of that user's *watched* followers: only they can be notified, so
    /// the edges of users nobody watches are not kept (in the classic run, nine in ten).
    /// Few per user: a list, not a set.
    followers: ByUser<Vec<u32>, { 1 << 18 }>,
    /// Every watched connection index (broadcast).
    all: Vec<usize>,
    /// Seq of the last event stepped over (0 before the first).
    pub last_seq: u64,
    pub exhausted: bool,
}

impl<I: EventSource> Model<I> {
    pub fn new(events: I) -> Self {
        Model {
            events,
            slots: ByUser::default(),
            conns: Vec::new(),
            flat: Vec::new(),
            start: Vec::new(),
            followers: ByUser::default(),
            all: Vec::new(),
            last_seq: 0,
            exhausted: false,
        }
    }

    /// Connection `conn` of `user` receives notifications. Before the first step: the
    /// model keeps only watched users' follow edges.
    pub fn watch(&mut self, user: u64, conn: usize) {
        debug_assert_eq!(self.last_seq, 0, "watch before stepping");
        let slot = match self.slot(user) {
            Some(slot) => slot,
            None => {
                let slot = self.conns.len() as u32;
                *self.slots.entry(user) = slot + 1;
                self.conns.push(Vec::new());
                slot
            }
        };
        self.conns[slot as usize].push(conn);
        self.all.push(conn);
        self.start.clear();
    }

    /// Steps one event: fills `out` with the watched connections it notifies and returns
    /// it; `None` when no event is there yet, or the stream is over (`exhausted`).
    /// Omitted events (gaps) are stepped over without being applied: the server never
    /// sees them.
    pub fn step(&mut self, out: &mut Vec<usize>) -> Option<Ev> {
        out.clear();
        if self.start.is_empty() {
            self.lay_out();
        }
        let Some(ev) = self.events.next() else {
            self.exhausted = self.events.ended();
            return None;
        };
        self.last_seq = ev.seq;
        if ev.omitted {
            return Some(ev);
        }
        match ev.kind {
            Kind::Follow => {
                if let Some(slot) = self.slot(ev.from) {
                    let f = self.followers.entry(ev.to);
                    if !f.contains(&slot) {
                        f.push(slot);
                    }
                }
                self.conns_of(ev.to, out);
            }
            Kind::Unfollow => {
                if let Some(slot) = self.slot(ev.from) {
                    if let Some(f) = self.followers.get_mut(ev.to) {
                        f.retain(|&s| s != slot);
                    }
                }
            }
            Kind::Broadcast => out.extend_from_slice(&self.all),
            Kind::Private => self.conns_of(ev.to, out),
            Kind::Status => {
                if let Some(f) = self.followers.get(ev.from) {
                    for &slot in f {
                        self.slot_conns(slot, out);
                    }
                }
            }
            Kind::NoOp => {}
        }
        Some(ev)
    }

    /// The latency stamp run of the event last stepped: events with equal values are
    /// timed from one stamp.
    pub fn stamp_after(&self) -> u64 {
        self.events.stamp_after()
    }

    fn conns_of(&self, user: u64, out: &mut Vec<usize>) {
        if let Some(slot) = self.slot(user) {
            self.slot_conns(slot, out);
        }
    }

    /// Appends the watched connections of `slot`'s user, one at a time: extending by a
    /// slice called memcpy.
    #[inline]
    fn slot_conns(&self, slot: u32, out: &mut Vec<usize>) {
        let s = slot as usize;
        for &c in &self.flat[self.start[s] as usize..self.start[s + 1] as usize] {
            out.push(c);
        }
    }

    #[cold]
    fn lay_out(&mut self) {
        self.flat = self.conns.concat();
        self.start = std::iter::once(0)
            .chain(self.conns.iter().scan(0, |end, c| {
                *end += c.len() as u32;
                Some(*end)
            }))
            .collect();
    }

    #[inline]
    fn slot(&self, user: u64) -> Option<u32> {
        self.slots.get(user).and_then(|s| s.checked_sub(1))
    }
}

/// Per user id: a table for ids below `DENSE` (every generated id, unless users are
/// counted in hundreds of thousands or millions), a map above. Each is asked of most
/// events, and a map's lookups missed the cache.
struct ByUser<T, const DENSE: u64> {
    dense: Vec<T>,
    sparse: HashMap<u64, T>,
}

impl<T, const DENSE: u64> Default for ByUser<T, DENSE> {
    fn default() -> Self {
        ByUser {
            dense: Vec::new(),
            sparse: HashMap::new(),
        }
    }
}

impl<T: Default, const DENSE: u64> ByUser<T, DENSE> {
    #[inline]
    fn get(&self, user: u64) -> Option<&T> {
        match self.dense.get(user as usize) {
            Some(v) => Some(v),
            None if user < DENSE || self.sparse.is_empty() => None,
            None => self.sparse.get(&user),
        }
    }

    fn get_mut(&mut self, user: u64) -> Option<&mut T> {
        match self.dense.get_mut(user as usize) {
            Some(v) => Some(v),
            None if user < DENSE => None,
            None => self.sparse.get_mut(&user),
        }
    }

    /// The value of `user`, made (default) if there was none.
    fn entry(&mut self, user: u64) -> &mut T {
        if user >= DENSE {
            return self.sparse.entry(user).or_default();
        }
        let i = user as usize;
        if self.dense.len() <= i {
            self.dense.resize_with(i + 1, T::default);
        }
        &mut self.dense[i]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ev(seq: u64, kind: Kind, from: u64, to: u64) -> Ev {
        Ev::new(seq, kind, from, to)
    }

    /// Runs the model over `events` with connections `conns` (user per index) and returns
    /// each connection's received seqs.
    fn run(events: Vec<Ev>, conns: &[u64]) -> Vec<Vec<u64>> {
        let watched: Vec<(u64, usize)> = conns.iter().copied().zip(0..).collect();
        let mut m = Model::new(events.into_iter());
        let got = received(&mut m, &watched);
        assert!(m.exhausted);
        got
    }

    /// Watches each (user, connection) pair, steps `model` to the end and returns each
    /// connection's received seqs.
    pub(crate) fn received<I: EventSource>(
        model: &mut Model<I>,
        watched: &[(u64, usize)],
    ) -> Vec<Vec<u64>> {
        for &(u, c) in watched {
            model.watch(u, c);
        }
        let mut got = vec![Vec::new(); watched.len()];
        let mut out = Vec::new();
        while let Some(e) = model.step(&mut out) {
            for &c in &out {
                got[c].push(e.seq);
            }
        }
        got
    }

    #[test]
    fn the_spec_example_by_hand() {
        // Users 1, 2 and 3 connected; user 4 is not.
        let events = vec![
            ev(1, Kind::Follow, 1, 2),   // 2 notified
            ev(2, Kind::Follow, 3, 2),   // 2 notified
            ev(3, Kind::Follow, 4, 2),   // 2 notified (4 not connected)
            ev(4, Kind::Status, 2, 0),   // followers 1, 3 (and 4, not connected)
            ev(5, Kind::Unfollow, 1, 2), // nobody
            ev(6, Kind::Status, 2, 0),   // 3 only
            ev(7, Kind::Private, 2, 1),  // 1
            ev(8, Kind::Broadcast, 0, 0),
            ev(9, Kind::NoOp, 1, 2),    // nobody
            ev(10, Kind::Follow, 1, 2), // 2
            ev(11, Kind::Follow, 1, 2), // 2 again (a set, but still notified)
            ev(12, Kind::Unfollow, 1, 2),
            ev(13, Kind::Status, 2, 0), // 3 only: one unfollow undid both follows
        ];
        let got = run(events, &[1, 2, 3]);
        assert_eq!(got[0], vec![4, 7, 8]);
        assert_eq!(got[1], vec![1, 2, 3, 8, 10, 11]);
        assert_eq!(got[2], vec![4, 6, 8, 13]);
    }

    #[test]
    fn two_connections_of_one_user_get_the_same() {
        let events = vec![ev(1, Kind::Private, 9, 5), ev(2, Kind::Broadcast, 0, 0)];
        let got = run(events, &[5, 5, 6]);
        assert_eq!(got[0], vec![1, 2]);
        assert_eq!(got[1], vec![1, 2]);
        assert_eq!(got[2], vec![2]);
    }

    #[test]
    fn users_with_huge_ids_are_watched_too() {
        let big = u64::MAX - 3;
        let events = vec![
            ev(1, Kind::Follow, big, 5),
            ev(2, Kind::Status, 5, 0),
            ev(3, Kind::Private, 5, big),
            ev(4, Kind::Private, 5, 4_194_304),
            ev(5, Kind::Private, 5, 7),
        ];
        let got = run(events, &[big, 7, 4_194_304]);
        // Followers above the table too.
        let events = vec![ev(1, Kind::Follow, 7, big), ev(2, Kind::Status, big, 0)];
        assert_eq!(run(events, &[7])[0], vec![2]);
        assert_eq!(got[0], vec![2, 3]);
        assert_eq!(got[1], vec![5]);
        assert_eq!(got[2], vec![4]);
    }

    #[test]
    fn omitted_events_are_not_applied() {
        let mut follow = ev(1, Kind::Follow, 1, 2);
        follow.omitted = true;
        let events = vec![
            follow,
            ev(2, Kind::Status, 2, 0),
            ev(3, Kind::Private, 0, 2),
        ];
        let got = run(events, &[1, 2]);
        assert_eq!(
            got[0],
            Vec::<u64>::new(),
            "the follow never reached the server"
        );
        assert_eq!(got[1], vec![3]);
    }
}
