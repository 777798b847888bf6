//! The event source: one thread that streams the generated events to the event port,
//! out of order, the classic way (random batch sizes 1..=max, each batch shuffled and
//! written), with the scenario's extras (junk lines, tiny writes).

use crate::feed::FeedTx;
use crate::gen::{Gen, GenConfig, Line, Rng};
use crate::latency::Stamps;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

/// How the stream is sent.
#[derive(Clone, Debug)]
pub struct SendConfig {
    pub addr: SocketAddr,
    pub max_batch: usize,
    /// One line in this many is followed by a junk line (0: none).
    pub junk_every: u64,
    /// Write lines in pieces of 1..=7 bytes.
    pub fragment: bool,
    pub seed: u64,
    /// Paced: each batch is sent when the events before it are due at this rate
    /// (0: as fast as possible).
    pub events_per_second: u64,
    /// From this many events on, batches are up to 100 times larger.
    pub grow_at: Option<u64>,
    /// After this many events, in the middle of a batch, the source stops for a second.
    pub pause_at: Option<u64>,
}

/// Connects, sends every event, then holds the connection open until `close` fires (a
/// closing source ends the session, which would skip gaps at once). Every event generated
/// (sent or omitted) goes to `feed`, if given, before it is written. Returns the number
/// of events and bytes sent.
pub fn spawn(
    gen: GenConfig,
    send: SendConfig,
    stamps: Stamps,
    feed: Option<FeedTx>,
    close: Receiver<()>,
) -> JoinHandle<io::Result<(u64, u64)>> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(send.addr)?;
        stream.set_nodelay(true)?;
        let sent = stream_events(&mut stream, gen, &send, &stamps, feed)?;
        let _ = close.recv();
        Ok(sent)
    })
}

fn stream_events(
    stream: &mut TcpStream,
    gen: GenConfig,
    send: &SendConfig,
    stamps: &Stamps,
    feed: Option<FeedTx>,
) -> io::Result<(u64, u64)> {
    let mut rng = Rng::new(send.seed ^ 0x5eed);
    let mut events = Gen::new(gen);
    let mut batch = Vec::with_capacity(send.max_batch);
    let mut out = Out {
        stream,
        bytes: Vec::with_capacity(WRITE_AT + 4096),
        fragment: send.fragment,
        written: 0,
        complete: 0,
        stamps,
        feed,
    };
    let mut line = Line::default();
    let mut count = 0u64;
    let started = std::time::Instant::now();
    loop {
        if send.events_per_second > 0 {
            let due = started
                + std::time::Duration::from_secs_f64(count as f64 / send.events_per_second as f64);
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        }
        batch.clear();
        let max = match send.grow_at {
            Some(at) if count >= at => send.max_batch * 100,
            _ => send.max_batch,
        };
        let size = 1 + rng.below(max.max(1) as u64) as usize;
        while batch.len() < size {
            let Some(e) = events.next() else { break };
            if let Some(feed) = out.feed.as_mut() {
                feed.push(e);
            }
            if !e.omitted {
                batch.push(e);
            }
        }
        if batch.is_empty() {
            out.flush(&mut rng)?;
            return Ok((count, out.written));
        }
        let highest = batch.iter().map(|e| e.seq).max().unwrap_or(0);
        rng.shuffle(&mut batch);
        for e in &batch {
            if send.pause_at == Some(count) {
                // Whatever of this batch is written goes out; the rest after a second.
                out.flush(&mut rng)?;
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            line.render(e);
            line.append_to(&mut out.bytes);
            count += 1;
            if send.junk_every > 0 && rng.below(send.junk_every) == 0 {
                junk_line(&mut rng, &mut out.bytes);
            }
            // Large batches go out in pieces: memory stays bounded, order stays shuffled.
            if out.bytes.len() >= WRITE_AT {
                out.flush(&mut rng)?;
            }
        }
        out.complete = highest;
        // Paced, each batch is written when due. At full speed batches go out back to
        // back, `WRITE_AT` bytes at a time, as from a buffered writer: a write per batch
        // cost the source a syscall per 50 events, and made the server's reads as small.
        if send.events_per_second > 0 {
            out.flush(&mut rng)?;
        }
    }
}

/// Bytes written at a time at full speed (and the most a batch waits to be written).
const WRITE_AT: usize = 60 * 1024;

/// The source's output: bytes not yet written, and the latency stamps of what was.
struct Out<'a> {
    stream: &'a mut TcpStream,
    bytes: Vec<u8>,
    /// Write lines in pieces of 1..=7 bytes.
    fragment: bool,
    written: u64,
    /// Highest seq of the batches whose every line is in `bytes` or written: once they
    /// are written, every seq up to it has been.
    complete: u64,
    stamps: &'a Stamps,
    /// The model's copy of the stream: handed over before each write.
    feed: Option<FeedTx>,
}

impl Out<'_> {
    /// Writes what waits, and stamps the batches now written in full.
    fn flush(&mut self, rng: &mut Rng) -> io::Result<()> {
        if let Some(feed) = self.feed.as_mut() {
            feed.hand_over(self.complete);
        }
        if self.fragment {
            let mut rest = &self.bytes[..];
            while !rest.is_empty() {
                let k = (1 + rng.below(7) as usize).min(rest.len());
                self.stream.write_all(&rest[..k])?;
                rest = &rest[k..];
            }
        } else {
            self.stream.write_all(&self.bytes)?;
        }
        self.written += self.bytes.len() as u64;
        self.bytes.clear();
        self.stamps.sent(self.complete, std::time::Instant::now());
        Ok(())
    }
}

/// A line the server must discard without a trace: no valid seq, binary bytes, or
/// over-long (2 KiB, beyond the 1 KiB cap, even though it starts like an event).
fn junk_line(rng: &mut Rng, out: &mut Vec<u8>) {
    match rng.below(4) {
        0 => out.extend_from_slice(b"hello|F|1|2"),
        1 => out.extend_from_slice(b"|B"),
        2 => out.extend((0..16).map(|_| (rng.next_u64() as u8) | 0x80)),
        _ => {
            out.extend_from_slice(b"1|B");
            out.extend(std::iter::repeat_n(b'0', 2048));
        }
    }
    out.extend_from_slice(b"\r\n");
}
