//! Sessions: one starts when an event source connects while none is connected and ends
//! when the last one leaves (window flushed, seq and follow graph reset unless
//! `--keep-state`).

use super::*;

/// The session in progress (its number is the server's `sessions` count).
pub(super) struct Session {
    pub(super) started: Instant,
    pub(super) at_start: Counters,
    /// Seqs skipped, counted here: the process's count stops at its ceiling (two jumps
    /// across the sequence space pass it), and a difference from it would not.
    pub(super) skipped: u64,
}

impl Server {
    pub(super) fn start_session(&mut self, now: Instant) {
        self.sessions += 1;
        info!(
            "session {} started (next seq {})",
            self.sessions,
            self.window.next_seq()
        );
        self.session = Some(Session {
            started: now,
            at_start: self.stats,
            skipped: 0,
        });
    }

    pub(super) fn close_source(&mut self, i: usize, now: Instant) {
        let src = self.sources.swap_remove(i);
        self.window.suspend_loss_detection(self.sources.len() > 1);
        debug!("event source #{} disconnected", src.conn.serial);
        self.close(src.conn.key, now);
        if !self.sources.is_empty() {
            return;
        }
        if self.cfg.keep_state {
            self.flush_everything(now);
            self.log_session_end(now);
        } else {
            // Deliver what waits, gaps skipped, then reset (in `pump`).
            self.ending = true;
            self.window.start_flush();
            self.work_left = true;
        }
    }

    pub(super) fn end_session(&mut self, now: Instant) {
        self.window.reset();
        self.gap_marks.clear();
        self.trim_wanted = true;
        self.router.clear_follows();
        self.ending = false;
        self.flush_everything(now);
        self.log_session_end(now);
        if !self.sources.is_empty() {
            self.start_session(now);
        }
    }

    fn log_session_end(&mut self, now: Instant) {
        if let Some(s) = self.session.take() {
            let counts = Counters {
                seqs_skipped: s.skipped,
                ..self.stats.since(&s.at_start)
            };
            info!(
                "session {} ended after {:.3}s: {counts}",
                self.sessions,
                now.duration_since(s.started).as_secs_f64(),
            );
        }
    }
}
