//! The server: one `mio` poll loop that owns both listeners, every connection (in a slab)
//! and the pipeline. `run()` is a short loop; each turn:
//!
//! 1. dispatch readiness: accept, read client ids, drain client input, note which event
//!    sources are readable;
//! 2. timers: id and stall timeouts, the gap timeout, stats, the accept pause, handing
//!    freed memory back after a burst;
//! 3. pump: source bytes -> lines -> events -> window -> router -> client buffers, until
//!    the sources have nothing more, the turn's read budget is spent, or pending output
//!    is over a limit (backpressure);
//! 4. flush: one `write` per connection that got output this turn;
//! 5. reap: connections flagged for closing during the turn are removed (never in the
//!    middle of a dispatch, so no key goes stale under anyone's feet).

use crate::config::Config;
use crate::conn::{self, Conn, Filled, Role};
use crate::event::{self, Event, Kind, Malformed, ParseError, MAX_RENDERED};
use crate::lines::{Line, LineSplitter};
use crate::router::Router;
use crate::stats::{Counters, Warn, WarnLimiter};
use crate::warn_limited;
use crate::window::{Insert, Pop, ReorderWindow};
use log::{debug, error, info, trace};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const EVENT_LISTENER: Token = Token(usize::MAX - 1);
const CLIENT_LISTENER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// Granularity of the id and stall timeout checks.
const TICK: Duration = Duration::from_millis(50);
/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How long pending output may drain at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);
/// Event sources connected at once; more are closed at once. Each holds a read buffer.
pub const MAX_SOURCES: usize = 64;
/// Source bytes read per loop turn, so clients get flushed while a fast source streams.
const READ_BUDGET: usize = 128 * 1024;
/// Client input discarded per connection per turn, so a chatty client cannot hog the loop.
const CLIENT_READ_BUDGET: usize = 64 * 1024;
/// Initial reorder window slots.
const INITIAL_WINDOW: usize = 1024;
/// Pending output above which, once drained again, freed heap memory is handed back to
/// the OS (a burst must not leave the process at its peak size).
const TRIM_AFTER: usize = 1 << 20;
/// At most one such release per this.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// Write buffer capacity an idle connection keeps through a release.
const KEEP_CAPACITY: usize = 16 * 1024;
/// Bytes of a junk line shown in its warning.
const SHOWN: usize = 64;

/// An event source's read side. Kept outside the slab so a line can be parsed while the
/// rest of the server is borrowed for delivery.
struct Source {
    key: usize,
    lines: LineSplitter,
    /// The socket may hold unread bytes (set on readiness, cleared on `WouldBlock`).
    readable: bool,
    /// The peer closed; buffered lines are still to be processed.
    eof: bool,
}

/// What one source line turned out to be.
enum Taken {
    Event(Event),
    NoOp(u64, Malformed),
    Junk,
    TooLong,
}

struct Session {
    number: u64,
    started: Instant,
    at_start: Counters,
}

/// Which listener.
#[derive(Clone, Copy, Debug)]
enum Side {
    Events,
    Clients,
}

/// See the module docs.
pub struct Server {
    cfg: Config,
    poll: Poll,
    event_listener: Option<TcpListener>,
    client_listener: Option<TcpListener>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    conns: Slab<Conn>,
    sources: Vec<Source>,
    /// Round-robin cursor over `sources`.
    next_source: usize,
    /// Client connections, identified or not.
    clients: usize,
    /// Client connections still waiting for their id.
    pending_ids: usize,
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
    /// Scratch: a notification with a non-canonical payload.
    note: Vec<u8>,
    /// Connections that got output since the last flush.
    dirty: Vec<usize>,
    /// Connections flagged for closing, removed after dispatch.
    closing: Vec<usize>,
    /// Identified clients with input left unread after their budget.
    unread: Vec<usize>,
    session: Option<Session>,
    sessions: u64,
    /// The last source left: flushing the window before the reset.
    ending: bool,
    stats: Counters,
    warns: WarnLimiter,
    /// The gap clock: last delivery, or when events started waiting, or resume.
    gap_since: Instant,
    next_tick: Instant,
    next_stats: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// Out of file descriptors since the last successful accept (warned once).
    out_of_fds: bool,
    shutdown: bool,
    /// A burst or a session end freed memory that should go back to the OS.
    trim_wanted: bool,
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
        let mut events = TcpListener::from_std(events);
        let mut clients = TcpListener::from_std(clients);
        poll.registry()
            .register(&mut events, EVENT_LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut clients, CLIENT_LISTENER, Interest::READABLE)?;
        let now = Instant::now();
        Ok(Server {
            window: ReorderWindow::new(INITIAL_WINDOW, cfg.max_window),
            next_stats: cfg.stats_interval.map(|i| now + i),
            warns: WarnLimiter::new(cfg.stats_interval.unwrap_or(Duration::from_secs(10)), now),
            cfg,
            poll,
            event_listener: Some(events),
            client_listener: Some(clients),
            signals: None,
            conns: Slab::new(),
            sources: Vec::new(),
            next_source: 0,
            clients: 0,
            pending_ids: 0,
            with_output: 0,
            over_limit: 0,
            pending_total: 0,
            held: None,
            router: Router::new(),
            recipients: Vec::new(),
            raw: Vec::new(),
            note: Vec::new(),
            dirty: Vec::new(),
            closing: Vec::new(),
            unread: Vec::new(),
            session: None,
            sessions: 0,
            ending: false,
            stats: Counters::default(),
            gap_since: now,
            next_tick: now,
            accept_paused_until: None,
            out_of_fds: false,
            shutdown: false,
            trim_wanted: false,
            last_trim: now,
            work_left: false,
        })
    }

    /// Stop gracefully on SIGINT and SIGTERM (delivered through the poll loop).
    pub fn handle_signals(&mut self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM])?;
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

    /// Counters so far.
    pub fn counters(&self) -> Counters {
        self.stats
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
                    Token(key) => {
                        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                        self.on_ready(key, readable, ev.is_writable(), now);
                    }
                }
            }
            self.drain_unread(now);
            self.timers(now);
            self.pump(now);
            self.flush(now);
            self.reap();
            if self.shutdown {
                return self.finish();
            }
        }
    }

    /// Backpressure: some client, or all of them together, hold too much output.
    fn paused(&self) -> bool {
        self.over_limit > 0 || self.pending_total > self.cfg.total_buffer_limit
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if (self.work_left && !self.paused()) || !self.unread.is_empty() {
            return Some(Duration::ZERO);
        }
        let gap = match self.cfg.gap_timeout {
            Some(t) if !self.paused() && self.window.waiting() > 0 => Some(self.gap_since + t),
            _ => None,
        };
        let tick = (self.pending_ids > 0 || self.with_output > 0 || self.trim_wanted)
            .then_some(self.next_tick);
        [gap, tick, self.next_stats, self.accept_paused_until]
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

    // ---- accepting ------------------------------------------------------------------

    fn accept(&mut self, side: Side, now: Instant) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let listener = match side {
                Side::Events => self.event_listener.as_ref(),
                Side::Clients => self.client_listener.as_ref(),
            };
            let Some(listener) = listener else { return };
            match listener.accept() {
                Ok((stream, addr)) => {
                    self.out_of_fds = false;
                    self.admit(side, stream, addr, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if !std::mem::replace(&mut self.out_of_fds, true) {
                        log::warn!("out of file descriptors ({e}): pausing accepts {ACCEPT_PAUSE:?} at a time until one succeeds");
                    }
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
                // Per-connection failures (aborted handshakes and the like): go on.
                Err(e) => {
                    warn_limited!(self.warns, Warn::Accept, now, "accept on {side:?}: {e}");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, side: Side, mut stream: TcpStream, addr: SocketAddr, now: Instant) {
        let (role, interest) = match side {
            Side::Events if self.sources.len() >= MAX_SOURCES => {
                self.stats.clients_rejected += 1;
                warn_limited!(
                    self.warns,
                    Warn::Rejected,
                    now,
                    "event source {addr} rejected: {MAX_SOURCES} already connected"
                );
                return;
            }
            Side::Clients if self.clients >= self.cfg.max_clients => {
                self.stats.clients_rejected += 1;
                warn_limited!(
                    self.warns,
                    Warn::Rejected,
                    now,
                    "client {addr} rejected: --max-clients {} reached",
                    self.cfg.max_clients
                );
                return;
            }
            Side::Events => (Role::Source, Interest::READABLE),
            Side::Clients => {
                // Batches are already large; do not hold the tail of a burst back.
                let _ = stream.set_nodelay(true);
                let role = Role::Pending {
                    lines: LineSplitter::new(conn::MAX_ID_LINE, conn::MAX_ID_LINE),
                    deadline: now + self.cfg.auth_timeout,
                };
                // Edge-triggered: WRITABLE is reported only after a write found the socket
                // full, so registering it once costs nothing and needs no re-registration.
                (role, Interest::READABLE | Interest::WRITABLE)
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), interest)
        {
            warn_limited!(self.warns, Warn::Accept, now, "cannot register {addr}: {e}");
            return;
        }
        entry.insert(Conn::new(stream, role, now));
        match side {
            Side::Events => {
                debug!("event source {addr} connected");
                self.sources.push(Source {
                    key,
                    lines: LineSplitter::new(conn::MAX_EVENT_LINE, conn::SOURCE_CHUNK),
                    readable: true,
                    eof: false,
                });
                if self.session.is_none() && !self.ending {
                    self.start_session(now);
                }
                self.work_left = true;
            }
            Side::Clients => {
                trace!("client {addr} connected");
                self.clients += 1;
                self.pending_ids += 1;
            }
        }
    }

    // ---- connection readiness --------------------------------------------------------

    fn on_ready(&mut self, key: usize, readable: bool, writable: bool, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // spurious: already removed
        };
        if conn.closing {
            return;
        }
        if writable && conn.out.pending() > 0 && !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
        if !readable {
            return;
        }
        match conn.role {
            Role::Source => {
                if let Some(src) = self.sources.iter_mut().find(|s| s.key == key) {
                    src.readable = true;
                    self.work_left = true;
                }
            }
            Role::Pending { .. } => self.read_id(key, now),
            Role::Client { .. } => self.read_client(key, now),
        }
    }

    /// Reads a pending client's id line; identifies it, or closes it.
    fn read_id(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        let Role::Pending { lines, .. } = &mut conn.role else {
            return;
        };
        let outcome = loop {
            match conn::fill(&mut conn.stream, lines) {
                Filled::Bytes(n) => self.stats.bytes_in += n as u64,
                Filled::WouldBlock => return,
                Filled::Closed(_) => break Err(None),
            }
            match lines.next_line() {
                Some(Line::Full(id)) => {
                    break event::number(id).ok_or_else(|| {
                        Some(String::from_utf8_lossy(&id[..id.len().min(SHOWN)]).into_owned())
                    });
                }
                Some(Line::TooLong) => break Err(Some("over-long id".to_owned())),
                None => {}
            }
            if lines.is_discarding() {
                break Err(Some("over-long id".to_owned()));
            }
        };
        match outcome {
            Ok(user) => {
                conn.role = Role::Client { user };
                self.pending_ids -= 1;
                self.stats.clients_connected += 1;
                self.router.connect(user, key);
                debug!("client {key} identified as user {user}");
                // Whatever followed the id is discarded, up to `WouldBlock` (edge-triggered).
                self.read_client(key, now);
            }
            Err(None) => self.close(key, now),
            Err(Some(why)) => {
                self.stats.clients_bad_id += 1;
                warn_limited!(
                    self.warns,
                    Warn::BadId,
                    now,
                    "client {key} closed: invalid id {why:?}"
                );
                self.close(key, now);
            }
        }
    }

    /// Discards an identified client's input; notices its disconnect.
    fn read_client(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        let (n, state) = conn::discard(&mut conn.stream, CLIENT_READ_BUDGET);
        self.stats.bytes_in += n as u64;
        match state {
            Filled::WouldBlock => {}
            Filled::Bytes(_) => self.unread.push(key),
            Filled::Closed(e) => {
                if let Some(e) = e {
                    warn_limited!(self.warns, Warn::ConnError, now, "client {key}: {e}");
                }
                debug!("client {key} disconnected");
                self.close(key, now);
            }
        }
    }

    fn drain_unread(&mut self, now: Instant) {
        if self.unread.is_empty() {
            return;
        }
        let mut unread = std::mem::take(&mut self.unread);
        for &key in &unread {
            if self.conns.get(key).is_some_and(|c| !c.closing) {
                self.read_client(key, now);
            }
        }
        unread.clear();
        if self.unread.is_empty() {
            self.unread = unread; // keep the capacity
        }
    }

    // ---- the pipeline ---------------------------------------------------------------

    /// Moves events from the sources through the window to the client buffers until
    /// there is nothing more, the read budget is spent, or backpressure holds.
    fn pump(&mut self, now: Instant) {
        self.work_left = false;
        let mut budget = READ_BUDGET;
        while !self.paused() {
            if let Some(pop) = self.window.pop() {
                match pop {
                    Pop::Event(ev, payload) => self.deliver(ev, payload.as_deref(), now),
                    Pop::Skipped { from, through } => self.skipped(from, through, now),
                }
                continue;
            }
            if let Some((ev, payload)) = self.held.take() {
                // `pop` found nothing to skip, so the room was made.
                debug_assert!(self.window.fits(ev.seq));
                let stored = self
                    .window
                    .insert(ev, payload.as_deref().unwrap_or_default());
                debug_assert_eq!(stored, Insert::Stored);
                continue;
            }
            if self.ending {
                if self.window.flushed() {
                    self.end_session(now);
                    continue;
                }
                return;
            }
            match self.next_line(&mut budget, now) {
                Some(taken) => self.ingest(taken, now),
                None => return,
            }
        }
    }

    /// The next line from any source, round-robin by read chunk, reading as needed.
    fn next_line(&mut self, budget: &mut usize, now: Instant) -> Option<Taken> {
        let mut idle = 0;
        while idle < self.sources.len() {
            let i = self.next_source % self.sources.len();
            let src = &mut self.sources[i];
            if let Some(line) = src.lines.next_line() {
                return Some(take(line, &mut self.raw));
            }
            if src.eof {
                let tail = src.lines.take_tail().map(|l| take(l, &mut self.raw));
                self.close_source(i, now);
                if tail.is_some() {
                    return tail;
                }
                continue;
            }
            if !src.readable {
                self.next_source += 1;
                idle += 1;
                continue;
            }
            if *budget == 0 {
                self.work_left = true;
                return None;
            }
            let conn = &mut self.conns[src.key];
            match conn::fill(&mut conn.stream, &mut src.lines) {
                Filled::Bytes(n) => {
                    self.stats.bytes_in += n as u64;
                    *budget = budget.saturating_sub(n);
                    self.next_source += 1;
                    idle = 0;
                }
                Filled::WouldBlock => {
                    src.readable = false;
                    self.next_source += 1;
                    idle += 1;
                }
                Filled::Closed(e) => {
                    if let Some(e) = e {
                        warn_limited!(
                            self.warns,
                            Warn::ConnError,
                            now,
                            "event source {}: {e}",
                            src.key
                        );
                    }
                    src.eof = true;
                }
            }
        }
        None
    }

    /// Counts and stores one taken line.
    fn ingest(&mut self, taken: Taken, now: Instant) {
        let ev = match taken {
            Taken::Event(ev) => ev,
            Taken::NoOp(seq, why) => {
                self.stats.noop_events += 1;
                warn_limited!(
                    self.warns,
                    Warn::NoOp,
                    now,
                    "event {seq} is malformed ({why:?}): delivered as a no-op"
                );
                Event::noop(seq)
            }
            Taken::Junk => {
                self.stats.junk_lines += 1;
                warn_limited!(
                    self.warns,
                    Warn::Junk,
                    now,
                    "junk line discarded: {:?}",
                    String::from_utf8_lossy(&self.raw)
                );
                return;
            }
            Taken::TooLong => {
                self.stats.overlong_lines += 1;
                warn_limited!(
                    self.warns,
                    Warn::Overlong,
                    now,
                    "event line over {} bytes discarded",
                    conn::MAX_EVENT_LINE
                );
                return;
            }
        };
        self.stats.events_received += 1;
        trace!("event {} received: {:?}", ev.seq, ev.kind);
        let was_empty = self.window.waiting() == 0;
        match self.window.insert(ev, &self.raw) {
            Insert::Stored => {
                if was_empty {
                    self.gap_since = now;
                }
            }
            Insert::Late | Insert::Duplicate => {
                self.stats.late_or_duplicate += 1;
                warn_limited!(
                    self.warns,
                    Warn::LateOrDuplicate,
                    now,
                    "event {} discarded: already delivered or waiting",
                    ev.seq
                );
            }
            Insert::TooFar => {
                self.window.make_room_for(ev.seq);
                let payload = (!ev.canonical).then(|| self.raw.as_slice().into());
                self.held = Some((ev, payload));
            }
        }
    }

    /// Applies one in-order event and appends its notification to every recipient.
    fn deliver(&mut self, ev: Event, payload: Option<&[u8]>, now: Instant) {
        self.stats.events_delivered += 1;
        self.gap_since = now;
        if ev.kind == Kind::NoOp {
            return;
        }
        self.recipients.clear();
        self.router.apply(&ev, &mut self.recipients);
        trace!("event {} to {} connections", ev.seq, self.recipients.len());
        if self.recipients.is_empty() {
            return;
        }
        let mut rendered = [0u8; MAX_RENDERED];
        let note: &[u8] = match payload {
            Some(p) => {
                self.note.clear();
                self.note.extend_from_slice(p);
                self.note.extend_from_slice(b"\r\n");
                &self.note
            }
            None => {
                let n = ev.render(&mut rendered);
                &rendered[..n]
            }
        };
        let limit = self.cfg.client_buffer_limit;
        for &key in &self.recipients {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.closing {
                continue;
            }
            if conn.out.pending() == 0 {
                conn.stalled_since = now;
                self.with_output += 1;
            }
            conn.out.append(note);
            self.pending_total += note.len();
            self.stats.notifications += 1;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
            if !conn.over_limit && conn.out.pending() > limit {
                conn.over_limit = true;
                self.over_limit += 1;
            }
        }
    }

    fn skipped(&mut self, from: u64, through: u64, now: Instant) {
        self.stats.seqs_skipped += through - from + 1;
        self.gap_since = now;
        warn_limited!(
            self.warns,
            Warn::Skipped,
            now,
            "seqs {from}..={through} skipped ({} events)",
            through - from + 1
        );
    }

    // ---- sessions -------------------------------------------------------------------

    fn start_session(&mut self, now: Instant) {
        self.sessions += 1;
        info!(
            "session {} started (next seq {})",
            self.sessions,
            self.window.next_seq()
        );
        self.session = Some(Session {
            number: self.sessions,
            started: now,
            at_start: self.stats,
        });
    }

    fn close_source(&mut self, i: usize, now: Instant) {
        let src = self.sources.swap_remove(i);
        debug!("event source {} disconnected", src.key);
        self.close(src.key, now);
        if !self.sources.is_empty() {
            return;
        }
        if self.cfg.keep_state {
            self.log_session_end(now);
        } else {
            // Deliver what waits, gaps skipped, then reset (in `pump`).
            self.ending = true;
            self.window.start_flush();
            self.work_left = true;
        }
    }

    fn end_session(&mut self, now: Instant) {
        self.window.reset();
        self.trim_wanted = true;
        self.router.clear_follows();
        self.ending = false;
        self.log_session_end(now);
        if !self.sources.is_empty() {
            self.start_session(now);
        }
    }

    fn log_session_end(&mut self, now: Instant) {
        if let Some(s) = self.session.take() {
            info!(
                "session {} ended after {:.3}s: {}",
                s.number,
                now.duration_since(s.started).as_secs_f64(),
                self.stats.since(&s.at_start)
            );
        }
    }

    // ---- timers ---------------------------------------------------------------------

    fn timers(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            self.accept(Side::Events, now);
            self.accept(Side::Clients, now);
        }
        if let Some(gap) = self.cfg.gap_timeout {
            if !self.paused() && self.held.is_none() && now >= self.gap_since + gap {
                if let Some(Pop::Skipped { from, through }) = self.window.skip_gap() {
                    self.skipped(from, through, now);
                }
            }
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            if self.pending_ids > 0 || self.with_output > 0 {
                self.check_timeouts(now);
            }
            if self.trim_wanted
                && self.pending_total < TRIM_AFTER / 16
                && now.duration_since(self.last_trim) >= TRIM_EVERY
            {
                self.trim_wanted = false;
                self.last_trim = now;
                for (_, conn) in self.conns.iter_mut() {
                    conn.out.shrink_idle(KEEP_CAPACITY);
                }
                release_freed_memory();
            }
        }
        if let Some(at) = self.next_stats.filter(|&t| now >= t) {
            self.next_stats = self.cfg.stats_interval.map(|i| (at + i).max(now));
            self.log_stats();
        }
        self.warns.roll(now);
    }

    /// Closes connections past their id deadline and clients stalled past the limit.
    fn check_timeouts(&mut self, now: Instant) {
        let stall = self.cfg.stall_timeout;
        let mut expired = Vec::new();
        for (key, conn) in self.conns.iter() {
            if conn.closing {
                continue;
            }
            match conn.role {
                Role::Pending { deadline, .. } if now >= deadline => expired.push((key, false)),
                Role::Client { .. }
                    if conn.out.pending() > 0
                        && now.duration_since(conn.stalled_since) >= stall =>
                {
                    expired.push((key, true))
                }
                _ => {}
            }
        }
        for (key, stalled) in expired {
            if stalled {
                self.stats.clients_stalled += 1;
                warn_limited!(
                    self.warns,
                    Warn::Stalled,
                    now,
                    "client {key} closed: took no bytes for {stall:?} with {} pending",
                    self.conns[key].out.pending()
                );
            } else {
                self.stats.clients_bad_id += 1;
                warn_limited!(
                    self.warns,
                    Warn::BadId,
                    now,
                    "client {key} closed: no id within {:?}",
                    self.cfg.auth_timeout
                );
            }
            self.close(key, now);
        }
    }

    fn log_stats(&self) {
        info!(
            "stats: {} | sources={} clients={} window={}/{} waiting={} next_seq={}",
            self.stats,
            self.sources.len(),
            self.clients,
            self.window.capacity(),
            self.cfg.max_window,
            self.window.waiting(),
            self.window.next_seq()
        );
    }

    // ---- writing and closing --------------------------------------------------------

    /// One `write` per connection that got output (or became writable) this turn.
    fn flush(&mut self, now: Instant) {
        let was_paused = self.paused();
        self.trim_wanted |= self.pending_total > TRIM_AFTER;
        let mut dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.closing {
                continue;
            }
            match conn.out.write_to(&mut conn.stream) {
                Ok(n) => {
                    self.stats.bytes_out += n as u64;
                    self.pending_total -= n;
                    if n > 0 {
                        conn.stalled_since = now;
                    }
                    if conn.out.pending() == 0 {
                        self.with_output -= 1;
                    }
                    if conn.over_limit && conn.out.pending() <= self.cfg.client_buffer_limit {
                        conn.over_limit = false;
                        self.over_limit -= 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    conn.dirty = true;
                    self.dirty.push(key);
                }
                Err(e) => {
                    debug!("client {key}: write failed: {e}");
                    self.close(key, now);
                }
            }
        }
        dirty.clear();
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
        if was_paused && !self.paused() {
            self.resume(now);
        }
    }

    /// Backpressure released: the sources may be read again; the gap clock restarts.
    fn resume(&mut self, now: Instant) {
        self.work_left = true;
        self.gap_since = now;
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
        self.closing.push(key);
        if conn.out.pending() > 0 {
            self.with_output -= 1;
            self.pending_total -= conn.out.pending();
        }
        if std::mem::take(&mut conn.over_limit) {
            self.over_limit -= 1;
        }
        match conn.role {
            Role::Source => {}
            Role::Pending { .. } => {
                self.clients -= 1;
                self.pending_ids -= 1;
            }
            Role::Client { user } => {
                self.clients -= 1;
                self.router.disconnect(user, key);
            }
        }
        if was_paused && !self.paused() {
            self.resume(now);
        }
    }

    fn reap(&mut self) {
        for key in self.closing.drain(..) {
            let mut conn = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    /// Shutdown: stop accepting, give pending output up to a second, log final stats.
    fn finish(&mut self) -> io::Result<()> {
        for mut l in [self.event_listener.take(), self.client_listener.take()]
            .into_iter()
            .flatten()
        {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            for (key, conn) in self.conns.iter_mut() {
                if conn.out.pending() > 0 && !conn.dirty && !conn.closing {
                    conn.dirty = true;
                    self.dirty.push(key);
                }
            }
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
        info!("final stats: {}", self.stats);
        Ok(())
    }
}

/// Hands heap pages freed after a burst back to the OS. glibc keeps freed memory inside
/// the heap (so RSS would stay at its peak); elsewhere the allocator decides.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; no Rust state involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Classifies one source line; keeps the bytes in `raw` where they are needed later.
fn take(line: Line<'_>, raw: &mut Vec<u8>) -> Taken {
    let Line::Full(line) = line else {
        return Taken::TooLong;
    };
    match event::parse(line) {
        Ok(ev) => {
            if !ev.canonical {
                raw.clear();
                raw.extend_from_slice(line);
            }
            Taken::Event(ev)
        }
        Err(ParseError::NoOp { seq, why }) => Taken::NoOp(seq, why),
        Err(ParseError::Junk) => {
            raw.clear();
            raw.extend_from_slice(&line[..line.len().min(SHOWN)]);
            Taken::Junk
        }
    }
}
