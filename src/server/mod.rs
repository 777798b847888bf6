//! The server: one `mio` poll loop that owns both listeners, every connection (in a slab)
//! and the pipeline. `run()` is a short loop; each turn:
//!
//! 1. dispatch readiness: accept, read client ids, drain client input, note which event
//!    sources are readable;
//! 2. timers: id and stall timeouts, the gap timeout, stats, the accept pause, handing
//!    freed memory back after a burst;
//! 3. pump: source bytes -> lines -> events -> window -> router -> client buffers, until
//!    the sources have nothing more, the turn's read budget is spent, or pending output
//!    is over a limit (backpressure); a client buffer about to pass `WRITE_AT` is
//!    written on the spot, so buffers stay small however long the turn;
//! 4. flush: one `write` per connection whose output is due: at the end of the turn it
//!    got it, or with `--flush-delay-us` once that has passed since it became pending
//!    (sooner at `WRITE_AT`, at session end, at shutdown and under backpressure);
//! 5. reap: connections flagged for closing during the turn are removed (never in the
//!    middle of a dispatch, so no key goes stale under anyone's feet).
//!
//! Lists that outlive a turn (dirty, unread, unidentified) hold [`ConnRef`]s, key and
//! serial, and every reader checks the serial: a slot reused by a newer connection is
//! never mistaken for the one that was listed. Structures indexed by plain keys (the
//! router, a delivery's recipients) drop a connection in `close`, before its slot can be
//! reused.

use crate::config::Config;
use crate::conn::{self, Conn, ConnRef, Filled, Role};
use crate::event::{self, Event, Kind, Malformed, ParseError, MAX_RENDERED};
use crate::lines::{Line, LineSplitter};
use crate::outbuf::{self, SHORT, WRITE_AT};
use crate::router::Router;
use crate::stats::{Counters, Warn, WarnLimiter};
use crate::warn_limited;
use crate::window::{Insert, LossDetector, Pop, ReorderWindow, Skip};
use log::{debug, error, info, trace};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const EVENT_LISTENER: Token = Token(usize::MAX - 1);
const CLIENT_LISTENER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
const METRICS_LISTENER: Token = Token(usize::MAX - 4);

/// Granularity of the id and stall timeout checks.
const TICK: Duration = Duration::from_millis(50);
/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How long pending output may drain at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);
/// Event sources connected at once; more are closed at once. Each holds a read buffer.
pub const MAX_SOURCES: usize = 64;
/// Source bytes read per loop turn, so clients get flushed while a fast source streams.
const READ_BUDGET: usize = 512 * 1024;
/// Window steps (events delivered, ranges skipped, runs of source lines taken) per loop
/// turn.
const POP_BUDGET: usize = 64 * 1024;
/// Notifications appended per loop turn (about 10 ms of work); the turn ends after the
/// event that reaches it.
const NOTE_BUDGET: u64 = 128 * 1024;
/// Notification bytes appended per loop turn: the work of a turn is the bytes it copies
/// and writes, and notifications can be 1 KiB each (131,072 of them were 128 MiB and a
/// 230 ms turn). Ordinary turns append a few hundred KiB to 1.5 MiB and never reach it.
const OUTPUT_BUDGET: u64 = 4 << 20;
/// Client input discarded per connection per turn, so a chatty client cannot hog the loop.
const CLIENT_READ_BUDGET: usize = 64 * 1024;
/// Initial reorder window slots.
const INITIAL_WINDOW: usize = 64;
/// Pending output above which, once drained again, freed heap memory is handed back to
/// the OS (a burst must not leave the process at its peak size).
const TRIM_AFTER: usize = 1 << 20;
/// At most one such release per this.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// A drained write buffer is released (down to what an idle one keeps) only after this
/// long without a write: output that comes in bursts a second or two apart keeps its
/// buffers instead of growing them back, cold, every time (10,000 clients with a burst a
/// second: 35-50% more CPU and 60 ms turns when released after each).
const RELEASE_IDLE: Duration = Duration::from_secs(2);
/// Connections written per flush (one loop turn); the rest wait for the next turn. With
/// more clients dirty than this (a broadcast to 10,000), a turn appends `NOTE_BUDGET`
/// notifications and writes this many clients, so a write carries about
/// `NOTE_BUDGET / FLUSH_BATCH` notifications (or what `--total-buffer-limit` leaves room
/// for): 512, not 1,024, halves 10k-clients' writes (docs/performance.md, session 9).
const FLUSH_BATCH: usize = 512;
/// Connections accepted per listener per loop turn; the rest wait for the next turn.
const ACCEPT_BATCH: usize = 256;
/// A loop turn longer than this is logged at debug level, with what it had to do.
const LONG_TURN: Duration = Duration::from_millis(20);
/// Bytes of a junk line shown in its warning.
const SHOWN: usize = 64;

mod gap;
mod intake;
mod metrics;
mod pipeline;
mod session;
mod timers;

use gap::GapMarks;
use intake::Side;
pub use metrics::Scrape;
use pipeline::Source;
use session::Session;

/// A connection in the dirty list, and when its output is to be written.
#[derive(Clone, Copy)]
struct Dirty {
    conn: ConnRef,
    due: Instant,
}

/// See the module docs.
pub struct Server {
    cfg: Config,
    poll: Poll,
    event_listener: Option<TcpListener>,
    client_listener: Option<TcpListener>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// `--metrics-addr` (metrics.rs serves it).
    metrics_listener: Option<TcpListener>,
    /// Metrics connections open.
    scrapers: usize,
    /// What scrapes of `/metrics` read from `/proc` and sum over connections, at most once
    /// a second (taken while answering, which borrows the server).
    sampled: std::cell::Cell<metrics::Sampled>,
    /// The metrics listener stopped at its batch with connections possibly queued.
    scrapes_left: bool,
    // ---- connections (intake.rs accepts and reads them, close/reap here remove them)
    conns: Slab<Conn>,
    /// The next connection's serial.
    next_serial: u64,
    sources: Vec<Source>,
    /// Round-robin cursor over `sources`.
    next_source: usize,
    /// Client connections, identified or not.
    clients: usize,
    /// Client connections still waiting for their id.
    pending_ids: usize,
    /// Those connections, oldest first (entries of ones since identified or closed are
    /// dropped lazily); the oldest gives way when `--max-unidentified` is reached.
    unidentified: VecDeque<ConnRef>,
    /// Connections with output pending.
    with_output: usize,
    /// Connections over the client buffer limit; sources are not read while non-zero.
    over_limit: usize,
    /// Output bytes pending over all connections; sources are not read while it is over
    /// the total buffer limit.
    pending_total: usize,
    window: ReorderWindow,
    /// An event too far ahead, waiting for the window to make room.
    held: Option<(Event, Option<Box<[u8]>>)>,
    router: Router,
    /// Scratch: recipients of the event being delivered.
    recipients: Vec<usize>,
    /// Scratch: a non-canonical payload, or the start of a junk line.
    raw: Vec<u8>,
    /// Scratch: a kept payload taken out of the window for delivery.
    kept: Vec<u8>,
    /// Scratch: a notification with a non-canonical payload.
    note: Vec<u8>,
    /// Connections with output not yet handed to a write, with when it is due. Entries
    /// from deliveries are appended in the order their due times come (now + the flush
    /// delay); those to be written this turn are put in front. So the front is always the
    /// next due, and a flush stops at the first entry not yet due.
    dirty: VecDeque<Dirty>,
    /// Entries due no later than this are written whatever the delay (session end).
    flush_by: Instant,
    /// Connections flagged for closing, removed after dispatch.
    closing: Vec<ConnRef>,
    /// Identified clients with input left unread after their budget.
    unread: Vec<ConnRef>,
    session: Option<Session>,
    sessions: u64,
    /// The last source left: flushing the window before the reset.
    ending: bool,
    stats: Counters,
    warns: WarnLimiter,
    /// Longest loop turn since the last stats line, and since start.
    longest_turn: Duration,
    longest_turn_ever: Duration,
    /// Notification bytes appended to client buffers since start, and the most in one turn.
    appended: u64,
    most_turn_bytes: u64,
    /// Last delivery, or when events started waiting, or resume (for the skip warning).
    gap_since: Instant,
    /// When each missing seq started missing, for the gap timeout.
    gap_marks: GapMarks,
    /// Since when backpressure holds (the start of the turn it began in, so that the time
    /// counted as held is never short).
    paused_since: Option<Instant>,
    next_tick: Instant,
    next_stats: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// A listener stopped at `ACCEPT_BATCH` with connections possibly still queued
    /// (events, clients).
    accepts_left: [bool; 2],
    /// Out of file descriptors since the last successful accept (warned once).
    out_of_fds: bool,
    shutdown: bool,
    /// A burst or a session end freed memory that should go back to the OS.
    trim_wanted: bool,
    /// Some drained write buffer holds more than an idle one keeps (`outbuf::idle_keep`).
    release_wanted: bool,
    last_trim: Instant,
    /// The pump stopped with work left (budget spent, or just resumed).
    work_left: bool,
}

impl Server {
    /// A server on already-bound listeners (so callers and tests pick the ports).
    pub fn new(
        cfg: Config,
        events: std::net::TcpListener,
        clients: std::net::TcpListener,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        events.set_nonblocking(true)?;
        clients.set_nonblocking(true)?;
        intake::deepen_backlog(&events);
        intake::deepen_backlog(&clients);
        let mut events = TcpListener::from_std(events);
        let mut clients = TcpListener::from_std(clients);
        poll.registry()
            .register(&mut events, EVENT_LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut clients, CLIENT_LISTENER, Interest::READABLE)?;
        let metrics_listener = match cfg.metrics_addr {
            Some(addr) => {
                let mut l = TcpListener::bind(addr)?;
                poll.registry()
                    .register(&mut l, METRICS_LISTENER, Interest::READABLE)?;
                info!("metrics on http://{}/metrics", l.local_addr()?);
                Some(l)
            }
            None => None,
        };
        let now = Instant::now();
        Ok(Server {
            window: ReorderWindow::new(
                INITIAL_WINDOW,
                cfg.max_window,
                cfg.window_bytes,
                LossDetector::new(cfg.learned_loss),
            ),
            next_stats: cfg.stats_interval.map(|i| now + i),
            warns: WarnLimiter::new(cfg.stats_interval.unwrap_or(Duration::from_secs(10)), now),
            cfg,
            poll,
            event_listener: Some(events),
            client_listener: Some(clients),
            signals: None,
            metrics_listener,
            scrapers: 0,
            sampled: Default::default(),
            scrapes_left: false,
            conns: Slab::new(),
            next_serial: 1,
            sources: Vec::new(),
            next_source: 0,
            clients: 0,
            pending_ids: 0,
            unidentified: VecDeque::new(),
            with_output: 0,
            over_limit: 0,
            pending_total: 0,
            held: None,
            router: Router::new(),
            recipients: Vec::new(),
            raw: Vec::new(),
            kept: Vec::new(),
            note: Vec::new(),
            dirty: VecDeque::new(),
            flush_by: now,
            closing: Vec::new(),
            unread: Vec::new(),
            session: None,
            sessions: 0,
            ending: false,
            stats: Counters::default(),
            longest_turn: Duration::ZERO,
            longest_turn_ever: Duration::ZERO,
            appended: 0,
            most_turn_bytes: 0,
            gap_since: now,
            gap_marks: GapMarks::default(),
            paused_since: None,
            next_tick: now,
            accept_paused_until: None,
            accepts_left: [false; 2],
            out_of_fds: false,
            shutdown: false,
            trim_wanted: false,
            release_wanted: false,
            last_trim: now,
            work_left: false,
        })
    }

    /// Stop gracefully on SIGINT, SIGTERM and SIGHUP (delivered through the poll loop). A
    /// hang-up means the terminal or the session that started us is gone: for a server
    /// that is a request to stop, and it stops the same careful way.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// The bound (event, client) addresses.
    pub fn local_addrs(&self) -> io::Result<(SocketAddr, SocketAddr)> {
        let unbound = || io::Error::other("listener closed");
        Ok((
            self.event_listener
                .as_ref()
                .ok_or_else(unbound)?
                .local_addr()?,
            self.client_listener
                .as_ref()
                .ok_or_else(unbound)?
                .local_addr()?,
        ))
    }

    /// Serves until a signal asks to stop (then drains and returns `Ok`), or the poll or a
    /// listener fails.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    EVENT_LISTENER => self.accept(Side::Events, now),
                    CLIENT_LISTENER => self.accept(Side::Clients, now),
                    SIGNALS => self.on_signal(),
                    METRICS_LISTENER => self.accept_scrapers(now),
                    Token(key) => {
                        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                        let hung_up = ev.is_error() || ev.is_write_closed();
                        self.on_ready(key, readable, ev.is_writable(), hung_up, now);
                    }
                }
            }
            self.accept_left(now);
            self.drain_unread(now);
            if self.router.indexing() {
                self.router.work();
                if !self.paused() {
                    self.resume(now);
                }
            }
            self.timers(now);
            let appended = self.appended;
            self.pump(now);
            self.most_turn_bytes = self.most_turn_bytes.max(self.appended - appended);
            if let Some(gap) = self.cfg.gap_timeout {
                self.gap_marks.mark(now, self.window.highest(), gap);
            }
            match (self.paused(), self.paused_since) {
                (true, None) => self.paused_since = Some(now),
                // Released on a path that did not resume: the clocks go on from here.
                (false, Some(_)) => self.resume(now),
                _ => {}
            }
            self.flush(now);
            self.reap();
            let turn = now.elapsed();
            if turn > LONG_TURN {
                debug!(
                    "long loop turn: {turn:?} ({} readiness events, {} connections)",
                    events.iter().count(),
                    self.conns.len()
                );
            }
            self.longest_turn = self.longest_turn.max(turn);
            self.longest_turn_ever = self.longest_turn_ever.max(turn);
            if self.shutdown {
                return self.finish();
            }
        }
    }

    /// Some connection has a deadline the 50 ms tick checks: an id, a stall, a scrape.
    fn deadlines_pending(&self) -> bool {
        self.pending_ids > 0 || self.with_output > 0 || self.scrapers > 0
    }

    /// The live connection `r` names, if it is still there and not closing.
    fn live(&mut self, r: ConnRef) -> Option<&mut Conn> {
        self.conns
            .get_mut(r.key)
            .filter(|c| c.serial == r.serial && !c.closing)
    }

    /// Lists `key` for this turn's flush (unless it is listed already).
    fn mark_dirty(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push_front(Dirty {
                conn: conn.at(key),
                due: now,
            });
        }
    }

    /// Everything pending now is written without waiting for the flush delay (over the
    /// next turns, `FLUSH_BATCH` at a time).
    fn flush_everything(&mut self, now: Instant) {
        self.flush_by = now + self.cfg.flush_delay;
    }

    /// Events received and not yet delivered or discarded: the window's, and the one held
    /// back for room or for what was ready before it.
    fn waiting(&self) -> usize {
        self.window.waiting() + usize::from(self.held.is_some())
    }

    /// Backpressure: some client, or all of them together, hold too much output; or the
    /// router is still indexing a heavy user's follows (nothing may be routed meanwhile).
    fn paused(&self) -> bool {
        self.over_limit > 0
            || self.pending_total > self.cfg.total_buffer_limit
            || self.router.indexing()
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if (self.work_left && !self.paused())
            || self.router.indexing()
            || !self.unread.is_empty()
            || (self.accepts_left.iter().any(|&more| more) && self.accept_paused_until.is_none())
            || self.scrapes_left
        {
            return Some(Duration::ZERO);
        }
        let gap = match self.cfg.gap_timeout {
            Some(t) if !self.paused() && self.window.waiting() > 0 => {
                self.gap_marks.deadline(self.window.highest(), t)
            }
            _ => None,
        };
        let trims = self.trim_wanted || self.release_wanted;
        let tick = (self.deadlines_pending() || trims).then_some(self.next_tick);
        let flush = self.dirty.front().map(|d| {
            if self.paused() || d.due <= self.flush_by {
                now
            } else {
                d.due
            }
        });
        let warns = self.warns.deadline();
        [
            flush,
            gap,
            tick,
            self.next_stats,
            self.accept_paused_until,
            warns,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|d| d.saturating_duration_since(now))
    }

    fn on_signal(&mut self) {
        if let Some(signals) = self.signals.as_mut() {
            for sig in signals.pending() {
                info!("signal {sig}: shutting down");
                self.shutdown = true;
            }
        }
    }

    /// One `write` per connection whose output is due (or that became writable).
    fn flush(&mut self, now: Instant) {
        let was_paused = self.paused();
        self.trim_wanted |= self.pending_total > TRIM_AFTER;
        // Paused, the sources wait for pending output to drain: none of it waits longer.
        let by = if was_paused {
            None
        } else {
            Some(now.max(self.flush_by))
        };
        // At most a batch per turn: a broadcast to 10,000 clients is 10,000 writes, and the
        // rest of the loop (accepts, ids, signals) must not wait for all of them.
        for _ in 0..FLUSH_BATCH {
            let Some(&d) = self.dirty.front() else { break };
            if by.is_some_and(|by| d.due > by) {
                break; // and so is every entry behind it
            }
            self.dirty.pop_front();
            if let Some(conn) = self.live(d.conn) {
                conn.dirty = false;
                self.write_out(d.conn.key, now);
            }
        }
        if was_paused && !self.paused() {
            self.resume(now);
        }
    }

    /// One `write` of `key`'s pending output, and the accounting that goes with it. `key`
    /// is a live slot: a recipient of the event being delivered, or checked by `live`.
    fn write_out(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing {
            return;
        }
        let offered = conn.out.pending();
        if offered > 0 {
            self.stats.writes += 1;
        }
        match conn.out.write_to(&mut conn.stream) {
            Ok(n) => {
                self.stats.bytes_out += n as u64;
                self.pending_total -= n;
                if n > 0 {
                    conn.stalled_since = now;
                }
                conn.blocked = n < offered;
                if conn.out.pending() == 0 {
                    self.with_output -= 1;
                    // Capacity an idle buffer will not keep, burst or not: released once
                    // idle for `RELEASE_IDLE`.
                    let keep = outbuf::idle_keep(self.clients, self.cfg.total_buffer_limit);
                    self.release_wanted |= conn.out.holds_idle_excess(keep);
                }
                if conn.over_limit && conn.out.pending() <= self.cfg.client_buffer_limit {
                    conn.over_limit = false;
                    self.over_limit -= 1;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.blocked = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.mark_dirty(key, now),
            Err(e) => {
                debug!("{} disconnected (write failed: {e})", conn.name());
                self.close(key, now);
            }
        }
    }

    /// Backpressure released: the sources may be read again; the gap clocks, stopped
    /// meanwhile, go on.
    fn resume(&mut self, now: Instant) {
        self.work_left = true;
        self.gap_since = now;
        if let Some(since) = self.paused_since.take() {
            // Up to this instant, not the turn's start: never counted short.
            self.gap_marks
                .shift(Instant::now().saturating_duration_since(since));
        }
    }

    /// Flags `key` for removal after dispatch and forgets it everywhere else now.
    fn close(&mut self, key: usize, now: Instant) {
        let was_paused = self.paused();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        self.closing.push(conn.at(key));
        if conn.out.pending() > 0 {
            self.with_output -= 1;
            self.pending_total -= conn.out.pending();
        }
        if std::mem::take(&mut conn.over_limit) {
            self.over_limit -= 1;
        }
        match conn.role {
            Role::Source => {
                debug_assert!(!self.sources.iter().any(|s| s.conn == conn.at(key)));
            }
            Role::Pending { .. } => {
                self.clients -= 1;
                self.pending_ids -= 1;
            }
            Role::Client { user } => {
                self.clients -= 1;
                self.router.disconnect(user, key);
            }
            Role::Scraper(_) => self.scrapers -= 1,
        }
        if was_paused && !self.paused() {
            self.resume(now);
        }
    }

    fn reap(&mut self) {
        for r in self.closing.drain(..) {
            if self.conns.get(r.key).is_some_and(|c| c.serial == r.serial) {
                let mut conn = self.conns.remove(r.key);
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
    }

    /// A serial for a new connection.
    fn serial(&mut self) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        serial
    }

    /// Shutdown: stop accepting, give pending output up to a second, log final stats.
    fn finish(&mut self) -> io::Result<()> {
        for mut l in [
            self.event_listener.take(),
            self.client_listener.take(),
            self.metrics_listener.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let pending: Vec<usize> = (self.conns.iter())
                .filter(|(_, c)| c.out.pending() > 0 && !c.closing)
                .map(|(key, _)| key)
                .collect();
            for key in pending {
                self.mark_dirty(key, now);
            }
            self.flush_everything(now);
            self.flush(now);
            self.reap();
            if self.with_output == 0 || now >= deadline {
                break;
            }
            match self.poll.poll(&mut events, Some(deadline - now)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.with_output > 0 {
            error!(
                "exiting with output pending for {} connections",
                self.with_output
            );
        }
        self.warns.flush();
        // Events still behind a hole are not delivered: counted here, so that every event
        // received is accounted for.
        info!(
            "final stats: {} waiting={} longest_turn_us={} most_turn_bytes={}",
            self.stats,
            self.waiting(),
            self.longest_turn_ever.as_micros(),
            self.most_turn_bytes
        );
        Ok(())
    }
}
