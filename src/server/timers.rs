//! Timers, checked once per loop turn: the accept pause, the gap timeout, id and stall
//! timeouts (every 50 ms while any could expire), the stats line, and handing memory back
//! to the OS after a burst.

use super::*;

impl Server {
    pub(super) fn timers(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
            self.accept(Side::Events, now);
            self.accept(Side::Clients, now);
        }
        if let Some(gap) = self.cfg.gap_timeout {
            // Bytes a source already sent are not lost: after a turn that came late (a
            // starved process), read them before deciding anything is missing.
            let unread = self.sources.iter().any(|s| s.readable || s.eof);
            if !self.paused() && !unread && self.held.is_none() {
                if let Some(through) = self.gap_marks.due(now, gap) {
                    // Every hole below `through` has been missing for the timeout.
                    if self.window.next() <= through {
                        self.window.skip_gaps_through(through);
                        self.work_left = true;
                    }
                }
            }
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            if self.deadlines_pending() {
                self.check_timeouts(now);
            }
            let burst_over = self.trim_wanted && self.pending_total < TRIM_AFTER / 16;
            if (burst_over || self.release_wanted)
                && now.duration_since(self.last_trim) >= TRIM_EVERY
            {
                self.last_trim = now;
                let released = self.release_idle_buffers(now);
                // A burst still pending elsewhere keeps its own request.
                self.trim_wanted &= !burst_over;
                if burst_over || released > 0 {
                    release_freed_memory();
                }
            }
        }
        if let Some(at) = self.next_stats.filter(|&t| now >= t) {
            self.next_stats = self.cfg.stats_interval.map(|i| (at + i).max(now));
            self.log_stats();
        }
        self.warns.roll(now);
    }

    /// Releases the write buffers idle for `RELEASE_IDLE` beyond what an idle buffer
    /// keeps; `release_wanted` stays set while others are still to go. Returns how many.
    fn release_idle_buffers(&mut self, now: Instant) -> usize {
        let keep = outbuf::idle_keep(self.clients, self.cfg.total_buffer_limit);
        let (mut released, mut waiting) = (0, false);
        for (_, conn) in self.conns.iter_mut() {
            if !conn.out.holds_idle_excess(keep) {
                continue;
            }
            // With nothing pending, this is the last write that took bytes.
            if now.saturating_duration_since(conn.stalled_since) >= RELEASE_IDLE {
                conn.out.shrink_idle(keep);
                released += 1;
            } else {
                waiting = true;
            }
        }
        self.release_wanted = waiting;
        released
    }

    /// Closes connections past their id deadline and clients stalled past the limit.
    fn check_timeouts(&mut self, now: Instant) {
        let stall = self.cfg.stall_timeout;
        let mut expired = Vec::new();
        let mut scrapers = Vec::new();
        for (key, conn) in self.conns.iter() {
            if conn.closing {
                continue;
            }
            match conn.role {
                Role::Pending { deadline, .. } if now >= deadline => expired.push((key, false)),
                Role::Scraper(ref s) if now >= s.deadline => scrapers.push(key),
                Role::Client { .. }
                    if conn.out.pending() > 0
                        && now.saturating_duration_since(conn.stalled_since) >= stall =>
                {
                    expired.push((key, true))
                }
                _ => {}
            }
        }
        for key in scrapers {
            debug!(
                "{} closed: not done within its deadline",
                self.conns[key].name()
            );
            self.close(key, now);
        }
        for (key, stalled) in expired {
            let name = self.conns[key].name();
            if stalled {
                self.stats.clients_stalled += 1;
                warn_limited!(
                    self.warns,
                    Warn::Stalled,
                    now,
                    "{name} closed: took no bytes for {stall:?} with {} pending",
                    self.conns[key].out.pending()
                );
            } else {
                self.stats.clients_bad_id += 1;
                warn_limited!(
                    self.warns,
                    Warn::BadId,
                    now,
                    "{name} closed: no id within {:?}",
                    self.cfg.auth_timeout
                );
            }
            self.close(key, now);
        }
    }

    fn log_stats(&mut self) {
        info!(
            "stats: {} | sources={} clients={} unidentified={} window={}/{} waiting={} window_bytes={}/{} disorder={} next_seq={} longest_turn_us={}",
            self.stats,
            self.sources.len(),
            self.clients,
            self.pending_ids,
            self.window.capacity(),
            self.window.max(),
            self.waiting(),
            self.window.bytes(),
            self.window.budget(),
            self.window.disorder(),
            self.window.next_seq(),
            self.longest_turn.as_micros()
        );
        self.longest_turn = Duration::ZERO;
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
