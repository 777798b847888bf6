//! Delivery latency: from the source's write of the batch that carried an event to the
//! verifier's read of its notification.
//!
//! After each write the source stamps (the highest seq of the batches now written in
//! full, the time), at most one stamp per `COALESCE` (a later write within it only raises
//! the seq, so its events count from the earlier time: at most that much too long). The
//! verifier takes the new stamps once per read call, finds the stamp of each stamp run
//! of lines read (the lines between two seqs the source stamps: it hands the model each
//! such seq with the events, feed.rs; found from the connection's own cursor: its lines
//! come in seq order), and records one histogram value per run of lines read together
//! with the same stamp, with the clock read once per read call. Events of a batch written in several pieces (batches over 60 KiB, or cut by a
//! full-speed write) count from the write that completed their batch, so they may read as
//! faster than they were, never slower.

use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Stamps closer together than this are merged.
const COALESCE: Duration = Duration::from_micros(20);

/// The source's side: stamps batches as they are written.
#[derive(Clone, Default)]
pub struct Stamps(Arc<Mutex<StampLog>>);

#[derive(Default)]
struct StampLog {
    /// Not yet taken by the verifier.
    new: Vec<(u64, Instant)>,
    /// The highest seq stamped so far.
    last: u64,
}

impl Stamps {
    /// Every seq up to `seq` has been written, the last of them just now.
    pub fn sent(&self, seq: u64, at: Instant) {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seq <= log.last {
            return; // nothing new written in full
        }
        log.last = seq;
        match log.new.last_mut() {
            Some(last) if at.duration_since(last.1) < COALESCE => last.0 = seq,
            _ => log.new.push((seq, at)),
        }
    }
}

/// Lines read in one read call that share one stamp: seqs in `after + 1..=upto`.
struct Run {
    after: u64,
    upto: u64,
    sent: Instant,
    lines: u64,
}

/// The verifier's side: stamps seen so far, and the histograms.
pub struct Latency {
    shared: Stamps,
    /// (highest seq, sent at), in seq order.
    stamps: VecDeque<(u64, Instant)>,
    /// Stamps dropped from the front so far: stamp `k` is `stamps[k - dropped]`.
    dropped: u64,
    /// The run of lines with one stamp, not yet recorded.
    run: Option<Run>,
    /// Runs recorded whose values fall in one histogram bucket, not yet recorded:
    /// (the bucket's lowest value, count). At full speed most runs of a read call do.
    pending: Option<(u64, u64)>,
    /// Every value before the current interval, in microseconds.
    all: Histogram<u64>,
    /// Since the last progress line.
    interval: Histogram<u64>,
}

impl Latency {
    pub fn new() -> Self {
        let hist = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Latency {
            shared: Stamps::default(),
            stamps: VecDeque::new(),
            dropped: 0,
            run: None,
            pending: None,
            all: hist(),
            interval: hist(),
        }
    }

    /// A new session (seqs start again at 1): stamps from `shared` from now on.
    pub fn restart(&mut self, shared: Stamps) {
        self.shared = shared;
        self.dropped += self.stamps.len() as u64;
        self.stamps.clear();
        self.run = None;
    }

    /// Takes the stamps written since the last call (once per read call).
    pub fn sync(&mut self) {
        let mut log = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        self.stamps.extend(log.new.drain(..));
    }

    /// One line of `seq` read in the current read call. `cursor` is the reading
    /// connection's own: its lines come in seq order, so its stamp only moves forward.
    /// Most lines belong to the run in progress: two comparisons.
    #[inline]
    pub fn line(&mut self, seq: u64, now: Instant, cursor: &mut u64) {
        self.lines_of(seq, 1, now, cursor);
    }

    /// `n` lines read in the current read call whose seqs are above stamp seq `after`
    /// and at most the next stamp's: one stamp times them all, the one of seq
    /// `after + 1`.
    #[inline]
    pub fn lines(&mut self, after: u64, n: u64, now: Instant, cursor: &mut u64) {
        self.lines_of(after + 1, n, now, cursor);
    }

    #[inline]
    fn lines_of(&mut self, seq: u64, n: u64, now: Instant, cursor: &mut u64) {
        match &mut self.run {
            Some(r) if seq > r.after && seq <= r.upto => r.lines += n,
            _ => self.new_run(seq, n, now, cursor),
        }
    }

    fn new_run(&mut self, seq: u64, n: u64, now: Instant, cursor: &mut u64) {
        let mut k = (*cursor).max(self.dropped);
        while self
            .stamps
            .get((k - self.dropped) as usize)
            .is_some_and(|s| s.0 < seq)
        {
            k += 1;
        }
        let i = (k - self.dropped) as usize;
        let Some(&(upto, sent)) = self.stamps.get(i) else {
            return; // not stamped (yet): nothing to measure against
        };
        *cursor = k;
        self.record(now);
        let after = match i {
            0 => 0,
            _ => self.stamps[i - 1].0,
        };
        self.run = Some(Run {
            after,
            upto,
            sent,
            lines: n,
        });
    }

    /// The end of a run (a new stamp, or the end of a read call).
    pub fn record(&mut self, now: Instant) {
        if let Some(r) = self.run.take() {
            let us = now.saturating_duration_since(r.sent).as_micros() as u64;
            let bucket = self.interval.lowest_equivalent(us.clamp(1, 3_600_000_000));
            match &mut self.pending {
                Some((b, n)) if *b == bucket => *n += r.lines,
                _ => {
                    self.flush();
                    self.pending = Some((bucket, r.lines));
                }
            }
        }
    }

    fn flush(&mut self) {
        if let Some((bucket, n)) = self.pending.take() {
            let _ = self.interval.record_n(bucket, n);
        }
    }

    /// The progress line's summary of the values since the last one, which then join
    /// the total (one histogram recorded per run, the other added once per interval).
    pub fn end_interval(&mut self) -> String {
        self.flush();
        let line = summary(&self.interval, "");
        self.fold();
        line
    }

    /// Every value recorded.
    pub fn total(&mut self) -> &Histogram<u64> {
        self.fold();
        &self.all
    }

    fn fold(&mut self) {
        self.flush();
        let _ = self.all.add(&self.interval);
        self.interval.reset();
    }

    /// Drops stamps older than `age` (a line that late has failed the run anyway).
    pub fn prune(&mut self, now: Instant, age: Duration) {
        if self.run.is_some() {
            return;
        }
        while self
            .stamps
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.1) > age)
        {
            self.stamps.pop_front();
            self.dropped += 1;
        }
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
        // Two connections, each with its own cursor, reading in seq order.
        let (mut a, mut b) = (0, 0);
        for seq in [3, 9, 11, 20] {
            l.line(seq, read, &mut a);
        }
        l.line(10, read, &mut b);
        l.line(21, read, &mut b); // not sent yet: not measured
        l.record(read);
        let first = l.end_interval();
        assert!(first.starts_with("p50_us=7"), "{first}");
        stamps.sent(21, t0 + Duration::from_millis(8));
        l.sync();
        l.line(21, read + Duration::from_millis(10), &mut b);
        l.record(read + Duration::from_millis(10));
        let all = l.total();
        assert_eq!(all.len(), 6);
        // 3 lines from the first batch at 7 ms, 2 from the second at 2 ms, 1 at 9 ms.
        assert_eq!(all.count_between(6_900, 7_100), 3);
        assert_eq!(all.count_between(1_900, 2_100), 2);
        assert_eq!(all.count_between(8_900, 9_100), 1);
    }

    #[test]
    fn runs_in_one_bucket_are_recorded_once_and_counted_in_full() {
        let stamps = Stamps::default();
        let t0 = Instant::now();
        // Stamps 30 us apart, read 2 s later: every run falls in one bucket.
        for k in 1..=100u64 {
            stamps.sent(k, t0 + Duration::from_micros(k * 30));
        }
        let mut l = Latency::new();
        l.restart(stamps.clone());
        l.sync();
        let (now, mut c) = (t0 + Duration::from_secs(2), 0);
        for seq in 1..=100 {
            l.line(seq, now, &mut c);
        }
        l.record(now);
        let all = l.total();
        assert_eq!(all.len(), 100);
        // 3 ms of stamps at 2 s fall in a few buckets of about 1 ms.
        assert!(all.iter_recorded().count() <= 4);
        assert!(
            all.max() >= 1_999_000 && all.max() <= 2_001_000,
            "{}",
            all.max()
        );
    }

    /// Lines counted per stamp run (`lines`) give the histogram that timing each line
    /// (`line`) gives, when every stamp's seq is one of the run bounds: some stamps
    /// merged, some lines read before their stamp, reads of random length.
    #[test]
    fn lines_counted_per_run_are_timed_as_each_line() {
        let mut rng = crate::gen::Rng::new(11);
        let stamps = Stamps::default();
        let t0 = Instant::now();
        // Run bounds: every seq the source stamps after a write.
        let mut bounds = vec![0u64];
        for k in 1..=300u64 {
            let seq = bounds[bounds.len() - 1] + 1 + rng.below(40);
            bounds.push(seq);
            // 10-40 us apart: about half merge.
            stamps.sent(seq, t0 + Duration::from_micros(k * 25 + rng.below(15)));
        }
        let (mut each, mut runs) = (Latency::new(), Latency::new());
        each.restart(stamps.clone());
        runs.restart(Stamps::default());
        each.sync();
        runs.stamps = each.stamps.clone();
        let (mut c1, mut c2) = (0, 0);
        let mut seq = 0;
        let last = bounds[bounds.len() - 1] + 50; // some lines never stamped
        let mut now = t0 + Duration::from_millis(5);
        while seq < last {
            now += Duration::from_micros(rng.below(3_000));
            let mut counted: Vec<(u64, u64)> = Vec::new();
            for _ in 0..rng.below(60) {
                seq += 1 + rng.below(4);
                each.line(seq, now, &mut c1);
                let after = bounds
                    .iter()
                    .copied()
                    .filter(|&b| b < seq)
                    .max()
                    .unwrap_or(0);
                match counted.last_mut() {
                    Some((a, n)) if *a == after => *n += 1,
                    _ => counted.push((after, 1)),
                }
            }
            for (after, n) in counted {
                runs.lines(after, n, now, &mut c2);
            }
            each.record(now);
            runs.record(now);
        }
        let buckets = |l: &mut Latency| -> Vec<(u64, u64)> {
            let h = l.total();
            let v = h.iter_recorded();
            v.map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect()
        };
        let want = buckets(&mut each);
        assert!(want.len() > 50, "{}", want.len());
        assert_eq!(buckets(&mut runs), want);
    }

    #[test]
    fn close_stamps_merge() {
        let stamps = Stamps::default();
        let t0 = Instant::now();
        stamps.sent(10, t0);
        stamps.sent(20, t0 + Duration::from_micros(5));
        stamps.sent(20, t0 + Duration::from_millis(1)); // nothing new: no stamp
        let log = stamps.0.lock().unwrap();
        assert_eq!(log.new, [(20, t0)]);
    }
}
