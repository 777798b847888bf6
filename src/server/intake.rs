//! Connections in: accepting on both listeners (limits, fd exhaustion), readiness of
//! each connection, a client's id line, and discarding what identified clients send.

use super::*;

/// Which listener.
#[derive(Clone, Copy, Debug)]
pub(super) enum Side {
    Events,
    Clients,
}

/// Connections the kernel may queue for `accept` (it caps this at `net.core.somaxconn`).
const BACKLOG: libc::c_int = 4096;

/// Raises a bound listener's accept queue from the standard library's 128: thousands of
/// clients connecting at once would otherwise see SYNs dropped and retried a second later.
/// (`listen` again on a listening socket only changes the backlog.)
pub(super) fn deepen_backlog(listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor the listener owns; no memory is shared.
    unsafe {
        libc::listen(listener.as_raw_fd(), BACKLOG);
    }
}

impl Server {
    pub(super) fn accept(&mut self, side: Side, now: Instant) {
        if self.accept_paused_until.is_some() {
            return;
        }
        self.accepts_left[side as usize] = false;
        let mut failures = 0;
        for _ in 0..ACCEPT_BATCH {
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
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    if !std::mem::replace(&mut self.out_of_fds, true) {
                        log::warn!("out of file descriptors or memory ({e}): pausing accepts {ACCEPT_PAUSE:?} at a time until one succeeds");
                    }
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return;
                }
                // Failures of one connection (aborted before accept, network errors passed
                // on by accept): the next queued one may be fine, and with edge-triggered
                // readiness stopping here would strand it. Only a run of failures pauses.
                Err(e) => {
                    warn_limited!(self.warns, Warn::Accept, now, "accept on {side:?}: {e}");
                    failures += 1;
                    if failures >= 16 {
                        self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                        return;
                    }
                }
            }
        }
        // The batch is used up: the queue may hold more, and readiness is edge-triggered.
        self.accepts_left[side as usize] = true;
    }

    /// Goes on accepting where a batch stopped in an earlier turn.
    pub(super) fn accept_left(&mut self, now: Instant) {
        for side in [Side::Events, Side::Clients] {
            if self.accepts_left[side as usize] {
                self.accept(side, now);
            }
        }
        if std::mem::take(&mut self.scrapes_left) {
            self.accept_scrapers(now);
        }
    }

    fn admit(&mut self, side: Side, mut stream: TcpStream, addr: SocketAddr, now: Instant) {
        let serial = self.serial();
        if let Side::Clients = side {
            if self.pending_ids >= self.cfg.max_unidentified || self.clients >= self.cfg.max_clients
            {
                self.evict_unidentified(now);
            }
        }
        let (role, interest) = match side {
            Side::Events if self.sources.len() >= MAX_SOURCES => {
                self.stats.clients_rejected += 1;
                warn_limited!(
                    self.warns,
                    Warn::Rejected,
                    now,
                    "event source #{serial} ({addr}) rejected: {MAX_SOURCES} already connected"
                );
                return;
            }
            Side::Clients if self.clients >= self.cfg.max_clients => {
                self.stats.clients_rejected += 1;
                warn_limited!(
                    self.warns,
                    Warn::Rejected,
                    now,
                    "client #{serial} ({addr}) rejected: --max-clients {} reached",
                    self.cfg.max_clients
                );
                return;
            }
            Side::Events => (Role::Source, Interest::READABLE),
            Side::Clients => {
                // Batches are already large; do not hold the tail of a burst back.
                let _ = stream.set_nodelay(true);
                let role = Role::Pending {
                    lines: Box::new(LineSplitter::new(conn::MAX_ID_LINE, conn::MAX_ID_LINE)),
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
            warn_limited!(
                self.warns,
                Warn::Accept,
                now,
                "cannot register #{serial} ({addr}): {e}"
            );
            return;
        }
        let conn = entry.insert(Conn::new(stream, serial, role, now));
        let at = conn.at(key);
        match side {
            Side::Events => {
                debug!("event source #{serial} connected from {addr}");
                self.sources.push(Source {
                    conn: at,
                    lines: LineSplitter::new(conn::MAX_EVENT_LINE, conn::SOURCE_CHUNK),
                    readable: true,
                    eof: false,
                    failed: false,
                });
                self.window.suspend_loss_detection(self.sources.len() > 1);
                if self.session.is_none() && !self.ending {
                    self.start_session(now);
                }
                self.work_left = true;
            }
            Side::Clients => {
                trace!("client #{serial} connected from {addr}");
                self.clients += 1;
                self.pending_ids += 1;
                self.unidentified.push_back(at);
                if self.unidentified.len() > 2 * self.pending_ids + 64 {
                    // Entries of identified or closed connections pile up behind an old
                    // one that is still waiting: drop them, so the queue stays bounded.
                    let conns = &self.conns;
                    self.unidentified.retain(|r| is_pending(conns, *r));
                }
            }
        }
    }

    /// Makes room for a new client connection: the oldest connection still without an id
    /// gives way (after a last look for its id, which may have arrived meanwhile).
    fn evict_unidentified(&mut self, now: Instant) {
        while let Some(r) = self.unidentified.pop_front() {
            if !is_pending(&self.conns, r) {
                continue;
            }
            self.read_id(r.key, now);
            if is_pending(&self.conns, r) {
                let name = self.conns[r.key].name();
                self.stats.clients_evicted += 1;
                warn_limited!(
                    self.warns,
                    Warn::BadId,
                    now,
                    "{name} closed: no id yet, gave way to a new connection (--max-unidentified {})",
                    self.cfg.max_unidentified
                );
                self.close(r.key, now);
                return;
            }
            if self.pending_ids < self.cfg.max_unidentified && self.clients < self.cfg.max_clients {
                return; // it identified: room enough
            }
        }
    }

    // ---- connection readiness --------------------------------------------------------

    pub(super) fn on_ready(
        &mut self,
        key: usize,
        readable: bool,
        writable: bool,
        hung_up: bool,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // spurious: already removed
        };
        if conn.closing {
            return;
        }
        if writable {
            conn.blocked = false;
        }
        if writable && conn.out.pending() > 0 {
            self.mark_dirty(key, now);
        }
        let conn = &mut self.conns[key];
        match conn.role {
            Role::Source if readable => {
                let at = conn.at(key);
                if let Some(src) = self.sources.iter_mut().find(|s| s.conn == at) {
                    src.readable = true;
                    self.work_left = true;
                }
            }
            Role::Pending { .. } if readable => self.read_id(key, now),
            // A half-closed client is written to until its peer is gone for good.
            Role::Client { .. } if hung_up && conn.input_closed => {
                debug!("{} disconnected (hang-up)", conn.name());
                self.close(key, now);
            }
            Role::Client { .. } if readable && !conn.input_closed => self.read_client(key, now),
            Role::Scraper(_) => self.on_scraper(key, now),
            _ => {}
        }
    }

    /// Reads a pending client's id line; identifies it, or closes it.
    fn read_id(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        let name = conn.name();
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
                debug!("{name} identified as user {user}");
                // Whatever followed the id is discarded, up to `WouldBlock` (edge-triggered).
                self.read_client(key, now);
            }
            Err(None) => {
                debug!("{name} disconnected before sending an id");
                self.close(key, now);
            }
            Err(Some(why)) => {
                self.stats.clients_bad_id += 1;
                warn_limited!(
                    self.warns,
                    Warn::BadId,
                    now,
                    "{name} closed: invalid id {why:?}"
                );
                self.close(key, now);
            }
        }
    }

    /// Discards an identified client's input; notices its disconnect or its half-close.
    fn read_client(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        debug_assert!(matches!(conn.role, Role::Client { .. }));
        let (n, state) = conn::discard(&mut conn.stream, CLIENT_READ_BUDGET);
        self.stats.bytes_in += n as u64;
        match state {
            Filled::WouldBlock => {}
            Filled::Bytes(_) => self.unread.push(conn.at(key)),
            // End of input is not a disconnect: the client may still be reading.
            Filled::Closed(None) => {
                debug!("{} half-closed: still delivering to it", conn.name());
                conn.input_closed = true;
            }
            Filled::Closed(Some(e)) => {
                let name = conn.name();
                warn_limited!(self.warns, Warn::ConnError, now, "{name}: {e}");
                debug!("{name} disconnected");
                self.close(key, now);
            }
        }
    }

    pub(super) fn drain_unread(&mut self, now: Instant) {
        if self.unread.is_empty() {
            return;
        }
        let mut unread = std::mem::take(&mut self.unread);
        for &r in &unread {
            if self.live(r).is_some() {
                self.read_client(r.key, now);
            }
        }
        unread.clear();
        if self.unread.is_empty() {
            self.unread = unread; // keep the capacity
        }
    }
}

/// Whether `r` is a live connection still waiting for its id.
fn is_pending(conns: &Slab<Conn>, r: ConnRef) -> bool {
    conns.get(r.key).is_some_and(|c| {
        c.serial == r.serial && !c.closing && matches!(c.role, Role::Pending { .. })
    })
}
