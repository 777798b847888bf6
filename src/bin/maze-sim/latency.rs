//! Delivery latency: from the source's write of the batch that carried an event to the
//! verifier's read of its notification.
//!
//! The source stamps each batch it finishes writing with (its highest seq, the time), at
//! most one stamp per `COALESCE` (a later batch within it only raises the seq, so its
//! events count from the earlier time: at most that much too long). The verifier takes the
//! new stamps once per read call, looks up each line's stamp (a cached position, the lines
//! of one connection come in seq order), and records one histogram value per run of lines
//! read together with the same stamp, with the clock read once per read call. Events of
//! a batch written in several pieces (only batches over 60 KiB) count from its last piece,
//! so they may read as faster than they were, never slower.

use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Stamps closer together than this are merged.
const COALESCE: Duration = Duration::from_micros(20);

/// The source's side: stamps batches as they are written.
#[derive(Clone, Default)]
pub struct Stamps(Arc<Mutex<Vec<(u64, Instant)>>>);

impl Stamps {
    /// The batch up to `seq` has just been written.
    pub fn sent(&self, seq: u64, at: Instant) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match v.last_mut() {
            Some(last) if at.duration_since(last.1) < COALESCE => last.0 = last.0.max(seq),
            _ => v.push((seq, at)),
        }
    }
}

/// The verifier's side: stamps seen so far, and the histograms.
pub struct Latency {
    shared: Stamps,
    /// (highest seq, sent at), in seq order.
    stamps: VecDeque<(u64, Instant)>,
    /// Where the last lookup found its stamp.
    cursor: usize,
    /// The run of lines with one stamp, not yet recorded: (stamp index, count).
    run: Option<(usize, u64)>,
    /// Every value of the run, in microseconds.
    pub all: Histogram<u64>,
    /// Since the last progress line.
    pub interval: Histogram<u64>,
}

impl Latency {
    pub fn new() -> Self {
        let hist = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Latency {
            shared: Stamps::default(),
            stamps: VecDeque::new(),
            cursor: 0,
            run: None,
            all: hist(),
            interval: hist(),
        }
    }

    /// A new session (seqs start again at 1): stamps from `shared` from now on.
    pub fn restart(&mut self, shared: Stamps) {
        self.shared = shared;
        self.stamps.clear();
        self.cursor = 0;
        self.run = None;
    }

    /// Takes the stamps written since the last call (once per read call).
    pub fn sync(&mut self) {
        let mut v = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        self.stamps.extend(v.drain(..));
    }

    /// One line of `seq` read in the current read call.
    pub fn line(&mut self, seq: u64, now: Instant) {
        let Some(i) = self.find(seq) else {
            return; // not stamped (yet): nothing to measure against
        };
        match &mut self.run {
            Some((j, n)) if *j == i => *n += 1,
            _ => {
                self.record(now);
                self.run = Some((i, 1));
            }
        }
    }

    /// The end of a read call: records the run of lines in progress.
    pub fn record(&mut self, now: Instant) {
        if let Some((i, n)) = self.run.take() {
            let us = now.saturating_duration_since(self.stamps[i].1).as_micros() as u64;
            let us = us.clamp(1, 3_600_000_000);
            let _ = self.all.record_n(us, n);
            let _ = self.interval.record_n(us, n);
        }
    }

    /// The stamp whose batch holds `seq`: the first with a highest seq at or above it.
    fn find(&mut self, seq: u64) -> Option<usize> {
        let fits =
            |i: usize, s: &VecDeque<(u64, Instant)>| s[i].0 >= seq && (i == 0 || s[i - 1].0 < seq);
        if self.cursor < self.stamps.len() && fits(self.cursor, &self.stamps) {
            return Some(self.cursor);
        }
        let i = self.stamps.partition_point(|&(hi, _)| hi < seq);
        (i < self.stamps.len()).then(|| {
            self.cursor = i;
            i
        })
    }

    /// Drops stamps older than `age` (a line that late has failed the run anyway).
    pub fn prune(&mut self, now: Instant, age: Duration) {
        if self.run.is_some() {
            return;
        }
        let mut dropped = 0;
        while self
            .stamps
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.1) > age)
        {
            self.stamps.pop_front();
            dropped += 1;
        }
        self.cursor = self.cursor.saturating_sub(dropped);
    }
}

/// `p50_us=… p99_us=… p999_us=… max_us=…` of `h` (`prefix` before each key).
pub fn summary(h: &Histogram<u64>, prefix: &str) -> String {
    format!(
        "{prefix}p50_us={} {prefix}p99_us={} {prefix}p999_us={} {prefix}max_us={}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_counts_from_the_stamp_of_its_batch() {
        let stamps = Stamps::default();
        let t0 = Instant::now();
        stamps.sent(10, t0);
        stamps.sent(20, t0 + Duration::from_millis(5));
        let mut l = Latency::new();
        l.restart(stamps.clone());
        l.sync();
        let read = t0 + Duration::from_millis(7);
        for seq in [3, 9, 10, 11, 20] {
            l.line(seq, read);
        }
        l.line(21, read); // not sent yet: not measured
        l.record(read);
        assert_eq!(l.all.len(), 5);
        // 3 lines from the first batch at 7 ms, 2 from the second at 2 ms.
        assert_eq!(l.all.count_between(6_900, 7_100), 3);
        assert_eq!(l.all.count_between(1_900, 2_100), 2);
    }

    #[test]
    fn close_stamps_merge() {
        let stamps = Stamps::default();
        let t0 = Instant::now();
        stamps.sent(10, t0);
        stamps.sent(20, t0 + Duration::from_micros(5));
        assert_eq!(stamps.0.lock().unwrap().len(), 1);
        assert_eq!(stamps.0.lock().unwrap()[0].0, 20);
    }
}
