//! Shared helpers for the integration tests: start the real server binary on port 0,
//! connect sources and clients over real TCP, read with timeouts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A running server process; killed on drop.
pub struct Server {
    pub child: Child,
    pub events: SocketAddr,
    pub clients: SocketAddr,
    /// Everything the server logged so far.
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server on free ports with `args` added.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with(args, |_| {})
    }

    /// Like [`start`](Self::start), with a hook to adjust the command (env, rlimits).
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_follower-maze"));
        cmd.args(["--event-port", "0", "--client-port", "0"])
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn server");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addrs) = parse_listening(&line) {
                    let _ = tx.send(addrs);
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (events, clients) = rx.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
            panic!(
                "server did not report its ports; log: {}",
                log.lock().unwrap()
            )
        });
        Server {
            child,
            events,
            clients,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        self.wait_count(needle, 1);
    }

    /// Waits until the log contains `needle` at least `n` times.
    pub fn wait_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.log().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A user client that has sent its id.
    pub fn client(&self, user: u64) -> Client {
        let c = Client::connect(self.clients);
        c.send(format!("{user}\r\n").as_bytes());
        c
    }

    /// An event source connection.
    pub fn source(&self) -> TcpStream {
        let s = TcpStream::connect(self.events).expect("connect events");
        s.set_nodelay(true).unwrap();
        s
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(self) -> (std::process::ExitStatus, String) {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` and waits for the exit status; returns it with the whole log.
    pub fn stop_with(mut self, signal: libc::c_int) -> (std::process::ExitStatus, String) {
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        let status = wait_exit(&mut self.child, TIMEOUT)
            .unwrap_or_else(|| panic!("server did not exit after signal {signal}"));
        std::thread::sleep(Duration::from_millis(50)); // let the log reader catch up
        (status, self.log())
    }

    /// The server's resident set peak (VmHWM) and current (VmRSS), in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        proc_rss_kib(self.pid())
    }

    /// The server's CPU time (user + system) so far.
    pub fn cpu(&self) -> Duration {
        follower_maze::procfs::cpu_time(self.pid()).expect("server CPU time from /proc")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proc_rss_kib(pid: u32) -> (u64, u64) {
    let field = |name| follower_maze::procfs::status_kib(pid, name).unwrap_or(0);
    (field("VmHWM:"), field("VmRSS:"))
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// "listening: events on A, clients on B"
fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.split("listening: events on ").nth(1)?;
    let (ev, rest) = rest.split_once(", clients on ")?;
    let cl = rest.split_whitespace().next()?;
    Some((ev.parse().ok()?, cl.parse().ok()?))
}

/// A user client connection with a line reader.
pub struct Client {
    pub stream: TcpStream,
    /// Read and not yet taken as lines.
    pub buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect clients");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&self, bytes: &[u8]) {
        (&self.stream).write_all(bytes).expect("client send");
    }

    /// Reads lines until `n` have arrived (each with its `\r\n`), or panics when nothing
    /// arrives for [`TIMEOUT`].
    pub fn read_lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        let mut deadline = Instant::now() + TIMEOUT;
        while out.len() < n {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                out.push(String::from_utf8_lossy(&line[..i]).into_owned());
                continue;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {} of {n} lines: {out:?}",
                out.len()
            );
            let mut chunk = [0u8; 65536];
            match (&self.stream).read(&mut chunk) {
                Ok(0) => panic!("closed after {} of {n} lines: {out:?}", out.len()),
                Ok(k) => {
                    self.buf.extend_from_slice(&chunk[..k]);
                    deadline = Instant::now() + TIMEOUT;
                }
                Err(e) => panic!(
                    "read failed after {} of {n} lines ({e}): {out:?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Asserts nothing arrives for `quiet`.
    pub fn expect_silence(&mut self, quiet: Duration) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.stream.set_read_timeout(Some(quiet)).unwrap();
        let mut chunk = [0u8; 1024];
        match (&self.stream).read(&mut chunk) {
            Ok(0) => panic!("connection closed"),
            Ok(k) => panic!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&chunk[..k])
            ),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{e}"
            ),
        }
        self.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    }

    /// Asserts the server closes this connection within the timeout.
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        let mut chunk = [0u8; 65536];
        loop {
            match (&self.stream).read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("not closed: {e}"),
            }
            assert!(Instant::now() < deadline, "not closed in time");
        }
    }
}

/// Sends `lines` (each gets `\r\n`) to a source in one write.
pub fn send_lines<S: AsRef<str>>(source: &mut TcpStream, lines: &[S]) {
    let mut bytes = Vec::new();
    for l in lines {
        bytes.extend_from_slice(l.as_ref().as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    source.write_all(&bytes).expect("source send");
}

/// Connects a client as `user` that never reads, with a 4 KiB receive buffer: the
/// kernel holds little for it, so its output piles up in the server (backpressure, then
/// a stall). The caller waits for it to be identified.
pub fn never_reader(server: &Server, user: u64) -> TcpStream {
    let stream = TcpStream::connect(server.clients).unwrap();
    set_socket_option(&stream, libc::SO_RCVBUF, &4096);
    (&stream)
        .write_all(format!("{user}\r\n").as_bytes())
        .unwrap();
    stream
}

/// Connects clients for users `1..=users`, sends them `n` broadcasts from a new source, and
/// reads every one on every client. The seqs are zero-padded to 1,000 digits: valid, and
/// delivered as read (1,006-byte notifications), so a few events fill a write buffer.
/// Returns the clients and the source, still connected.
pub fn long_broadcasts_read_by(server: &Server, users: u64, n: u64) -> (Vec<Client>, TcpStream) {
    let users: Vec<u64> = (1..=users).collect();
    let mut cs = clients(server, &users);
    let mut src = server.source();
    let lines: Vec<String> = (1..=n).map(|q| format!("{q:0>1000}|B")).collect();
    send_lines(&mut src, &lines);
    for c in &mut cs {
        assert_eq!(c.read_lines(lines.len()), lines);
    }
    (cs, src)
}

/// Connects one client per user and waits until the server has identified them all.
pub fn clients(server: &Server, users: &[u64]) -> Vec<Client> {
    let before = server.log().matches(" identified as user ").count();
    let clients = users.iter().map(|&u| server.client(u)).collect();
    server.wait_count(" identified as user ", before + users.len());
    clients
}

/// What each user should receive for `events` (payloads, in seq order), by the rules of
/// SPEC.md, computed the naive way.
pub fn expected(events: &[String], users: &[u64]) -> std::collections::HashMap<u64, Vec<String>> {
    use std::collections::{HashMap, HashSet};
    let mut sorted: Vec<(u64, &String)> = events
        .iter()
        .map(|e| (e.split('|').next().unwrap().parse().unwrap(), e))
        .collect();
    sorted.sort();
    let mut followers: HashMap<u64, HashSet<u64>> = HashMap::new();
    let mut out: HashMap<u64, Vec<String>> = users.iter().map(|&u| (u, Vec::new())).collect();
    for (_, e) in sorted {
        let f: Vec<&str> = e.split('|').collect();
        let id = |i: usize| f[i].parse::<u64>().unwrap();
        let to: Vec<u64> = match f[1] {
            "F" => {
                followers.entry(id(3)).or_default().insert(id(2));
                vec![id(3)]
            }
            "U" => {
                followers.entry(id(3)).or_default().remove(&id(2));
                vec![]
            }
            "B" => users.to_vec(),
            "P" => vec![id(3)],
            "S" => followers
                .get(&id(2))
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            _ => vec![],
        };
        for u in to {
            if let Some(v) = out.get_mut(&u) {
                v.push(e.clone());
            }
        }
    }
    out
}

/// A random but valid event stream of `n` events over users `1..=users`.
pub fn random_events(rng: &mut Rng, n: u64, users: u64) -> Vec<String> {
    (1..=n)
        .map(|seq| {
            let (a, b) = (1 + rng.below(users), 1 + rng.below(users));
            match rng.below(100) {
                0..=29 => format!("{seq}|F|{a}|{b}"),
                30..=39 => format!("{seq}|U|{a}|{b}"),
                40..=41 => format!("{seq}|B"),
                42..=69 => format!("{seq}|P|{a}|{b}"),
                _ => format!("{seq}|S|{a}"),
            }
        })
        .collect()
}

/// Seeded random numbers, the same as maze-sim's.
pub use follower_maze::rng::Rng;

/// Sets a SOL_SOCKET option on `stream`.
pub fn set_socket_option<T>(stream: &TcpStream, name: libc::c_int, value: &T) {
    use std::os::fd::AsRawFd;
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// A counter from the final stats line in `log`.
pub fn final_counter(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rfind(|l| l.contains("final stats:"))
        .unwrap_or_else(|| panic!("no final stats in {log}"));
    counter(line, name)
}

/// The counter `name` in one counters line (stats, session end, final stats).
pub fn counter(line: &str, name: &str) -> u64 {
    let field = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    field.parse().unwrap()
}

/// Closes `stream` with a reset (RST) instead of a FIN.
pub fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_socket_option(&stream, libc::SO_LINGER, &linger);
    drop(stream);
}
