//! The verifier: every watched client connection, on one `mio` poll (no thread per
//! client), checked line by line against the model.
//!
//! - `Exact` connections must receive their expected stream byte for byte, in order,
//!   nothing missing, nothing extra.
//! - `Suffix` connections (clients that join mid-run) may start anywhere, since the
//!   server only notifies connections identified before an event is delivered; from
//!   their first line on they must follow their user's expected stream with no gap.
//!
//! A failure names the connection, its user, the position, and expected vs. got.

use crate::expected::Owed;
use crate::gen::{leading_seq, Line};
use crate::latency::Latency;
use crate::model::{EventSource, Model};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Exact,
    Suffix,
}

/// One watched connection.
struct Watched {
    stream: Option<TcpStream>,
    user: u64,
    mode: Mode,
    /// The lines still owed, in order.
    expected: Owed,
    /// Suffix mode: the first line has been matched.
    started: bool,
    /// Suffix mode: the first line while it is incomplete.
    partial: Vec<u8>,
    received: u64,
    /// Where this connection's last line found its latency stamp (see [`Latency::lines`]).
    stamp: u64,
    /// Last time this connection had nothing to wait for, or received bytes.
    since: Instant,
}

/// Counts of a finished run.
#[derive(Clone, Copy, Default, Debug)]
pub struct Tally {
    pub notifications: u64,
    pub bytes: u64,
}

pub struct Verifier {
    poll: Poll,
    conns: Vec<Watched>,
    scratch: Vec<u8>,
    recipients: Vec<usize>,
    /// The line of the event being stepped.
    line: Line,
    pub tally: Tally,
    timeout: Duration,
    log_interval: Duration,
    /// Exact connections with something still expected (kept, not counted, per step).
    exact_waiting: usize,
    /// The clock, read once per poll round or read call, not per event.
    now: Instant,
    /// Delivery latency of every line verified.
    pub latency: Latency,
}

/// Why a run failed.
pub type Failure = String;

/// How long a failure report waits for the rest of the line it quotes.
const REST_OF_LINE: Duration = Duration::from_millis(200);

impl Verifier {
    pub fn new(timeout: Duration, log_interval: Duration) -> io::Result<Verifier> {
        Ok(Verifier {
            poll: Poll::new()?,
            conns: Vec::new(),
            scratch: vec![0; 64 * 1024],
            recipients: Vec::new(),
            line: Line::default(),
            tally: Tally::default(),
            timeout,
            log_interval,
            exact_waiting: 0,
            now: Instant::now(),
            latency: Latency::new(),
        })
    }

    /// Adds a connection that has sent its id; returns its index (for [`Model::watch`]).
    pub fn add(&mut self, stream: std::net::TcpStream, user: u64, mode: Mode) -> io::Result<usize> {
        let i = self.conns.len();
        self.conns.push(Watched {
            stream: None,
            user,
            mode,
            expected: Owed::default(),
            started: false,
            partial: Vec::new(),
            received: 0,
            stamp: 0,
            since: Instant::now(),
        });
        self.attach(i, stream)?;
        Ok(i)
    }

    /// Gives connection `i` a new socket (a churned client reconnecting).
    pub fn attach(&mut self, i: usize, stream: std::net::TcpStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(stream);
        self.poll
            .registry()
            .register(&mut stream, Token(i), Interest::READABLE)?;
        let w = &mut self.conns[i];
        if let Some(mut old) = w.stream.replace(stream) {
            let _ = self.poll.registry().deregister(&mut old);
        }
        w.started = false;
        w.partial.clear();
        w.expected.restart_line();
        Ok(())
    }

    /// Drops connection `i`'s socket (a churned client leaving).
    pub fn detach(&mut self, i: usize) {
        if let Some(mut old) = self.conns[i].stream.take() {
            let _ = self.poll.registry().deregister(&mut old);
        }
    }

    /// Runs until every `Exact` connection has received everything the model expects
    /// (and nothing more for `grace`), or fails. `tick` is called about every 50 ms.
    pub fn run<I: EventSource>(
        &mut self,
        model: &mut Model<I>,
        grace: Duration,
        mut tick: impl FnMut(&mut Verifier),
    ) -> Result<(), Failure> {
        let mut events = Events::with_capacity(1024);
        let started = Instant::now();
        let mut next_log = started + self.log_interval;
        let mut finished_at: Option<Instant> = None;
        let mut last_count = 0;
        loop {
            self.poll
                .poll(&mut events, Some(Duration::from_millis(50)))
                .map_err(|e| format!("poll: {e}"))?;
            for ev in events.iter() {
                self.read(ev.token().0, model)?;
            }
            let now = Instant::now();
            self.now = now;
            tick(self);
            if finished_at.is_none() {
                self.advance_idle(model);
                if model.exhausted && self.exact_done() {
                    finished_at = Some(now);
                }
            }
            if let Some(t) = finished_at {
                if now.duration_since(t) >= grace {
                    return Ok(());
                }
            }
            self.check_timeouts(now)?;
            self.latency.prune(now, self.timeout);
            if now >= next_log {
                let n = self.tally.notifications;
                log::info!(
                    "{} notifications verified ({:.0}/s), model at seq {}, latency {}",
                    n,
                    (n - last_count) as f64 / self.log_interval.as_secs_f64(),
                    model.last_seq,
                    self.latency.end_interval()
                );
                last_count = n;
                next_log = now + self.log_interval;
            }
        }
    }

    fn exact_done(&self) -> bool {
        self.exact_waiting == 0
    }

    /// While no exact connection waits for anything, step the model: events that notify
    /// no watched connection need no reply, and the end of the stream must be reached.
    fn advance_idle<I: EventSource>(&mut self, model: &mut Model<I>) {
        while !model.exhausted && self.exact_done() && self.step(model) {}
    }

    /// One event of the model: its line, rendered once, is owed to each recipient.
    /// Returns false when no event was there (yet).
    fn step<I: EventSource>(&mut self, model: &mut Model<I>) -> bool {
        let mut recipients = std::mem::take(&mut self.recipients);
        let stepped = model.step(&mut recipients);
        if let Some(ev) = stepped {
            if !recipients.is_empty() {
                self.line.render(&ev);
                let after = model.stamp_after();
                for &c in &recipients {
                    let w = &mut self.conns[c];
                    if w.expected.is_empty() {
                        w.since = self.now;
                        if w.mode == Mode::Exact {
                            self.exact_waiting += 1;
                        }
                    }
                    w.expected.push(&self.line, after);
                }
            }
        }
        self.recipients = recipients;
        stepped.is_some()
    }

    fn read<I: EventSource>(&mut self, i: usize, model: &mut Model<I>) -> Result<(), Failure> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.read_with(i, model, &mut scratch);
        self.scratch = scratch;
        result
    }

    fn read_with<I: EventSource>(
        &mut self,
        i: usize,
        model: &mut Model<I>,
        scratch: &mut [u8],
    ) -> Result<(), Failure> {
        loop {
            let Some(stream) = self.conns.get_mut(i).and_then(|w| w.stream.as_mut()) else {
                return Ok(());
            };
            let n = match stream.read(scratch) {
                Ok(0) => {
                    if self.conns[i].mode == Mode::Exact {
                        return Err(self.describe(i, "the server closed the connection"));
                    }
                    self.detach(i);
                    return Ok(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.describe(i, &format!("read failed: {e}"))),
            };
            self.tally.bytes += n as u64;
            self.now = Instant::now();
            self.latency.sync();
            self.conns[i].since = self.now;
            let mut data = &scratch[..n];
            let w = &mut self.conns[i];
            if w.mode == Mode::Suffix && !w.started {
                // Where a joining connection starts is its first line's seq.
                let Some(k) = memchr::memchr(b'\n', data) else {
                    w.partial.extend_from_slice(data);
                    continue;
                };
                let mut first = std::mem::take(&mut w.partial);
                first.extend_from_slice(&data[..=k]);
                data = &data[k + 1..];
                self.start(i, &first, model)?;
                self.compare(i, &first, model)?;
            }
            self.compare(i, data, model)?;
            // Read on until WouldBlock, even after a short read: stopping at one
            // (edge triggered, later bytes should bring a new event) lost an event with
            // 10,000 clients, and the run stalled.
            self.latency.record(self.now);
        }
    }

    /// A suffix connection's first line: lines before its seq are not owed to it.
    fn start<I: EventSource>(
        &mut self,
        i: usize,
        first: &[u8],
        model: &mut Model<I>,
    ) -> Result<(), Failure> {
        let seq = leading_seq(first).ok_or_else(|| {
            self.describe(
                i,
                &format!(
                    "got an unparsable line {:?}",
                    String::from_utf8_lossy(first)
                ),
            )
        })?;
        while !model.exhausted && model.last_seq < seq && self.step(model) {}
        let w = &mut self.conns[i];
        w.expected.skip_below(seq);
        w.started = true;
        Ok(())
    }

    /// Received bytes against the lines owed, in order, a read at a time: one `memcmp`,
    /// no line splitting (a line cut by a read goes on in the next).
    fn compare<I: EventSource>(
        &mut self,
        i: usize,
        data: &[u8],
        model: &mut Model<I>,
    ) -> Result<(), Failure> {
        // Every line the server can have sent is an event handed over already (see
        // feed.rs): owed bytes short of the data mean a failure, not a wait.
        while self.conns[i].expected.unmatched().len() < data.len()
            && !model.exhausted
            && self.step(model)
        {}
        let owed = self.conns[i].expected.unmatched();
        let n = owed.len().min(data.len());
        // Up to the first byte that differs (all of `n` when none does).
        let k = match data[..n] == owed[..n] {
            true => n,
            false => (data[..n].iter().zip(&owed[..n]))
                .position(|(a, b)| a != b)
                .unwrap_or(n),
        };
        let w = &mut self.conns[i];
        let was_waiting = !w.expected.is_empty();
        let (latency, now, stamp) = (&mut self.latency, self.now, &mut w.stamp);
        let mut lines = 0;
        w.expected.matched(k, |after, n| {
            lines += n;
            latency.lines(after, n, now, stamp);
        });
        w.received += lines;
        self.tally.notifications += lines;
        if was_waiting && w.expected.is_empty() && w.mode == Mode::Exact {
            self.exact_waiting -= 1;
        }
        if k < data.len() {
            // A byte that differs, or (everything owed arrived and the stream is over)
            // one too many.
            return Err(self.mismatch(i, data, k));
        }
        Ok(())
    }

    /// The failure for received `data` that differs from what is owed at `data[k]`,
    /// everything before it matched: the line it is in, expected and got (or an extra
    /// line when nothing more is owed).
    fn mismatch(&mut self, i: usize, data: &[u8], k: usize) -> Failure {
        let w = &mut self.conns[i];
        w.received += 1;
        let Some((line, at)) = w.expected.current_line() else {
            let got = self.rest_of_line(i, Vec::new(), &data[k..]);
            let msg = format!("got an extra line {:?}", String::from_utf8_lossy(&got));
            return self.describe(i, &msg);
        };
        let expected = String::from_utf8_lossy(line).into_owned();
        // The `at` bytes of this line before `data[k]` matched (some perhaps in earlier
        // reads), so they are what was received.
        let got = line[..at].to_vec();
        let got = self.rest_of_line(i, got, &data[k..]);
        let msg = format!(
            "expected {expected:?}, got {:?}",
            String::from_utf8_lossy(&got)
        );
        self.describe(i, &msg)
    }

    /// For a failure report: `got` plus `data` up to its first `\n`, or, without one,
    /// what connection `i` sends of the line within [`REST_OF_LINE`].
    fn rest_of_line(&mut self, i: usize, mut got: Vec<u8>, data: &[u8]) -> Vec<u8> {
        if let Some(k) = memchr::memchr(b'\n', data) {
            got.extend_from_slice(&data[..=k]);
            return got;
        }
        got.extend_from_slice(data);
        let deadline = Instant::now() + REST_OF_LINE;
        let mut byte = [0u8; 1];
        while let Some(stream) = self.conns[i].stream.as_mut() {
            match stream.read(&mut byte) {
                Ok(1) => {
                    got.push(byte[0]);
                    if byte[0] == b'\n' {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
        got
    }

    fn check_timeouts(&self, now: Instant) -> Result<(), Failure> {
        for (i, w) in self.conns.iter().enumerate() {
            if w.mode == Mode::Exact
                && !w.expected.is_empty()
                && now.duration_since(w.since) > self.timeout
            {
                let line = w.expected.current_line().map_or(&[][..], |(line, _)| line);
                return Err(self.describe(
                    i,
                    &format!(
                        "nothing received for {} ms while expecting {:?}",
                        self.timeout.as_millis(),
                        String::from_utf8_lossy(line)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn describe(&self, i: usize, what: &str) -> Failure {
        let w = &self.conns[i];
        format!(
            "client {i} (user {}), notification #{}: {what}",
            w.user, w.received
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{Ev, Kind};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream as StdStream};

    fn ev(seq: u64, kind: Kind, from: u64, to: u64) -> Ev {
        Ev::new(seq, kind, from, to)
    }

    /// A deliberately wrong (or right) tiny server: it sends `bytes` to user 5's single
    /// connection, whatever the events say. Returns the verifier's verdict.
    fn verdict(bytes: &'static [u8]) -> Result<(), Failure> {
        verdict_in(bytes, 3)
    }

    /// [`verdict`], the bytes written `chunk` at a time.
    fn verdict_in(bytes: &'static [u8], chunk: usize) -> Result<(), Failure> {
        let events = vec![
            ev(1, Kind::Broadcast, 0, 0),
            ev(2, Kind::Private, 9, 5),
            ev(3, Kind::Private, 9, 6), // not for user 5
            ev(4, Kind::Follow, 5, 7),  // not for user 5
            ev(5, Kind::Status, 7, 0),  // 5 follows 7
        ];
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server_side, _) = listener.accept().unwrap();
        let writer = std::thread::spawn(move || {
            for chunk in bytes.chunks(chunk) {
                server_side.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(700));
        });
        let mut v = Verifier::new(Duration::from_millis(300), Duration::from_secs(60)).unwrap();
        let i = v.add(client, 5, Mode::Exact).unwrap();
        let mut model = Model::new(events.into_iter());
        model.watch(5, i);
        let result = v.run(&mut model, Duration::from_millis(200), |_| {});
        writer.join().unwrap();
        result
    }

    #[test]
    fn passes_the_exact_stream() {
        assert_eq!(verdict(b"1|B\r\n2|P|9|5\r\n5|S|7\r\n"), Ok(()));
    }

    #[test]
    fn fails_on_a_missing_line() {
        let err = verdict(b"1|B\r\n5|S|7\r\n").unwrap_err();
        assert!(
            err.contains("expected \"2|P|9|5\\r\\n\", got \"5|S|7\\r\\n\""),
            "{err}"
        );
        let err = verdict(b"1|B\r\n2|P|9|5\r\n").unwrap_err();
        assert!(
            err.contains("nothing received") && err.contains("5|S|7"),
            "{err}"
        );
    }

    #[test]
    fn a_failure_counts_the_lines_before_it_in_the_same_read() {
        let err = verdict_in(b"1|B\r\n5|S|7\r\n", 1024).unwrap_err();
        assert!(
            err.contains("notification #2") && err.contains("got \"5|S|7\\r\\n\""),
            "{err}"
        );
        let err = verdict_in(b"1|B\r\n2|P|9|5\r\n5|S|7\r\n6|B\r\n", 1024).unwrap_err();
        assert!(
            err.contains("notification #4") && err.contains("extra line \"6|B\\r\\n\""),
            "{err}"
        );
    }

    #[test]
    fn fails_on_an_extra_line() {
        let err = verdict(b"1|B\r\n2|P|9|5\r\n5|S|7\r\n6|B\r\n").unwrap_err();
        assert!(err.contains("extra line \"6|B\\r\\n\""), "{err}");
        let err = verdict(b"1|B\r\n2|P|9|5\r\n3|P|9|6\r\n5|S|7\r\n").unwrap_err();
        assert!(err.contains("got \"3|P|9|6"), "{err}");
    }

    #[test]
    fn fails_on_a_reordered_line() {
        let err = verdict(b"2|P|9|5\r\n1|B\r\n5|S|7\r\n").unwrap_err();
        assert!(
            err.contains("notification #1") && err.contains("user 5"),
            "{err}"
        );
    }

    #[test]
    fn fails_on_an_altered_line() {
        let err = verdict(b"1|B\r\n2|P|9|05\r\n5|S|7\r\n").unwrap_err();
        assert!(err.contains("got \"2|P|9|05\\r\\n\""), "{err}");
        let err = verdict(b"1|B\n2|P|9|5\r\n5|S|7\r\n").unwrap_err();
        assert!(
            err.contains("got \"1|B\\n\""),
            "a bare \\n is not the protocol: {err}"
        );
    }
}
