//! floor-relay: the least work any server of this protocol must do with the same bytes,
//! for `scripts/bench.sh floor`. One `mio` poll loop, like the server's, without the
//! server's work: it reads the event source (32 KiB reads, up to 512 KiB per turn), finds
//! the line ends, appends each line to one client round-robin, writes a client's buffer
//! when it reaches 8 KiB and what is left at the end of a turn. No parsing, ordering,
//! routing or id check. What a real server costs beyond this is what those cost.
//!
//! Ports from `eventListenerPort` / `clientListenerPort` (default 9090 / 9099). Not a
//! server to deploy: a measuring stick (a client that stops reading stops it).

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};

const EVENTS: Token = Token(0);
const CLIENTS: Token = Token(1);
const SOURCE: Token = Token(2);
/// Tokens of clients not yet in the rotation start here.
const WAITING: usize = 3;
const READ: usize = 32 * 1024;
const TURN: usize = 512 * 1024;
const WRITE_AT: usize = 8 * 1024;

fn port(var: &str, default: u16) -> u16 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::io::Result<()> {
    let bind = |p: u16| {
        TcpListener::bind(([127, 0, 0, 1], p).into()).unwrap_or_else(|e| {
            eprintln!("floor-relay: cannot listen on {p}: {e}");
            std::process::exit(2)
        })
    };
    let mut events_l = bind(port("eventListenerPort", 9090));
    let mut clients_l = bind(port("clientListenerPort", 9099));
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut events_l, EVENTS, Interest::READABLE)?;
    poll.registry()
        .register(&mut clients_l, CLIENTS, Interest::READABLE)?;
    // Clients are written with blocking writes: the measuring stick assumes they read.
    let mut clients: Vec<(std::net::TcpStream, Vec<u8>)> = Vec::new();
    // Connected, not yet in the rotation: a client joins once it has sent something (its
    // id), so a connection that only probes the port takes no lines with it.
    let mut waiting: Vec<Option<TcpStream>> = Vec::new();
    let mut source: Option<TcpStream> = None;
    let mut buf = vec![0u8; READ + 1024];
    let mut held = 0; // bytes of an unfinished line at the front of `buf`
    let mut next = 0;
    let mut events = Events::with_capacity(64);
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            match ev.token() {
                CLIENTS => {
                    while let Ok((mut c, _)) = clients_l.accept() {
                        let token = Token(WAITING + waiting.len());
                        poll.registry()
                            .register(&mut c, token, Interest::READABLE)?;
                        waiting.push(Some(c));
                    }
                }
                Token(t) if t >= WAITING => {
                    if let Some(mut c) = waiting.get_mut(t - WAITING).and_then(Option::take) {
                        poll.registry().deregister(&mut c)?;
                        let mut byte = [0u8; 1];
                        if matches!(c.peek(&mut byte), Ok(n) if n > 0) {
                            let c = std::net::TcpStream::from(c);
                            c.set_nonblocking(false)?;
                            let _ = c.set_nodelay(true);
                            clients.push((c, Vec::with_capacity(WRITE_AT + 1024)));
                        }
                    }
                }
                EVENTS => {
                    if let Ok((mut s, _)) = events_l.accept() {
                        poll.registry()
                            .register(&mut s, SOURCE, Interest::READABLE)?;
                        source = Some(s);
                        held = 0;
                    }
                }
                _ => {}
            }
        }
        let Some(s) = source.as_mut() else { continue };
        let mut budget = TURN;
        let mut closed = false;
        while budget > 0 {
            let n = match s.read(&mut buf[held..]) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            };
            budget = budget.saturating_sub(n);
            let data = held + n;
            let mut start = 0;
            if !clients.is_empty() {
                for end in memchr::memchr_iter(b'\n', &buf[..data]) {
                    if next >= clients.len() {
                        next = 0;
                    }
                    let (c, out) = &mut clients[next];
                    out.extend_from_slice(&buf[start..=end]);
                    if out.len() >= WRITE_AT {
                        let _ = c.write_all(out);
                        out.clear();
                    }
                    next += 1;
                    start = end + 1;
                }
            } else {
                start = data; // nobody to relay to: dropped
            }
            buf.copy_within(start..data, 0);
            held = data - start;
        }
        // The end of a turn: what waits goes out.
        for (c, out) in clients.iter_mut().filter(|(_, o)| !o.is_empty()) {
            let _ = c.write_all(out);
            out.clear();
        }
        if closed {
            if let Some(mut s) = source.take() {
                let _ = poll.registry().deregister(&mut s);
            }
        } else if budget == 0 {
            // More may be waiting (edge-triggered): go round again without waiting.
            poll.registry().reregister(s, SOURCE, Interest::READABLE)?;
        }
    }
}
