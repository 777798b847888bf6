//! One connection: its socket, its role, its read side and its write buffer.
//!
//! The server owns every `Conn` in a slab; this module only knows how to move bytes for
//! one of them. It decides nothing about events, users or other connections.

use crate::lines::LineSplitter;
use crate::outbuf::OutBuf;
use mio::net::TcpStream;
use std::io::{self, Read};
use std::time::Instant;

/// Longest event payload accepted (SPEC: event lines longer than 1 KiB are errors).
pub const MAX_EVENT_LINE: usize = 1024;
/// Longest id payload accepted.
pub const MAX_ID_LINE: usize = 64;
/// Bytes read from an event source per `read` call.
pub const SOURCE_CHUNK: usize = 32 * 1024;

/// What a connection is for, and the state that role needs.
pub enum Role {
    /// An event source: its read side lives with the server's source list.
    Source,
    /// A user client that has not sent its id yet.
    Pending {
        /// Boxed, as is a scrape: the rare roles' state would otherwise make every
        /// connection as large as theirs (see [`Conn`]).
        lines: Box<LineSplitter>,
        deadline: Instant,
    },
    /// An identified user client: receives notifications, its input is discarded.
    Client { user: u64 },
    /// A connection to the metrics listener: one request, one response, closed.
    Scraper(Box<crate::server::Scrape>),
}

/// A connection as remembered across a dispatch: its slab key and its serial. A key alone
/// names a slot, which the next accepted connection may reuse; the pair names one
/// connection for the process's lifetime, so a stale entry in any list is recognised as
/// stale instead of acting on a stranger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRef {
    pub key: usize,
    pub serial: u64,
}

/// One accepted socket and everything the server keeps for it.
///
/// Delivery reads and writes the first six fields for every notification, of a
/// connection it last touched many thousands of bytes of other output ago: they come
/// first, in one cache line (`repr(C)`, aligned to 64), so a notification costs one miss
/// there, not two or three across a 160-byte entry.
#[repr(C, align(64))]
pub struct Conn {
    pub out: OutBuf,
    /// Since when the socket took no bytes while output was pending (or, while the first
    /// write of it waits for the flush delay, when that write is due).
    pub stalled_since: Instant,
    /// Flagged for removal after the current dispatch; receives nothing more.
    pub closing: bool,
    /// Listed in the server's dirty list (has output not yet handed to a write).
    pub dirty: bool,
    /// Pending output is above the client buffer limit (counted in the server).
    pub over_limit: bool,
    /// The last write left bytes behind: no more writes until the socket is writable.
    pub blocked: bool,
    pub stream: TcpStream,
    /// Never reused while the process runs; names the connection in every log line.
    pub serial: u64,
    pub role: Role,
    /// An identified client ended its input (half-close): it is no longer read, and still
    /// written to until a write fails or the socket reports a hang-up.
    pub input_closed: bool,
}

/// Result of one read into a line splitter.
pub enum Filled {
    /// Bytes were added.
    Bytes(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed (or the socket failed; the error is returned to be logged).
    Closed(Option<io::Error>),
}

impl Conn {
    pub fn new(stream: TcpStream, serial: u64, role: Role, now: Instant) -> Self {
        Conn {
            stream,
            serial,
            role,
            out: OutBuf::default(),
            closing: false,
            dirty: false,
            over_limit: false,
            blocked: false,
            stalled_since: now,
            input_closed: false,
        }
    }

    /// This connection as a [`ConnRef`], for lists kept across a dispatch.
    pub fn at(&self, key: usize) -> ConnRef {
        ConnRef {
            key,
            serial: self.serial,
        }
    }

    /// How log lines name it: `client #7`, `event source #3`.
    pub fn name(&self) -> Name {
        Name {
            what: match self.role {
                Role::Source => "event source",
                Role::Pending { .. } | Role::Client { .. } => "client",
                Role::Scraper(_) => "metrics request",
            },
            serial: self.serial,
        }
    }
}

/// A connection's name in log lines.
#[derive(Clone, Copy)]
pub struct Name {
    pub what: &'static str,
    pub serial: u64,
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} #{}", self.what, self.serial)
    }
}

/// One `read` from `stream` into `lines`, retrying `Interrupted`.
pub fn fill(stream: &mut TcpStream, lines: &mut LineSplitter) -> Filled {
    loop {
        return match stream.read(lines.spare()) {
            Ok(0) => Filled::Closed(None),
            Ok(n) => {
                lines.filled(n);
                Filled::Bytes(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Filled::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Filled::Closed(Some(e)),
        };
    }
}

/// Reads and discards up to `budget` bytes from `stream`.
pub fn discard(stream: &mut TcpStream, budget: usize) -> (usize, Filled) {
    let mut scratch = [0u8; 4096];
    let mut total = 0;
    while total < budget {
        match stream.read(&mut scratch) {
            Ok(0) => return (total, Filled::Closed(None)),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (total, Filled::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (total, Filled::Closed(Some(e))),
        }
    }
    (total, Filled::Bytes(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    /// Delivery touches `out`, `stalled_since` and the four flags of every recipient: one
    /// line, as long as `Conn` keeps its layout. A field added in the wrong place, or a
    /// role that grew unboxed, fails here rather than in a profile.
    #[test]
    fn what_delivery_touches_is_one_cache_line() {
        assert_eq!(align_of::<Conn>(), 64);
        assert_eq!(size_of::<Conn>(), 128, "two lines per connection");
        for end in [
            offset_of!(Conn, out) + size_of::<OutBuf>(),
            offset_of!(Conn, stalled_since) + size_of::<Instant>(),
            offset_of!(Conn, closing) + 1,
            offset_of!(Conn, dirty) + 1,
            offset_of!(Conn, over_limit) + 1,
            offset_of!(Conn, blocked) + 1,
        ] {
            assert!(end <= 64, "a field delivery touches ends at byte {end}");
        }
    }

    /// The slab keeps its entries 64-byte aligned and no larger than `Conn` (its
    /// vacant/occupied tag fits in a niche), so each entry starts a cache line.
    #[test]
    fn slab_entries_start_cache_lines() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let now = Instant::now();
        let mut conns = slab::Slab::new();
        for serial in 0..3 {
            let stream = TcpStream::connect(addr).unwrap();
            conns.insert(Conn::new(stream, serial, Role::Source, now));
        }
        let at = |k: usize| &conns[k] as *const Conn as usize;
        assert_eq!(at(0) % 64, 0);
        assert_eq!(at(1) - at(0), size_of::<Conn>());
        assert_eq!(at(2) - at(1), size_of::<Conn>());
    }
}
