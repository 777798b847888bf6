//! The pipeline, run by the pump: source bytes -> lines -> events -> window -> router
//! -> client buffers, stopping for backpressure or at the turn's read budget.

use super::*;

/// An event source's read side. Kept outside the slab so a line can be parsed while the
/// rest of the server is borrowed for delivery.
pub(super) struct Source {
    pub(super) conn: ConnRef,
    pub(super) lines: LineSplitter,
    /// The socket may hold unread bytes (set on readiness, cleared on `WouldBlock`).
    pub(super) readable: bool,
    /// The peer closed; buffered lines are still to be processed.
    pub(super) eof: bool,
    /// The stream ended in a reset or an error, not a clean close: an unterminated last
    /// line is a line cut short, and is discarded.
    pub(super) failed: bool,
}

/// Canonical events stored in one step at most before delivery resumes.
const RUN: usize = 64;

/// What a step's last source line turned out to be.
enum Taken {
    /// A canonical event, already counted and in the window.
    Stored,
    /// A canonical event, counted, that the window did not store.
    Refused(Event, Insert),
    Event(Event),
    NoOp(u64, Malformed),
    Junk,
    TooLong,
}

impl Server {
    /// Moves events from the sources through the window to the client buffers until
    /// there is nothing more, the read budget is spent, or backpressure holds.
    pub(super) fn pump(&mut self, now: Instant) {
        self.work_left = false;
        let mut budget = READ_BUDGET;
        let mut pops = 0;
        let notes_by = self.stats.notifications + NOTE_BUDGET;
        let bytes_by = self.appended + OUTPUT_BUDGET;
        while !self.paused() {
            if pops == POP_BUDGET
                || self.stats.notifications >= notes_by
                || self.appended >= bytes_by
            {
                // A skip or a session end can release a million waiting events at once, and
                // a broadcast reaches every client: the work goes out over several turns,
                // not in one long one.
                self.work_left = true;
                return;
            }
            pops += 1;
            if let Some(pop) = self.window.pop() {
                match pop {
                    Pop::Event(ev) if ev.canonical => self.deliver(&ev, None, now),
                    Pop::Event(ev) => self.deliver_kept(&ev, now),
                    Pop::Skipped { from, through, why } => self.skipped(from, through, why, now),
                    Pop::Wrapped => {
                        warn_limited!(
                            self.warns,
                            Warn::Skipped,
                            now,
                            "seq {} passed (delivered or skipped): the sequence space is used up, next seq is 1",
                            u64::MAX
                        );
                    }
                }
                continue;
            }
            if let Some((ev, payload)) = self.held.take() {
                // `pop` found nothing more to do: the room was made, or what was ready to
                // go before it went. Offered again, it is stored (room), or judged as if it
                // had come alone (deferred).
                if let Some(payload) = payload {
                    self.raw.clear();
                    self.raw.extend_from_slice(&payload);
                }
                let outcome = offer(&mut self.window, &mut self.gap_since, ev, &self.raw, now);
                debug_assert_ne!(outcome, Insert::Deferred, "nothing was ready");
                self.settle(ev, outcome, now);
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
                Some(Taken::Stored) => {}
                Some(taken) => self.ingest(taken, now),
                None => return,
            }
        }
    }

    /// The next line from any source, round-robin by read chunk, reading as needed.
    fn next_line(&mut self, budget: &mut usize, now: Instant) -> Option<Taken> {
        let mut idle = 0;
        while idle < self.sources.len() {
            // Wrapped by comparison, not `%`: a division per line costs more than the rest
            // of this loop.
            if self.next_source >= self.sources.len() {
                self.next_source = 0;
            }
            let i = self.next_source;
            let src = &mut self.sources[i];
            // The common case, a canonical event, is stored right here: moving it through
            // `Taken` and `ingest` cost more than storing it. Other lines are parsed again
            // by `take` (keeping this parse's result for them put it in memory on the hot
            // path too: +30 instructions per event in callgrind). A run of up to `RUN`
            // lines is stored before anything is delivered, so that storing and
            // delivering each go round their own loop, not alternate line by line.
            let mut stored = 0;
            while let Some(line) = src.lines.next_line() {
                if let Line::Full(bytes) = line {
                    match event::parse(bytes) {
                        Ok(ev) if ev.canonical => {
                            let (window, stats) = (&mut self.window, &mut self.stats);
                            let gap_since = &mut self.gap_since;
                            match store(window, stats, gap_since, ev, &[], now) {
                                Insert::Stored => {}
                                refused => return Some(Taken::Refused(ev, refused)),
                            }
                            stored += 1;
                            if stored == RUN {
                                break;
                            }
                            continue;
                        }
                        _ => {}
                    }
                }
                return Some(take(line, &mut self.raw));
            }
            if stored > 0 {
                return Some(Taken::Stored);
            }
            if src.eof {
                let tail = if src.failed {
                    if src.lines.buffered() > 0 || src.lines.is_discarding() {
                        self.stats.truncated_lines += 1;
                        warn_limited!(
                            self.warns,
                            Warn::ConnError,
                            now,
                            "event source #{}: unterminated last line discarded (the connection failed)",
                            src.conn.serial
                        );
                    }
                    None
                } else {
                    src.lines.take_tail().map(|l| take(l, &mut self.raw))
                };
                self.close_source(i, now);
                if tail.is_some() {
                    return tail;
                }
                // The last source moved into slot `i`, unvisited: the count of idle sources
                // seen in a row starts again, or a readable one could be left unread (and,
                // readiness being edge-triggered, stay unread).
                idle = 0;
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
            let conn = &mut self.conns[src.conn.key];
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
                            "event source #{}: {e}",
                            src.conn.serial
                        );
                        src.failed = true;
                    }
                    src.eof = true;
                }
            }
        }
        None
    }

    /// Counts and stores one taken line.
    fn ingest(&mut self, taken: Taken, now: Instant) {
        let (ev, outcome) = match taken {
            Taken::Stored => return,
            Taken::Refused(ev, outcome) => (ev, outcome),
            Taken::Event(ev) => (ev, self.store(ev, now)),
            Taken::NoOp(seq, why) => {
                self.stats.noop_events += 1;
                warn_limited!(
                    self.warns,
                    Warn::NoOp,
                    now,
                    "event {seq} is malformed ({why:?}): a no-op in its place"
                );
                let ev = Event::noop(seq);
                (ev, self.store(ev, now))
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
        self.settle(ev, outcome, now);
    }

    /// Acts on what the window did with `ev` (its line in `raw` if not canonical): counts
    /// and warns what it discarded, holds what must wait for room or for what is ready
    /// before it.
    fn settle(&mut self, ev: Event, outcome: Insert, now: Instant) {
        match outcome {
            Insert::Stored => {}
            Insert::FalseSkip => {
                self.stats.false_skips += 1;
                warn_limited!(
                    self.warns,
                    Warn::LateOrDuplicate,
                    now,
                    "event {} arrived after its seq was skipped (a false skip): discarded; learned disorder now {}",
                    ev.seq,
                    self.window.disorder()
                );
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
            Insert::Full | Insert::Deferred => {
                if outcome == Insert::Full {
                    self.window.make_room(&ev, &self.raw);
                }
                let payload = (!ev.canonical).then(|| self.raw.as_slice().into());
                self.held = Some((ev, payload));
            }
        }
    }

    /// [`store`] for an event whose payload, if not canonical, is in `raw`.
    fn store(&mut self, ev: Event, now: Instant) -> Insert {
        let (window, stats) = (&mut self.window, &mut self.stats);
        store(window, stats, &mut self.gap_since, ev, &self.raw, now)
    }

    /// [`deliver`](Self::deliver) for a non-canonical event: its payload as read comes
    /// from the window. Rare, so kept out of the pump's hot loop.
    #[cold]
    #[inline(never)]
    fn deliver_kept(&mut self, ev: &Event, now: Instant) {
        let mut kept = std::mem::take(&mut self.kept);
        kept.clear();
        let found = self.window.take_payload(ev.seq, &mut kept);
        self.deliver(ev, found.then_some(&kept[..]), now);
        self.kept = kept;
    }

    /// Applies one in-order event and appends its notification to every recipient.
    #[inline(always)]
    fn deliver(&mut self, ev: &Event, payload: Option<&[u8]>, now: Instant) {
        self.stats.events_delivered += 1;
        self.gap_since = now;
        if ev.kind == Kind::NoOp {
            return;
        }
        self.recipients.clear();
        self.router.apply(ev, &mut self.recipients);
        trace!("event {} to {} connections", ev.seq, self.recipients.len());
        if self.recipients.is_empty() {
            return;
        }
        // Rendered to end at MAX_RENDERED, with SHORT bytes after: a short note is copied
        // as a fixed SHORT-byte block from its start.
        let mut rendered = [0u8; MAX_RENDERED + SHORT];
        // Taken out of `self` so a full buffer can be written mid-loop.
        let mut scratch = std::mem::take(&mut self.note);
        let (note, short): (&[u8], _) = match payload {
            Some(p) => {
                scratch.clear();
                scratch.extend_from_slice(p);
                scratch.extend_from_slice(b"\r\n");
                (&scratch, None)
            }
            None => {
                let len = ev.render(rendered.first_chunk_mut().expect("sized")).len();
                let at = MAX_RENDERED - len;
                let block = rendered[at..].first_chunk::<SHORT>().expect("padded");
                (&rendered[at..MAX_RENDERED], (len <= SHORT).then_some(block))
            }
        };
        let limit = self.cfg.client_buffer_limit;
        let straight = outbuf::grows_straight(self.clients, self.cfg.total_buffer_limit);
        for i in 0..self.recipients.len() {
            let key = self.recipients[i];
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.closing {
                continue;
            }
            let conn = if conn.out.pending() + note.len() > WRITE_AT && !conn.blocked {
                self.write_out(key, now);
                match self.conns.get_mut(key) {
                    Some(conn) if !conn.closing => conn,
                    _ => continue,
                }
            } else {
                conn
            };
            if conn.out.pending() == 0 {
                // The stall clock starts when the bytes are due to be written.
                conn.stalled_since = now + self.cfg.flush_delay;
                self.with_output += 1;
            }
            match short {
                Some(block) => conn.out.append_short(block, note.len(), straight),
                None => conn.out.append(note, straight),
            }
            self.pending_total += note.len();
            self.stats.notifications += 1;
            if !conn.over_limit && conn.out.pending() > limit {
                conn.over_limit = true;
                self.over_limit += 1;
            }
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push_back(Dirty {
                    conn: conn.at(key),
                    due: now + self.cfg.flush_delay,
                });
            }
        }
        self.appended += (note.len() * self.recipients.len()) as u64;
        self.note = scratch;
    }

    pub(super) fn skipped(&mut self, from: u64, through: u64, why: Skip, now: Instant) {
        // Two jumps across the space skip more than a u64 counts: it stays at its ceiling.
        let n = through - from + 1;
        self.stats.seqs_skipped = self.stats.seqs_skipped.saturating_add(n);
        if let Some(session) = self.session.as_mut() {
            session.skipped = session.skipped.saturating_add(n);
        }
        let stalled = now.saturating_duration_since(self.gap_since);
        self.gap_since = now;
        let why = match why {
            Skip::SessionEnd => "the session ended",
            Skip::Room => {
                "to make room (an event --max-window or more ahead, or --window-bytes reached)"
            }
            Skip::Timeout => "missing for the gap timeout",
            Skip::Lost => "lost (more events waiting than twice the learned disorder + 512)",
        };
        warn_limited!(
            self.warns,
            Warn::Skipped,
            now,
            "seqs {from}..={through} skipped ({} seqs): {why}; {} ms without delivery, {} events waiting, learned disorder {}",
            through - from + 1,
            stalled.as_millis(),
            self.window.waiting(),
            self.window.disorder()
        );
    }
}

/// Counts `ev` as received and offers it to the window.
#[inline(always)]
fn store(
    window: &mut ReorderWindow,
    stats: &mut Counters,
    gap_since: &mut Instant,
    ev: Event,
    payload: &[u8],
    now: Instant,
) -> Insert {
    stats.events_received += 1;
    trace!("event {} received: {:?}", ev.seq, ev.kind);
    offer(window, gap_since, ev, payload, now)
}

/// Offers `ev` to the window (`payload`: the line as read, kept if not canonical); the
/// first event to wait starts the gap clock.
#[inline(always)]
fn offer(
    window: &mut ReorderWindow,
    gap_since: &mut Instant,
    ev: Event,
    payload: &[u8],
    now: Instant,
) -> Insert {
    let was_empty = window.waiting() == 0;
    let outcome = window.insert(ev, payload);
    if outcome == Insert::Stored && was_empty {
        *gap_since = now;
    }
    outcome
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
