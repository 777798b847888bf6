//! Scenario `floor`: the classic stream to `floor-relay` (`src/bin/floor-relay.rs`), which
//! hands each line to one client round-robin; the clients here count lines and time them
//! like the verifier does (each line's seq against the source's write stamps). Passes
//! when as many lines arrived, in all, as events were sent. With `--server-pid`, the
//! relay's CPU is the floor every server of this protocol is measured against, and, paced
//! (`eventsPerSecond`), its latency is the instrument's own floor: what any server's
//! figure includes that is not the server's.

use crate::gen::{leading_seq, GenConfig, Rng};
use crate::latency::{self, Latency};
use crate::{pick_users, proc_cpu_s, report, source, verdict, Settings};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub fn main(s: &Settings) -> ExitCode {
    let started = Instant::now();
    let mut latency = Latency::new();
    let (lines, bytes, outcome) = match count(s, &mut latency) {
        Ok((lines, bytes)) => (lines, bytes, Ok(())),
        Err((lines, bytes, why)) => (lines, bytes, Err(why)),
    };
    let elapsed = started.elapsed().as_secs_f64();
    let result = verdict(&outcome);
    let summary = format!(
        "result={result} scenario=floor events={} notifications={lines} bytes={bytes} elapsed_s={elapsed:.3} events_per_s={:.0} sim_cpu_s={:.2} {}",
        s.total,
        s.total as f64 / elapsed.max(1e-9),
        proc_cpu_s("self").unwrap_or(0.0),
        latency::summary(latency.total(), "latency_"),
    );
    report(summary, s.server_pid, outcome.is_ok())
}

type Counted = Result<(u64, u64), (u64, u64, String)>;

/// Connects the clients, streams the events, counts and times lines until all arrived.
fn count(s: &Settings, latency: &mut Latency) -> Counted {
    let err = |why: String| (0, 0, why);
    let addr = |port: u16| format!("{}:{port}", s.host).parse::<std::net::SocketAddr>();
    let (Ok(events_addr), Ok(clients_addr)) = (addr(s.event_port), addr(s.client_port)) else {
        return Err(err("bad address".into()));
    };
    let mut poll = Poll::new().map_err(|e| err(format!("poll: {e}")))?;
    let mut rng = Rng::new(s.seed);
    let mut conns = Vec::new();
    for (i, u) in pick_users(&mut rng, s.users, s.clients, 0)
        .into_iter()
        .enumerate()
    {
        let mut c =
            std::net::TcpStream::connect(clients_addr).map_err(|e| err(format!("connect: {e}")))?;
        c.write_all(format!("{u}\r\n").as_bytes())
            .map_err(|e| err(format!("send id: {e}")))?;
        c.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
        let mut c = TcpStream::from_std(c);
        poll.registry()
            .register(&mut c, Token(i), Interest::READABLE)
            .map_err(|e| err(e.to_string()))?;
        conns.push(c);
    }
    std::thread::sleep(Duration::from_millis(200)); // the relay takes them in
    let send = source::SendConfig {
        addr: events_addr,
        max_batch: s.max_batch,
        junk_every: 0,
        fragment: false,
        seed: s.seed,
        events_per_second: s.events_per_second,
        grow_at: None,
        pause_at: None,
    };
    let (close_tx, close_rx) = std::sync::mpsc::channel();
    let gen = GenConfig::new(s.total, s.users, s.seed);
    let stamps = latency::Stamps::default();
    latency.restart(stamps.clone());
    let sender = source::spawn(gen, send, stamps, None, close_rx);
    // Per client: its latency cursor, and a line cut by a read.
    let mut cursors = vec![0u64; conns.len()];
    let mut tails = vec![Vec::new(); conns.len()];
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut progress = Instant::now();
    while lines < s.total {
        if progress.elapsed() > s.timeout {
            let _ = close_tx.send(());
            let why = format!("{lines} of {} lines, then nothing for the timeout", s.total);
            return Err((lines, bytes, why));
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .map_err(|e| (lines, bytes, e.to_string()))?;
        for ev in events.iter() {
            let i = ev.token().0;
            loop {
                match conns[i].read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        bytes += n as u64;
                        progress = Instant::now();
                        latency.sync();
                        let (data, tail) = (&chunk[..n], &mut tails[i]);
                        let mut start = 0;
                        for end in memchr::memchr_iter(b'\n', data) {
                            tail.extend_from_slice(&data[start..end]);
                            if let Some(seq) = leading_seq(tail) {
                                latency.line(seq, progress, &mut cursors[i]);
                            }
                            tail.clear();
                            lines += 1;
                            start = end + 1;
                        }
                        tail.extend_from_slice(&data[start..]);
                        latency.record(progress);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err((lines, bytes, format!("read: {e}"))),
                }
            }
        }
    }
    let _ = close_tx.send(());
    let _ = sender.join();
    if lines != s.total {
        return Err((
            lines,
            bytes,
            format!("{lines} lines for {} events", s.total),
        ));
    }
    Ok((lines, bytes))
}
