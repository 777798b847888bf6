//! The event source: one thread that streams the generated events to the event port,
//! out of order, the classic way (random batch sizes 1..=max, each batch shuffled and
//! written), with the scenario's extras (junk lines, tiny writes).

use crate::gen::{Gen, GenConfig, Rng};
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
/// closing source ends the session, which would skip gaps at once). Returns the number of
/// events and bytes sent.
pub fn spawn(
    gen: GenConfig,
    send: SendConfig,
    stamps: Stamps,
    close: Receiver<()>,
) -> JoinHandle<io::Result<(u64, u64)>> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(send.addr)?;
        stream.set_nodelay(true)?;
        let sent = stream_events(&mut stream, gen, &send, &stamps)?;
        let _ = close.recv();
        Ok(sent)
    })
}

fn stream_events(
    stream: &mut TcpStream,
    gen: GenConfig,
    send: &SendConfig,
    stamps: &Stamps,
) -> io::Result<(u64, u64)> {
    let mut rng = Rng::new(send.seed ^ 0x5eed);
    let mut events = Gen::new(gen).filter(|e| !e.omitted);
    let mut batch = Vec::with_capacity(send.max_batch);
    let mut bytes = Vec::with_capacity(64 * 1024);
    let (mut count, mut total) = (0u64, 0u64);
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
        batch.extend(events.by_ref().take(size));
        if batch.is_empty() {
            return Ok((count, total));
        }
        let highest = batch.iter().map(|e| e.seq).max().unwrap_or(0);
        rng.shuffle(&mut batch);
        for e in &batch {
            if send.pause_at == Some(count) {
                // Whatever of this batch is written goes out; the rest after a second.
                total += flush(stream, &mut bytes, send.fragment, &mut rng)?;
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            e.write(&mut bytes);
            count += 1;
            if send.junk_every > 0 && rng.below(send.junk_every) == 0 {
                junk_line(&mut rng, &mut bytes);
            }
            // Large batches go out in pieces: memory stays bounded, order stays shuffled.
            if bytes.len() >= 60 * 1024 {
                total += flush(stream, &mut bytes, send.fragment, &mut rng)?;
            }
        }
        total += flush(stream, &mut bytes, send.fragment, &mut rng)?;
        stamps.sent(highest, std::time::Instant::now());
    }
}

fn flush(
    stream: &mut TcpStream,
    bytes: &mut Vec<u8>,
    fragment: bool,
    rng: &mut Rng,
) -> io::Result<u64> {
    let n = bytes.len() as u64;
    if fragment {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let k = (1 + rng.below(7) as usize).min(rest.len());
            stream.write_all(&rest[..k])?;
            rest = &rest[k..];
        }
    } else {
        stream.write_all(bytes)?;
    }
    bytes.clear();
    Ok(n)
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
