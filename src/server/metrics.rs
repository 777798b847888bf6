//! The metrics listener (`--metrics-addr`): Prometheus text exposition at `GET /metrics`,
//! `GET /healthz`, served from the same poll loop. Values are read from what the server
//! keeps anyway (counters, sizes); a scrape adds nothing to the event path.
//!
//! One request per connection, parsed with `httparse`; the answer is written and the
//! connection closed. Bounded: at most `MAX_SCRAPERS` connections at once (more are
//! closed at once), a request of at most `MAX_REQUEST` bytes, and `DEADLINE` from accept
//! to the last byte of the answer: a scraper that never sends its request, or never reads
//! its answer, holds at most one small buffer until then.

use super::*;
use std::fmt::Write as _;
use std::io::{Read, Write};

/// Metrics connections at once.
const MAX_SCRAPERS: usize = 16;
/// Bytes of one request line and its headers.
const MAX_REQUEST: usize = 8 * 1024;
/// From accept to the answer's last byte.
const DEADLINE: Duration = Duration::from_secs(2);

/// A metrics connection's state.
pub struct Scrape {
    /// The request so far; then the answer, written from `sent` on.
    buf: Vec<u8>,
    sent: usize,
    answered: bool,
    pub(super) deadline: Instant,
}

impl Server {
    pub(super) fn accept_scrapers(&mut self, now: Instant) {
        for _ in 0..MAX_SCRAPERS {
            let Some(listener) = self.metrics_listener.as_ref() else {
                return;
            };
            let (mut stream, addr) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn_limited!(self.warns, Warn::Accept, now, "accept on metrics: {e}");
                    return;
                }
            };
            let serial = self.serial();
            if self.scrapers >= MAX_SCRAPERS {
                debug!("metrics request #{serial} ({addr}) refused: {MAX_SCRAPERS} open");
                continue;
            }
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut stream, Token(key), interest)
                .is_err()
            {
                continue;
            }
            let scrape = Box::new(Scrape {
                buf: Vec::new(),
                sent: 0,
                answered: false,
                deadline: now + DEADLINE,
            });
            entry.insert(Conn::new(stream, serial, Role::Scraper(scrape), now));
            self.scrapers += 1;
        }
        // More may be queued: edge-triggered, so come back next turn.
        self.scrapes_left = true;
    }

    /// Reads the request (once whole, answers it), or goes on writing the answer.
    pub(super) fn on_scraper(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        let Role::Scraper(scrape) = &mut conn.role else {
            return;
        };
        if !scrape.answered {
            let mut chunk = [0u8; 1024];
            let mut eof = false;
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        self.stats.bytes_in += n as u64;
                        if scrape.buf.len() + n > MAX_REQUEST {
                            scrape.buf.clear();
                            scrape.buf.extend_from_slice(&response(
                                "431 Request Header Fields Too Large",
                                "",
                                "request too large\n",
                            ));
                            scrape.answered = true;
                            break;
                        }
                        scrape.buf.extend_from_slice(&chunk[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return self.close(key, now),
                }
            }
            if !scrape.answered {
                let Some(answer) = self.answer(key, now) else {
                    if eof {
                        self.close(key, now); // gone before a whole request
                    }
                    return; // not whole yet
                };
                let Role::Scraper(scrape) = &mut self.conns[key].role else {
                    return;
                };
                scrape.buf = answer;
                scrape.answered = true;
            }
            self.stats.scrapes += 1;
        }
        self.send_answer(key, now);
    }

    /// The costly figures, taken again if the last sample is `SAMPLE_EVERY` old.
    fn sample(&self, now: Instant) -> Sampled {
        let last = self.sampled.get();
        if last
            .at
            .is_some_and(|at| now.saturating_duration_since(at) < SAMPLE_EVERY)
        {
            return last;
        }
        let sample = Sampled {
            at: Some(now),
            rss: resident_bytes(),
            fds: open_fds(),
            buffers: self
                .conns
                .iter()
                .map(|(_, c)| c.out.capacity() as u64)
                .sum(),
        };
        self.sampled.set(sample);
        sample
    }

    /// The answer to the request in `key`'s buffer, or `None` while it is incomplete.
    fn answer(&self, key: usize, now: Instant) -> Option<Vec<u8>> {
        let Role::Scraper(scrape) = &self.conns[key].role else {
            return None;
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let (method, path) = match req.parse(&scrape.buf) {
            Ok(httparse::Status::Complete(_)) => (req.method?, req.path?),
            Ok(httparse::Status::Partial) => return None,
            Err(_) => return Some(response("400 Bad Request", "", "bad request\n")),
        };
        let path = path.split('?').next().unwrap_or(path);
        Some(match (method, path) {
            ("GET", "/metrics") => response(
                "200 OK",
                "Content-Type: text/plain; version=0.0.4\r\n",
                &self.exposition(now),
            ),
            ("GET", "/healthz") if self.accepting() => response("200 OK", "", "ok\n"),
            ("GET", "/healthz") => response("503 Service Unavailable", "", "not accepting\n"),
            (_, "/metrics" | "/healthz") => {
                response("405 Method Not Allowed", "Allow: GET\r\n", "GET only\n")
            }
            _ => response("404 Not Found", "", "not found\n"),
        })
    }

    /// Accepting connections on both listeners, not paused for lack of descriptors.
    fn accepting(&self) -> bool {
        self.event_listener.is_some()
            && self.client_listener.is_some()
            && self.accept_paused_until.is_none()
    }

    fn send_answer(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        let Role::Scraper(scrape) = &mut conn.role else {
            return;
        };
        while scrape.sent < scrape.buf.len() {
            match conn.stream.write(&scrape.buf[scrape.sent..]) {
                Ok(n) => scrape.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return, // wait: writable
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close(key, now);
    }

    /// The Prometheus text exposition of every counter and gauge.
    fn exposition(&self, now: Instant) -> String {
        let mut out = String::with_capacity(4096);
        for (name, value) in self.stats.fields() {
            let _ = writeln!(out, "# TYPE follower_maze_{name}_total counter");
            let _ = writeln!(out, "follower_maze_{name}_total {value}");
        }
        let Sampled {
            rss, fds, buffers, ..
        } = self.sample(now);
        let gauges: [(&str, &str, u64); 15] = [
            (
                "clients",
                "identified client connections",
                self.router.connections() as u64,
            ),
            (
                "unidentified",
                "client connections without an id yet",
                self.pending_ids as u64,
            ),
            (
                "sources",
                "event sources connected",
                self.sources.len() as u64,
            ),
            (
                "window_slots",
                "reorder window ring slots",
                self.window.capacity() as u64,
            ),
            (
                "window_waiting",
                "events received, not yet delivered or discarded",
                self.waiting() as u64,
            ),
            (
                "window_bytes",
                "bytes held for waiting events",
                self.window.bytes() as u64,
            ),
            (
                "window_bytes_limit",
                "--window-bytes",
                self.window.budget() as u64,
            ),
            (
                "learned_disorder",
                "reorder distance learned this session",
                self.window.disorder(),
            ),
            ("next_seq", "next seq to deliver", self.window.next_seq()),
            (
                "pending_output_bytes",
                "bytes queued for clients",
                self.pending_total as u64,
            ),
            (
                "longest_turn_microseconds",
                "longest loop turn since start",
                self.longest_turn_ever.as_micros() as u64,
            ),
            (
                "most_turn_bytes",
                "most notification bytes one loop turn appended, since start",
                self.most_turn_bytes,
            ),
            (
                "output_buffer_bytes",
                "write buffer capacity held by connections, pending output or not",
                buffers,
            ),
            ("resident_memory_bytes", "resident set size", rss),
            ("open_fds", "open file descriptors", fds),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP follower_maze_{name} {help}");
            let _ = writeln!(out, "# TYPE follower_maze_{name} gauge");
            let _ = writeln!(out, "follower_maze_{name} {value}");
        }
        out
    }
}

/// A whole HTTP/1.1 answer that closes the connection.
fn response(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// How long a scrape's costly figures are reused: the RSS and open descriptors read from
/// `/proc`, and the write buffers summed over every connection. Each is O(connections):
/// with 10,000 of them, listing `/proc/self/fd` took 11-13 ms a scrape, and 16 scrapers
/// at once made loop turns of 130-200 ms (found by a fresh-eyes attack, session 10).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The costly figures of the last sample (see `SAMPLE_EVERY`).
#[derive(Clone, Copy, Default)]
pub(super) struct Sampled {
    at: Option<Instant>,
    rss: u64,
    fds: u64,
    buffers: u64,
}

/// This process's resident set, in bytes (0 if `/proc` cannot tell).
fn resident_bytes() -> u64 {
    crate::procfs::status_kib("self", "VmRSS:").unwrap_or(0) * 1024
}

/// This process's open file descriptors (0 if `/proc` cannot tell).
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}
