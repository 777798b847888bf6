//! The router: in-order events in from the window, recipient connections out to the
//! server, which appends the notification to each one's write buffer.
//!
//! It owns the follow graph (kept for every user, connected or not) and the registry of
//! identified connections per user. It never touches a socket.

use crate::event::{Event, Kind};
use hashbrown::{HashMap, HashSet};
use slab::Slab;
use std::collections::VecDeque;

/// Connection key, as in the server's slab. The server disconnects a connection here
/// before its key can be reused.
pub type ConnId = usize;

/// Follow graph plus user -> connections registry.
///
/// A status update is the costly rule: its author may have thousands of followers, few of
/// them connected. So besides the graph (`following`, kept for every user) the router
/// keeps, per author, its *connected* followers, updated on follow and unfollow and when
/// a user's first connection arrives or its last one leaves. A connected user has a slot
/// in `online`, its connections in one list there; the index holds those slots, so a
/// status update costs one hash lookup, then one plain index per connected follower. The
/// index never holds more entries than the graph has edges, and a connection that comes
/// or goes while its user has others costs O(1), however many users that user follows.
/// No key outlives what it holds: an emptied followee set or index set leaves its map.
///
/// (One record per user, all three in one entry, saves a follow two of its four lookups
/// but doubles every author's entry and misses the cache more: docs/performance.md.)
///
/// A user's first connection or last disconnect costs O(its followees) in the index. For
/// a user following more than `slice` users that work is a job done `slice` entries per
/// loop turn ([`work`](Self::work)); while any job is pending, [`indexing`](Self::indexing)
/// is true and the server routes nothing (it holds the pipeline as for backpressure), so
/// no event sees a half-built index.
pub struct Router {
    /// user -> the users they follow.
    following: HashMap<u64, UserSet>,
    /// author -> the `online` slots of the author's connected followers.
    connected_followers: HashMap<u64, UserSet>,
    /// user -> its slot in `online`, for users with an identified connection (or with an
    /// index job still pending).
    slot_of: HashMap<u64, usize>,
    online: Slab<Online>,
    /// conn -> its index in its user's list, so it leaves in O(1).
    positions: Vec<u32>,
    /// Index jobs for heavy users, in order.
    jobs: VecDeque<Job>,
    /// Index entries per job step; users following more get a job.
    slice: usize,
}

/// A connected user: its identified connections (usually one). The slot is freed when the
/// last one leaves and no index job refers to it any more.
struct Online {
    user: u64,
    conns: Conns,
    jobs: u32,
}

/// A user's connections, the first one inline: a user almost always has exactly one, and
/// a recipient lookup then reads the slot and nothing behind a second pointer.
struct Conns {
    /// `NONE` when there are none.
    first: ConnId,
    more: Vec<ConnId>,
}

const NONE: ConnId = ConnId::MAX;

impl Conns {
    fn new() -> Self {
        Conns {
            first: NONE,
            more: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first != NONE) + self.more.len()
    }

    fn is_empty(&self) -> bool {
        self.first == NONE
    }

    fn get(&self, i: usize) -> Option<ConnId> {
        match i {
            0 => Some(self.first).filter(|&c| c != NONE),
            _ => self.more.get(i - 1).copied(),
        }
    }

    /// Appends `conn`; returns its index.
    fn push(&mut self, conn: ConnId) -> usize {
        if self.first == NONE {
            self.first = conn;
            return 0;
        }
        self.more.push(conn);
        self.more.len()
    }

    /// Removes the one at `i` (< len), moving the last into its place; returns the moved
    /// one, if any moved.
    fn swap_remove(&mut self, i: usize) -> Option<ConnId> {
        let Some(last) = self.more.pop() else {
            self.first = NONE;
            return None;
        };
        if i == self.more.len() + 1 {
            return None;
        }
        match i {
            0 => self.first = last,
            _ => self.more[i - 1] = last,
        }
        Some(last)
    }

    /// Appends them all to `out`.
    #[inline(always)]
    fn extend_into(&self, out: &mut Vec<ConnId>) {
        if self.first != NONE {
            out.push(self.first);
            if !self.more.is_empty() {
                out.extend_from_slice(&self.more);
            }
        }
    }
}

/// Adding a slot to, or removing it from, the index sets of the authors a user follows.
struct Job {
    slot: usize,
    add: bool,
    /// The followees when the job started (the graph does not change while jobs are
    /// pending: nothing is routed), and how many were done.
    authors: Vec<u64>,
    done: usize,
}

/// Index entries done per loop turn at most, and the followee count above which a user's
/// connect or disconnect is done in such steps.
pub const INDEX_SLICE: usize = 8 * 1024;

impl Default for Router {
    fn default() -> Self {
        Router::with_slice(INDEX_SLICE)
    }
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// A router that indexes `slice` entries per step (small in tests).
    pub fn with_slice(slice: usize) -> Self {
        Router {
            following: HashMap::new(),
            connected_followers: HashMap::new(),
            slot_of: HashMap::new(),
            online: Slab::new(),
            positions: Vec::new(),
            jobs: VecDeque::new(),
            slice: slice.max(1),
        }
    }

    /// Index jobs are pending: route nothing until [`work`](Self::work) has done them.
    pub fn indexing(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Does up to one slice of pending index work.
    pub fn work(&mut self) {
        let mut budget = self.slice;
        while budget > 0 {
            let Some(job) = self.jobs.front_mut() else {
                return;
            };
            let end = (job.done + budget).min(job.authors.len());
            for &a in &job.authors[job.done..end] {
                index(&mut self.connected_followers, a, job.slot, job.add);
            }
            budget -= end - job.done;
            job.done = end;
            if job.done == job.authors.len() {
                let slot = job.slot;
                self.jobs.pop_front();
                self.online[slot].jobs -= 1;
                self.release_if_unused(slot);
            }
        }
    }

    /// Adds (or removes) `slot` to (from) the index sets of `user`'s followees: at once
    /// for a light user, as a job for a heavy one or one with a job already pending.
    fn index_user(&mut self, user: u64, slot: usize, add: bool) {
        let Some(authors) = self.following.get(&user) else {
            return;
        };
        if authors.len() <= self.slice && self.online[slot].jobs == 0 {
            authors.for_each(|a| index(&mut self.connected_followers, a, slot, add));
            return;
        }
        let mut list = Vec::with_capacity(authors.len());
        authors.for_each(|a| list.push(a));
        self.online[slot].jobs += 1;
        self.jobs.push_back(Job {
            slot,
            add,
            authors: list,
            done: 0,
        });
    }

    /// Frees `slot` if its user has no connection and no job refers to it.
    fn release_if_unused(&mut self, slot: usize) {
        let online = &self.online[slot];
        if online.conns.is_empty() && online.jobs == 0 {
            self.slot_of.remove(&online.user);
            self.online.remove(slot);
        }
    }

    /// Registers `conn` as a connection of `user`; it receives events routed from now on.
    pub fn connect(&mut self, user: u64, conn: ConnId) {
        // Most lookups here miss (a private message or a follow names any user; few are
        // connected): kept at most half full, a miss ends at the first group of buckets
        // instead of probing on through full ones, its branches mispredicted.
        let (len, room) = (self.slot_of.len(), 2 * (self.slot_of.len() + 1));
        if self.slot_of.capacity() < room {
            self.slot_of.reserve(room - len);
        }
        let online = &mut self.online;
        let slot = *self.slot_of.entry(user).or_insert_with(|| {
            online.insert(Online {
                user,
                conns: Conns::new(),
                jobs: 0,
            })
        });
        let conns = &mut self.online[slot].conns;
        if conn >= self.positions.len() {
            self.positions.resize(conn + 1, 0);
        }
        let i = conns.push(conn);
        self.positions[conn] = i as u32;
        if i == 0 {
            self.index_user(user, slot, true);
        }
    }

    /// Forgets `conn`. Unknown pairs are ignored.
    pub fn disconnect(&mut self, user: u64, conn: ConnId) {
        let Some(&slot) = self.slot_of.get(&user) else {
            return;
        };
        let conns = &mut self.online[slot].conns;
        let Some(&i) = self.positions.get(conn) else {
            return;
        };
        let i = i as usize;
        if conns.get(i) != Some(conn) {
            return;
        }
        if let Some(moved) = conns.swap_remove(i) {
            self.positions[moved] = i as u32;
        }
        if !conns.is_empty() {
            return;
        }
        self.index_user(user, slot, false);
        self.release_if_unused(slot);
    }

    /// Identified connections now.
    pub fn connections(&self) -> usize {
        self.online.iter().map(|(_, o)| o.conns.len()).sum()
    }

    /// Follow edges now.
    pub fn follow_edges(&self) -> usize {
        self.following.values().map(UserSet::len).sum()
    }

    /// Applies `ev` to the follow graph and appends the connections to notify to `out`
    /// (each connection at most once).
    pub fn apply(&mut self, ev: &Event, out: &mut Vec<ConnId>) {
        match ev.kind {
            Kind::Follow => {
                let added = self.following.entry(ev.from).or_default().insert(ev.to);
                if let (true, Some(&slot)) = (added, self.slot_of.get(&ev.from)) {
                    index(&mut self.connected_followers, ev.to, slot, true);
                }
                self.user_conns(ev.to, out);
            }
            Kind::Unfollow => {
                let Some(followees) = self.following.get_mut(&ev.from) else {
                    return;
                };
                let removed = followees.remove(ev.to);
                if followees.len() == 0 {
                    // No key outlives what it holds: ids seen once cost nothing after.
                    self.following.remove(&ev.from);
                }
                if let (true, Some(&slot)) = (removed, self.slot_of.get(&ev.from)) {
                    index(&mut self.connected_followers, ev.to, slot, false);
                }
            }
            Kind::Broadcast => {
                for (_, o) in self.online.iter() {
                    o.conns.extend_into(out);
                }
            }
            Kind::Private => self.user_conns(ev.to, out),
            Kind::Status => {
                if let Some(followers) = self.connected_followers.get(&ev.from) {
                    followers.for_each(|slot| self.online[slot as usize].conns.extend_into(out));
                }
            }
            Kind::NoOp => {}
        }
    }

    #[inline]
    fn user_conns(&self, user: u64, out: &mut Vec<ConnId>) {
        if let Some(&slot) = self.slot_of.get(&user) {
            self.online[slot].conns.extend_into(out);
        }
    }

    /// Session end: forget every follow relation (connections stay). Not while indexing.
    pub fn clear_follows(&mut self) {
        debug_assert!(self.jobs.is_empty());
        self.following = HashMap::new();
        self.connected_followers = HashMap::new();
    }
}

/// Adds `slot` to (or removes it from) `author`'s set of connected followers.
#[inline]
fn index(sets: &mut HashMap<u64, UserSet>, author: u64, slot: usize, add: bool) {
    if add {
        sets.entry(author).or_default().insert(slot as u64);
    } else if let Some(set) = sets.get_mut(&author) {
        set.remove(slot as u64);
        if set.len() == 0 {
            sets.remove(&author);
        }
    }
}

/// A set of ids (users, or `online` slots): a plain list while short (most users follow a
/// few, and a list costs a third of a hash set's memory), a hash set once past `FEW`, so
/// that a user following thousands, or an author with thousands of connected followers,
/// costs no linear scans.
enum UserSet {
    Few(Vec<u64>),
    /// Boxed: rare, and unboxed it would make every map entry 16 bytes larger.
    Many(Box<HashSet<u64>>),
}

/// 64, not 32: a status update walks its author's set, and a list walks with one branch
/// per element where a hash set scans groups of buckets (the classic stream's most
/// followed author has about 40 connected followers: 500k events, 3.6M fewer
/// instructions and 72k fewer mispredicted branches). A list insert or removal scans at
/// most 64 ids (512 bytes).
const FEW: usize = 64;

impl Default for UserSet {
    fn default() -> Self {
        UserSet::Few(Vec::new())
    }
}

impl UserSet {
    /// Adds `id`; false if it was there already.
    fn insert(&mut self, id: u64) -> bool {
        match self {
            UserSet::Few(list) if list.contains(&id) => false,
            UserSet::Few(list) if list.len() < FEW => {
                list.push(id);
                true
            }
            UserSet::Few(list) => {
                let mut set: HashSet<u64> = list.drain(..).collect();
                set.insert(id);
                *self = UserSet::Many(Box::new(set));
                true
            }
            UserSet::Many(set) => set.insert(id),
        }
    }

    /// Removes `id`; false if it was not there.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            UserSet::Few(list) => match list.iter().position(|&x| x == id) {
                Some(i) => {
                    list.swap_remove(i);
                    true
                }
                None => false,
            },
            UserSet::Many(set) => set.remove(&id),
        }
    }

    fn for_each(&self, mut f: impl FnMut(u64)) {
        match self {
            UserSet::Few(list) => list.iter().for_each(|&a| f(a)),
            UserSet::Many(set) => set.iter().for_each(|&a| f(a)),
        }
    }

    fn len(&self) -> usize {
        match self {
            UserSet::Few(list) => list.len(),
            UserSet::Many(set) => set.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, from: u64, to: u64) -> Event {
        Event {
            seq: 1,
            kind,
            from,
            to,
            canonical: true,
        }
    }

    fn route(r: &mut Router, e: Event) -> Vec<ConnId> {
        let mut out = Vec::new();
        r.apply(&e, &mut out);
        out.sort();
        out
    }

    #[test]
    fn follow_notifies_only_to_and_is_a_set() {
        let mut r = Router::new();
        r.connect(50, 500);
        r.connect(60, 600);
        assert_eq!(route(&mut r, ev(Kind::Follow, 60, 50)), vec![500]);
        assert_eq!(route(&mut r, ev(Kind::Follow, 60, 50)), vec![500]);
        assert_eq!(r.follow_edges(), 1);
        // One unfollow undoes a double follow.
        assert_eq!(
            route(&mut r, ev(Kind::Unfollow, 60, 50)),
            Vec::<ConnId>::new()
        );
        assert_eq!(route(&mut r, ev(Kind::Status, 50, 0)), Vec::<ConnId>::new());
    }

    #[test]
    fn unfollow_of_a_non_follower_changes_nothing() {
        let mut r = Router::new();
        r.connect(1, 10);
        route(&mut r, ev(Kind::Follow, 1, 2));
        assert_eq!(
            route(&mut r, ev(Kind::Unfollow, 3, 2)),
            Vec::<ConnId>::new()
        );
        assert_eq!(
            route(&mut r, ev(Kind::Unfollow, 1, 99)),
            Vec::<ConnId>::new()
        );
        assert_eq!(route(&mut r, ev(Kind::Status, 2, 0)), vec![10]);
    }

    #[test]
    fn status_reaches_connected_followers_and_only_them() {
        let mut r = Router::new();
        r.connect(1, 10);
        r.connect(2, 20);
        r.connect(4, 40);
        for f in [1, 2, 3] {
            route(&mut r, ev(Kind::Follow, f, 7));
        }
        // 3 follows but is not connected; 4 is connected but does not follow.
        assert_eq!(route(&mut r, ev(Kind::Status, 7, 0)), vec![10, 20]);
        // Followers of other users are not involved.
        assert_eq!(route(&mut r, ev(Kind::Status, 1, 0)), Vec::<ConnId>::new());
    }

    #[test]
    fn follow_graph_is_kept_for_users_not_connected() {
        let mut r = Router::new();
        route(&mut r, ev(Kind::Follow, 5, 6));
        r.connect(5, 50);
        assert_eq!(route(&mut r, ev(Kind::Status, 6, 0)), vec![50]);
    }

    #[test]
    fn private_message_reaches_only_to() {
        let mut r = Router::new();
        r.connect(32, 1);
        r.connect(56, 2);
        assert_eq!(route(&mut r, ev(Kind::Private, 32, 56)), vec![2]);
        assert_eq!(
            route(&mut r, ev(Kind::Private, 32, 99)),
            Vec::<ConnId>::new()
        );
    }

    #[test]
    fn two_connections_of_one_user_are_both_notified() {
        let mut r = Router::new();
        r.connect(9, 1);
        r.connect(9, 2);
        r.connect(8, 3);
        assert_eq!(route(&mut r, ev(Kind::Private, 0, 9)), vec![1, 2]);
        route(&mut r, ev(Kind::Follow, 9, 8));
        assert_eq!(route(&mut r, ev(Kind::Status, 8, 0)), vec![1, 2]);
        r.disconnect(9, 1);
        assert_eq!(route(&mut r, ev(Kind::Private, 0, 9)), vec![2]);
    }

    #[test]
    fn broadcast_reaches_each_connection_once() {
        let mut r = Router::new();
        r.connect(1, 10);
        r.connect(1, 11);
        r.connect(2, 20);
        assert_eq!(route(&mut r, ev(Kind::Broadcast, 0, 0)), vec![10, 11, 20]);
        assert_eq!(r.connections(), 3);
        r.disconnect(2, 20);
        r.disconnect(2, 20);
        assert_eq!(r.connections(), 2);
        assert_eq!(route(&mut r, ev(Kind::Broadcast, 0, 0)), vec![10, 11]);
    }

    #[test]
    fn noop_and_clear_follows() {
        let mut r = Router::new();
        r.connect(1, 10);
        route(&mut r, ev(Kind::Follow, 1, 2));
        assert_eq!(route(&mut r, ev(Kind::NoOp, 0, 0)), Vec::<ConnId>::new());
        r.clear_follows();
        assert_eq!(r.follow_edges(), 0);
        assert_eq!(route(&mut r, ev(Kind::Status, 2, 0)), Vec::<ConnId>::new());
        assert_eq!(
            route(&mut r, ev(Kind::Private, 0, 1)),
            vec![10],
            "connections stay"
        );
    }

    #[test]
    fn a_user_following_many_switches_to_a_set_and_stays_a_set() {
        let mut r = Router::new();
        r.connect(1, 10);
        for to in 0..(FEW as u64 * 3) {
            route(&mut r, ev(Kind::Follow, 1, to));
            route(&mut r, ev(Kind::Follow, 1, to));
        }
        assert_eq!(r.follow_edges(), FEW * 3);
        assert!(matches!(r.following[&1], UserSet::Many(_)));
        for to in (0..(FEW as u64 * 3)).step_by(2) {
            route(&mut r, ev(Kind::Unfollow, 1, to));
        }
        assert_eq!(r.follow_edges(), FEW * 3 / 2);
        assert_eq!(route(&mut r, ev(Kind::Status, 3, 0)), vec![10]);
        assert_eq!(route(&mut r, ev(Kind::Status, 4, 0)), Vec::<ConnId>::new());
        r.disconnect(1, 10);
        r.connect(1, 11);
        assert_eq!(route(&mut r, ev(Kind::Status, 5, 0)), vec![11]);
    }

    /// What the status-update index holds: it must follow the follow graph, not the
    /// number of connections, so a disconnect costs its own entries only.
    fn index_entries(r: &Router) -> usize {
        r.connected_followers.values().map(UserSet::len).sum()
    }

    #[test]
    fn the_follower_index_grows_with_follows_not_with_connections() {
        let mut r = Router::new();
        for a in 0..1000 {
            route(&mut r, ev(Kind::Follow, 1, 10_000 + a));
        }
        for c in 0..2000 {
            r.connect(1, c);
        }
        assert!(
            index_entries(&r) <= r.follow_edges(),
            "{}",
            index_entries(&r)
        );
        assert_eq!(route(&mut r, ev(Kind::Status, 10_500, 0)).len(), 2000);
        for c in 0..2000 {
            r.disconnect(1, c);
        }
        assert_eq!(index_entries(&r), 0);
        assert_eq!(route(&mut r, ev(Kind::Status, 10_500, 0)).len(), 0);
    }

    /// The map of connected users, where most lookups miss, stays at most half full at
    /// every size (hashbrown alone fills it to 7/8).
    #[test]
    fn connected_users_map_is_at_most_half_full() {
        let mut r = Router::new();
        for u in 0..3000u64 {
            r.connect(u * 7919, u as ConnId);
            assert!(
                r.slot_of.capacity() >= 2 * r.slot_of.len(),
                "{} users in room for {}",
                r.slot_of.len(),
                r.slot_of.capacity()
            );
        }
    }

    /// Keys in the followee map, the status index and the slot map.
    fn keys(r: &Router) -> (usize, usize, usize) {
        (
            r.following.len(),
            r.connected_followers.len(),
            r.slot_of.len(),
        )
    }

    /// A key lives only while it holds something: follows undone, connections gone,
    /// nothing of the users is left (the graph's memory follows the graph, not the number
    /// of ids ever seen).
    #[test]
    fn keys_of_users_with_nothing_left_are_removed() {
        let mut r = Router::with_slice(3);
        for round in 0..3 {
            for u in 0..100 {
                r.connect(u, u as ConnId);
            }
            for f in 0..200 {
                for a in 0..5 {
                    route(&mut r, ev(Kind::Follow, f, 1_000 + f * 7 + a + round));
                }
            }
            assert_eq!(route(&mut r, ev(Kind::Status, 1_000 + round, 0)), vec![0]);
            for f in (0..200).rev() {
                for a in 0..5 {
                    route(&mut r, ev(Kind::Unfollow, f, 1_000 + f * 7 + a + round));
                }
            }
            for u in 0..100 {
                r.disconnect(u, u as ConnId);
                while r.indexing() {
                    r.work();
                }
            }
            assert_eq!(keys(&r), (0, 0, 0), "round {round}");
            assert_eq!(r.online.len(), 0);
        }
        // Disconnecting with follows in place keeps the graph, and only the graph.
        route(&mut r, ev(Kind::Follow, 1, 2));
        r.connect(1, 10);
        r.connect(3, 30);
        r.disconnect(1, 10);
        r.disconnect(3, 30);
        assert_eq!(
            keys(&r),
            (1, 0, 0),
            "user 1's followee list; 2 and 3 hold nothing"
        );
        assert_eq!(index_entries(&r), 0);
    }

    #[test]
    fn conns_keep_the_first_inline_and_remove_by_swapping_in_the_last() {
        let mut c = Conns::new();
        assert!(c.is_empty());
        assert_eq!(
            (c.push(10), c.push(11), c.push(12), c.push(13)),
            (0, 1, 2, 3)
        );
        let all = |c: &Conns| (0..c.len()).map(|i| c.get(i).unwrap()).collect::<Vec<_>>();
        assert_eq!(c.swap_remove(1), Some(13));
        assert_eq!(all(&c), [10, 13, 12]);
        assert_eq!(c.swap_remove(0), Some(12));
        assert_eq!(all(&c), [12, 13]);
        assert_eq!(c.swap_remove(1), None, "the last: nothing moves");
        assert_eq!(all(&c), [12]);
        assert_eq!(c.swap_remove(0), None);
        assert!(c.is_empty() && c.get(0).is_none());
        let mut out = Vec::new();
        c.push(7);
        c.push(8);
        c.extend_into(&mut out);
        assert_eq!(out, [7, 8]);
    }

    /// The brute-force model: a list of (follower, followed) pairs and a list of
    /// (user, conn) pairs, scanned in full for every event.
    #[test]
    fn random_events_against_a_brute_force_model() {
        // Few users following few; then few users following many (lists become sets).
        for slice in [INDEX_SLICE, 2] {
            brute_force(20, 20, slice);
            brute_force(4, 200, slice);
            // Many users following few: authors with many connected followers (sets too).
            brute_force(200, 4, slice);
        }
    }

    /// With a small `slice`, users following more than `slice` are indexed by jobs, done
    /// (as the server does) before the next event is routed.
    fn brute_force(from_range: u64, to_range: u64, slice: usize) {
        let mut rng = crate::rng::Rng::new(12345);
        let mut rnd = move |n: u64| rng.below(n);
        let mut r = Router::with_slice(slice);
        let mut edges: Vec<(u64, u64)> = Vec::new();
        let mut conns: Vec<(u64, ConnId)> = Vec::new();
        let mut next_conn = 0;
        for _ in 0..5000 {
            let (a, b) = (rnd(from_range), rnd(to_range));
            let kind = [
                Kind::Follow,
                Kind::Unfollow,
                Kind::Broadcast,
                Kind::Private,
                Kind::Status,
            ][rnd(5) as usize];
            match rnd(12) {
                0 => {
                    r.connect(a, next_conn);
                    while r.indexing() {
                        r.work();
                    }
                    conns.push((a, next_conn));
                    next_conn += 1;
                    continue;
                }
                1 if !conns.is_empty() => {
                    let (u, c) = conns.swap_remove(rnd(conns.len() as u64) as usize);
                    r.disconnect(u, c);
                    while r.indexing() {
                        r.work();
                    }
                    continue;
                }
                _ => {}
            }
            let got = route(&mut r, ev(kind, a, b));
            let users: Vec<u64> = match kind {
                Kind::Follow => {
                    if !edges.contains(&(a, b)) {
                        edges.push((a, b));
                    }
                    vec![b]
                }
                Kind::Unfollow => {
                    edges.retain(|&e| e != (a, b));
                    vec![]
                }
                Kind::Broadcast => conns.iter().map(|c| c.0).collect(),
                Kind::Private => vec![b],
                Kind::Status => edges.iter().filter(|e| e.1 == a).map(|e| e.0).collect(),
                Kind::NoOp => vec![],
            };
            let mut want: Vec<ConnId> = conns
                .iter()
                .filter(|(u, _)| users.contains(u))
                .map(|c| c.1)
                .collect();
            want.sort();
            assert_eq!(got, want, "{kind:?} {a} {b}");
        }
    }

    #[test]
    fn a_heavy_users_index_is_built_in_slices_and_a_quick_return_is_consistent() {
        let mut r = Router::with_slice(100);
        for a in 0..1000 {
            route(&mut r, ev(Kind::Follow, 1, 10_000 + a));
        }
        r.connect(1, 7);
        assert!(r.indexing(), "1,000 followees: a job, not one long step");
        let mut steps = 0;
        while r.indexing() {
            r.work();
            steps += 1;
        }
        assert_eq!(steps, 10);
        assert_eq!(route(&mut r, ev(Kind::Status, 10_999, 0)), vec![7]);
        // Gone, and back before the removal finished: the index ends up right.
        r.disconnect(1, 7);
        r.work();
        r.connect(1, 8);
        while r.indexing() {
            r.work();
        }
        assert_eq!(route(&mut r, ev(Kind::Status, 10_000, 0)), vec![8]);
        assert_eq!(index_entries(&r), 1000);
        r.disconnect(1, 8);
        while r.indexing() {
            r.work();
        }
        assert_eq!(index_entries(&r), 0);
        assert_eq!(
            r.online.len(),
            0,
            "the slot is freed once no job refers to it"
        );
    }
}
