//! Adversarial workloads (`scenario=adversarial attack=NAME`): inputs that are cheap to
//! send and may be expensive to serve. The point is the measurements, per attack:
//!
//! - the input bytes the attack sent, to both ports (the freeze probe's few bytes aside);
//! - with `--server-pid`: the server's CPU time (user + sys) while the attack ran, that
//!   CPU per input byte, and its peak RSS (`VmHWM`);
//! - a freeze probe: every `probeIntervalMs` a thread opens a client connection, sends the
//!   invalid id `x\r\n` and times until the server closes it. Well under a millisecond
//!   means the poll loop is responsive; seconds mean it is frozen.
//!
//! Each attack is bounded in count and time, runs on loopback, and checks what it can:
//! a watching client must get exactly its notifications, byte for byte, in order (no
//! progress for `timeout` ms is a failure). The last line is a `key=value` summary.
//!
//! A probe spans a few loop turns (accept, read the id, close), so its latency is a few
//! turns long. Its p50 counts probes, not time: one probe waits through a whole freeze,
//! so `probe_frozen_s` adds up the probes of 100 ms or more.

use follower_maze::procfs;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Broadcasts whose seq lies `farStride` beyond the last, each far past the window.
    FarAhead,
    /// The same, ending at seq `u64::MAX`.
    FarAheadMax,
    /// One user follows `followCount` authors, who then all post.
    FollowStorm,
    /// `churnFollowers` distinct users each follow one author and unfollow it at once.
    FollowChurn,
    /// Thousands of connections of one well-followed user close at once, a few rounds.
    DisconnectStorm,
    /// Many waiting events of ~1 KB of zero-padded numbers, seq 1 withheld.
    ZeroPadded,
    /// Identified clients that never read and send megabytes while events flow.
    Chatty,
}

pub const ATTACKS: [(&str, Attack); 7] = [
    ("far-ahead", Attack::FarAhead),
    ("far-ahead-max", Attack::FarAheadMax),
    ("follow-storm", Attack::FollowStorm),
    ("follow-churn", Attack::FollowChurn),
    ("disconnect-storm", Attack::DisconnectStorm),
    ("zero-padded", Attack::ZeroPadded),
    ("chatty", Attack::Chatty),
];

/// The attack and its sizes (environment variables or flags of the same name).
#[derive(Clone, Debug)]
pub struct Config {
    pub attack: Attack,
    far_lines: u64,
    far_stride: u64,
    follows: u64,
    churn_followers: u64,
    storm_connections: u64,
    storm_rounds: u64,
    storm_follows: u64,
    padded_events: u64,
    padded_bytes: usize,
    chatty_clients: u64,
    chatty_bytes: u64,
    chatty_events: u64,
    chatty_ordinary: u64,
    chatty_time: Duration,
    probe_interval: Duration,
}

pub const USAGE: &str = "\
Adversarial scenario: scenario=adversarial attack=NAME, one of far-ahead far-ahead-max
follow-storm follow-churn disconnect-storm zero-padded chatty. Sizes (defaults): farLines
5000 (far-ahead-max: 1000), farStride 2000000, followCount 100000, churnFollowers
1000000, stormConnections 4000,
stormRounds 3, stormFollows 1000, paddedEvents 100000, paddedBytes 1000, chattyClients 20,
chattyBytes 8388608, chattyEvents 200000, chattyOrdinary 10, chattyMs 3000,
probeIntervalMs 10. The summary adds input_bytes, probe latencies and, with --server-pid,
server_cpu_s (while the attack ran), server_ns_per_byte and server_peak_rss_kib.";

pub fn config(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
    use crate::num;
    let name = get("attack").ok_or("scenario adversarial needs attack=NAME")?;
    let attack = ATTACKS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
        .ok_or_else(|| format!("unknown attack '{name}'"))?;
    let c = Config {
        attack,
        // The variant costs the same per line; it checks the top of the seq range.
        far_lines: num(
            get("farLines"),
            "farLines",
            if attack == Attack::FarAheadMax {
                1000
            } else {
                5000
            },
        )?,
        far_stride: num(get("farStride"), "farStride", 2_000_000)?,
        follows: num(get("followCount"), "followCount", 100_000)?,
        churn_followers: num(get("churnFollowers"), "churnFollowers", 1_000_000)?,
        storm_connections: num(get("stormConnections"), "stormConnections", 4000)?,
        storm_rounds: num(get("stormRounds"), "stormRounds", 3)?,
        storm_follows: num(get("stormFollows"), "stormFollows", 1000)?,
        padded_events: num(get("paddedEvents"), "paddedEvents", 100_000)?,
        padded_bytes: num(get("paddedBytes"), "paddedBytes", 1000)?,
        chatty_clients: num(get("chattyClients"), "chattyClients", 20)?,
        chatty_bytes: num(get("chattyBytes"), "chattyBytes", 8 << 20)?,
        chatty_events: num(get("chattyEvents"), "chattyEvents", 200_000)?,
        chatty_ordinary: num(get("chattyOrdinary"), "chattyOrdinary", 10)?,
        chatty_time: Duration::from_millis(num(get("chattyMs"), "chattyMs", 3000)?),
        probe_interval: Duration::from_millis(num(get("probeIntervalMs"), "probeIntervalMs", 10)?),
    };
    let ok = c.far_lines >= 1
        && c.far_stride >= 2
        && c.far_lines
            .checked_mul(c.far_stride)
            .is_some_and(|x| x < 1 << 63)
        && c.follows >= 1
        && c.churn_followers >= 1
        && c.storm_connections >= 1
        && c.storm_rounds >= 1
        && c.storm_follows >= 1
        && c.padded_events >= 1
        && (30..=4096).contains(&c.padded_bytes)
        && c.chatty_clients >= 1
        && c.chatty_ordinary >= 1
        && c.chatty_events >= 1;
    if !ok {
        return Err("adversarial sizes: every count >= 1, farStride >= 2, farLines * farStride < 2^63, 30 <= paddedBytes <= 4096".into());
    }
    Ok(c)
}

/// What every attack shares: where to connect, how long to wait, what was sent and
/// verified.
struct Ctx {
    events: SocketAddr,
    clients: SocketAddr,
    /// No progress for this long is a failure.
    timeout: Duration,
    /// Bytes sent to either port (both ids and events, and client chatter).
    input: Arc<AtomicU64>,
    /// Notifications verified.
    notes: Arc<AtomicU64>,
    /// Event lines sent.
    events_sent: Arc<AtomicU64>,
    /// Attack-specific `key=value` pairs for the summary.
    detail: String,
}

/// Runs the adversarial scenario, prints the summary line, returns the exit code.
pub fn main(s: &crate::Settings, cfg: &Config) -> std::process::ExitCode {
    let name = ATTACKS
        .iter()
        .find(|(_, a)| *a == cfg.attack)
        .map(|(n, _)| *n)
        .unwrap_or("?");
    log::info!(
        "scenario=adversarial attack={name} server={}:{}/{}",
        s.host,
        s.event_port,
        s.client_port
    );
    let addr = |port| format!("{}:{port}", s.host).parse::<SocketAddr>();
    let (events, clients) = match (addr(s.event_port), addr(s.client_port)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("bad address: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut ctx = Ctx {
        events,
        clients,
        timeout: s.timeout,
        input: Arc::default(),
        notes: Arc::default(),
        events_sent: Arc::default(),
        detail: String::new(),
    };
    let cpu0 = s.server_pid.and_then(procfs::cpu_time);
    let started = Instant::now();
    let probe = Probe::start(clients, cfg.probe_interval, s.timeout);
    let outcome = match cfg.attack {
        Attack::FarAhead => far_ahead(&mut ctx, cfg, false),
        Attack::FarAheadMax => far_ahead(&mut ctx, cfg, true),
        Attack::FollowStorm => follow_storm(&mut ctx, cfg),
        Attack::FollowChurn => follow_churn(&mut ctx, cfg),
        Attack::DisconnectStorm => disconnect_storm(&mut ctx, cfg),
        Attack::ZeroPadded => zero_padded(&mut ctx, cfg),
        Attack::Chatty => chatty(&mut ctx, cfg),
    };
    let attack_s = started.elapsed().as_secs_f64();
    let probes = probe.stop();
    // What the server still does after the last check (closing connections, reading
    // chatter left in its sockets) is part of the attack: wait until its CPU stands still.
    let cpu1 = s.server_pid.and_then(|pid| settle(pid, s.timeout));
    let elapsed = started.elapsed().as_secs_f64();
    let result = crate::verdict(&outcome);
    let input = ctx.input.load(Ordering::Relaxed);
    let mut summary = format!(
        "result={result} scenario=adversarial attack={name} events={} notifications={} input_bytes={input} attack_s={attack_s:.3} elapsed_s={elapsed:.3} sim_cpu_s={:.2} {} probe_failures={}{}",
        ctx.events_sent.load(Ordering::Relaxed),
        ctx.notes.load(Ordering::Relaxed),
        crate::proc_cpu_s("self").unwrap_or(0.0),
        probes.summary(),
        probes.failures,
        ctx.detail,
    );
    if let Some(pid) = s.server_pid {
        let cpu = match (cpu0, cpu1) {
            (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
            _ => f64::NAN,
        };
        let _ = write!(
            summary,
            " server_cpu_s={cpu:.2} server_ns_per_byte={:.1} server_peak_rss_kib={}",
            cpu * 1e9 / input.max(1) as f64,
            procfs::status_kib(pid, "VmHWM:").unwrap_or(0)
        );
    }
    println!("{summary}");
    if outcome.is_ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

// ---- the attacks ---------------------------------------------------------------------

/// Broadcasts far ahead: line k is `s_k|B` with `s_k = k * farStride` (or, near the top,
/// `u64::MAX - (farLines - k) * farStride`), each followed by the ordinary `s_k - 1|P|k|1`
/// (so out of order). Each far line is `--max-window` or more beyond the next expected
/// seq and forces the missing seqs before it to be skipped. Watched: user 1 gets every
/// line, in seq order. The source then leaves (session end delivers the last pair).
fn far_ahead(ctx: &mut Ctx, cfg: &Config, near_max: bool) -> Result<(), String> {
    let n = cfg.far_lines;
    let seq = |k: u64| {
        if near_max {
            u64::MAX - (n - k) * cfg.far_stride
        } else {
            k * cfg.far_stride
        }
    };
    let mut expected = Vec::with_capacity(2 * n as usize);
    for k in 1..=n {
        let s = seq(k);
        expected.push(format!("{}|P|{k}|1", s - 1).into_bytes());
        expected.push(format!("{s}|B").into_bytes());
    }
    let watch = ctx.watch(1, expected)?;
    identify_pause(1);
    let mut src = ctx.source()?;
    for k in 1..=n {
        let s = seq(k);
        src.line(format_args!("{s}|B"))?;
        src.line(format_args!("{}|P|{k}|1", s - 1))?;
    }
    src.close()?;
    ctx.detail = format!(" far_lines={n} first_seq={} last_seq={}", seq(1), seq(n));
    watch.join()
}

/// One user (1, watched) follows `followCount` authors; each author posts once (user 1
/// gets every one); user 1 unfollows them all; each posts again (nobody is notified);
/// a broadcast ends it.
fn follow_storm(ctx: &mut Ctx, cfg: &Config) -> Result<(), String> {
    let f = cfg.follows;
    let authors = 2..=f + 1;
    let mut expected: Vec<Vec<u8>> = authors
        .clone()
        .enumerate()
        .map(|(i, a)| format!("{}|S|{a}", f + 1 + i as u64).into_bytes())
        .collect();
    let last = 4 * f + 1;
    expected.push(format!("{last}|B").into_bytes());
    let watch = ctx.watch(1, expected)?;
    identify_pause(1);
    let mut src = ctx.source()?;
    let mut seq = 0;
    for kind in ["F", "S", "U", "S"] {
        for a in authors.clone() {
            seq += 1;
            match kind {
                "S" => src.line(format_args!("{seq}|S|{a}"))?,
                _ => src.line(format_args!("{seq}|{kind}|1|{a}"))?,
            }
        }
    }
    src.line(format_args!("{last}|B"))?;
    src.flush()?;
    ctx.detail = format!(" follows={f}");
    let result = watch.join();
    src.close()?;
    result
}

/// User 1 (watched) follows user 2; then `churnFollowers` users, each a new id, follow 2
/// and unfollow it at once; 2 posts, and a broadcast ends it: user 1 gets exactly those
/// two. What it measures is memory: the graph holds one edge at any time, so whatever the
/// server keeps per id it has seen (and the resizing of a map of them) shows in its peak
/// RSS and longest turn.
fn follow_churn(ctx: &mut Ctx, cfg: &Config) -> Result<(), String> {
    let n = cfg.churn_followers;
    let status = 2 * n + 2;
    let expected = vec![
        format!("{status}|S|2").into_bytes(),
        format!("{}|B", status + 1).into_bytes(),
    ];
    let watch = ctx.watch(1, expected)?;
    identify_pause(1);
    let mut src = ctx.source()?;
    src.line(format_args!("1|F|1|2"))?;
    for k in 0..n {
        // Followers from 10 up: ids nobody else uses.
        src.line(format_args!("{}|F|{}|2", 2 * k + 2, 10 + k))?;
        src.line(format_args!("{}|U|{}|2", 2 * k + 3, 10 + k))?;
    }
    src.line(format_args!("{status}|S|2"))?;
    src.line(format_args!("{}|B", status + 1))?;
    src.flush()?;
    ctx.detail = format!(" churn_followers={n}");
    let result = watch.join();
    src.close()?;
    result
}

/// User 1 follows `stormFollows` authors and has one steady (watched) connection. Each
/// round: `stormConnections` more connections identify as user 1, a broadcast reaches
/// every one of them (checked), then all of them reset at once; a status update from one
/// of the authors must then reach the steady connection (and only it remains).
fn disconnect_storm(ctx: &mut Ctx, cfg: &Config) -> Result<(), String> {
    let fds = raise_fd_limit();
    // The storm's sockets, the steady one, probes and the source must fit in our limit.
    let c = cfg.storm_connections.min(fds.saturating_sub(64)).max(1) as usize;
    if (c as u64) < cfg.storm_connections {
        log::warn!(
            "stormConnections {} reduced to {c}: open file limit {fds}",
            cfg.storm_connections
        );
    }
    let follows = cfg.storm_follows;
    let round_seq = |r: u64| follows + 1 + 2 * r;
    let mut expected = Vec::new();
    for r in 0..cfg.storm_rounds {
        let s = round_seq(r);
        expected.push(format!("{s}|B").into_bytes());
        expected.push(format!("{}|S|{}", s + 1, 2 + r % follows).into_bytes());
    }
    let watch = ctx.watch(1, expected)?;
    let mut src = ctx.source()?;
    for a in 2..=follows + 1 {
        src.line(format_args!("{}|F|1|{a}", a - 1))?;
    }
    src.flush()?;
    for r in 0..cfg.storm_rounds {
        let t = Instant::now();
        let mut storm = Vec::with_capacity(c);
        for _ in 0..c {
            storm.push(ctx.client(1)?);
        }
        let connect_s = t.elapsed().as_secs_f64();
        identify_pause(c as u64);
        let s = round_seq(r);
        src.line(format_args!("{s}|B"))?;
        src.flush()?;
        let want = format!("{s}|B\r\n");
        for (i, conn) in storm.iter_mut().enumerate() {
            read_exact_line(conn, want.as_bytes(), ctx.timeout)
                .map_err(|e| format!("round {r}: storm connection {i}: {e}"))?;
        }
        ctx.notes.fetch_add(c as u64, Ordering::Relaxed);
        let connected = t.elapsed();
        let t = Instant::now();
        for conn in &storm {
            set_linger_zero(conn);
        }
        drop(storm); // every one resets, back to back
        std::thread::sleep(Duration::from_millis(20));
        src.line(format_args!("{}|S|{}", s + 1, 2 + r % follows))?;
        src.flush()?;
        if let Err(e) = watch.wait_for(2 * (r + 1), ctx.timeout) {
            return Err(watch.join().err().unwrap_or(e)); // the reader's reason, if any
        }
        log::info!(
            "round {r}: {c} connections connected in {connect_s:.2} s, identified and read a broadcast in {:.2} s; reset, and the next status update arrived {:.3} s later",
            connected.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
    }
    ctx.detail = format!(
        " storm_connections={c} storm_rounds={} storm_follows={follows}",
        cfg.storm_rounds
    );
    let result = watch.join();
    src.close()?;
    result
}

/// `paddedEvents` private messages of ~`paddedBytes` bytes each, numbers zero-padded
/// (`000…0002|P|000…01|2`: valid, but not canonical, so a server keeps the bytes), seq 1
/// withheld so they all wait; then seq 1 and a closing broadcast. User 2 is not
/// connected; every 1000th message goes to user 1 (watched, byte for byte) instead.
fn zero_padded(ctx: &mut Ctx, cfg: &Config) -> Result<(), String> {
    let n = cfg.padded_events;
    let ws = cfg.padded_bytes / 2;
    let wf = cfg.padded_bytes - ws - 5;
    let to = |seq: u64| if seq.is_multiple_of(1000) { 1 } else { 2 };
    let line = |seq: u64| format!("{seq:0>ws$}|P|{:0>wf$}|{}", 1, to(seq));
    let mut expected: Vec<Vec<u8>> = (2..=n + 1)
        .filter(|&s| to(s) == 1)
        .map(|s| line(s).into_bytes())
        .collect();
    expected.push(format!("{}|B", n + 2).into_bytes());
    let watch = ctx.watch(1, expected)?;
    identify_pause(1);
    let mut src = ctx.source()?;
    let t = Instant::now();
    for seq in 2..=n + 1 {
        src.line(format_args!("{}", line(seq)))?;
    }
    src.flush()?;
    let sent = t.elapsed();
    src.line(format_args!("1|P|1|2"))?;
    src.line(format_args!("{}|B", n + 2))?;
    src.flush()?;
    ctx.detail = format!(
        " padded_events={n} line_bytes={} send_s={:.3}",
        cfg.padded_bytes,
        sent.as_secs_f64()
    );
    let result = watch.join();
    src.close()?;
    result
}

/// `chattyClients` identified clients (users 1001…) that do not read while each sends up
/// to `chattyBytes` (64 KiB writes, a line end every 1 MiB) for at most `chattyMs`, while
/// `chattyEvents` events flow, paced over half that time: a broadcast every 100th, a
/// private message to a chatty user every 10th, the rest private messages to
/// `chattyOrdinary` ordinary clients (users 1…, watched). At the end each chatty client
/// reads what it was sent: it must be its exact stream too.
fn chatty(ctx: &mut Ctx, cfg: &Config) -> Result<(), String> {
    let (k, o, e) = (cfg.chatty_clients, cfg.chatty_ordinary, cfg.chatty_events);
    let line = |i: u64| -> (String, Option<u64>) {
        if i.is_multiple_of(100) {
            (format!("{i}|B"), None)
        } else if i % 10 == 5 {
            let to = 1001 + (i / 10) % k;
            (format!("{i}|P|{}|{to}", 1 + i % 977), Some(to))
        } else {
            let to = 1 + i % o;
            (format!("{i}|P|{}|{to}", 1 + i % 977), Some(to))
        }
    };
    let stream_of = |user: u64| -> Vec<Vec<u8>> {
        (1..=e)
            .map(line)
            .filter(|(_, to)| to.is_none_or(|t| t == user))
            .map(|(l, _)| l.into_bytes())
            .collect()
    };
    let mut watches = Vec::new();
    for u in 1..=o {
        watches.push(ctx.watch(u, stream_of(u))?);
    }
    let mut talkers = Vec::new();
    for u in 1001..=1000 + k {
        talkers.push((u, ctx.client(u)?));
    }
    identify_pause(o + k);
    let deadline = Instant::now() + cfg.chatty_time;
    let mut chatter = Vec::new();
    for (_, conn) in &talkers {
        let w = conn.try_clone().map_err(|e| format!("chatty clone: {e}"))?;
        let (input, bytes) = (ctx.input.clone(), cfg.chatty_bytes);
        chatter.push(std::thread::spawn(move || chat(w, bytes, deadline, &input)));
    }
    let mut src = ctx.source()?;
    let chunks = 50u64;
    let pause = cfg.chatty_time / 2 / chunks as u32;
    for c in 0..chunks {
        for i in (c * e / chunks + 1)..=((c + 1) * e / chunks) {
            src.line(format_args!("{}", line(i).0))?;
        }
        src.flush()?;
        std::thread::sleep(pause);
    }
    let mut result = Ok(());
    for w in watches {
        result = result.and(w.join());
    }
    let mut chatted = 0;
    for h in chatter {
        chatted += h.join().unwrap_or(0);
    }
    // Now the chatty clients read: they must have missed nothing either.
    for (u, conn) in talkers {
        let expected = stream_of(u);
        let n = expected.len() as u64;
        let r = read_stream(conn, u, &expected, ctx.timeout, None);
        ctx.notes
            .fetch_add(if r.is_ok() { n } else { 0 }, Ordering::Relaxed);
        result = result.and(r);
    }
    ctx.detail = format!(" chatty_clients={k} chatty_bytes_sent={chatted} ordinary_clients={o}");
    src.close()?;
    result
}

/// Sends chatter on `s` until `bytes` are sent, `deadline` passes, or the server takes
/// nothing for a second. Returns the bytes sent.
fn chat(mut s: TcpStream, bytes: u64, deadline: Instant, input: &AtomicU64) -> u64 {
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    let plain = vec![b'x'; 64 * 1024];
    let mut eol = plain.clone();
    eol[64 * 1024 - 2..].copy_from_slice(b"\r\n");
    let mut sent = 0u64;
    let mut n = 0u64;
    while sent < bytes && Instant::now() < deadline {
        n += 1;
        let chunk = if n.is_multiple_of(16) { &eol } else { &plain };
        let chunk = &chunk[..chunk.len().min((bytes - sent) as usize)];
        match s.write(chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                sent += k as u64;
                input.fetch_add(k as u64, Ordering::Relaxed);
            }
        }
    }
    sent
}

// ---- sources, clients, watchers -------------------------------------------------------

/// Give the server a moment to read the ids of `n` new connections.
fn identify_pause(n: u64) {
    std::thread::sleep(Duration::from_millis(200 + n / 20));
}

impl Ctx {
    /// An identified client connection of `user`.
    fn client(&self, user: u64) -> Result<TcpStream, String> {
        let mut c = TcpStream::connect(self.clients)
            .map_err(|e| format!("connect to clients port {}: {e}", self.clients))?;
        let id = format!("{user}\r\n");
        c.write_all(id.as_bytes())
            .map_err(|e| format!("send id: {e}"))?;
        self.input.fetch_add(id.len() as u64, Ordering::Relaxed);
        Ok(c)
    }

    fn source(&self) -> Result<Source, String> {
        let stream = TcpStream::connect(self.events)
            .map_err(|e| format!("connect to events port {}: {e}", self.events))?;
        let _ = stream.set_nodelay(true);
        Ok(Source {
            stream,
            buf: Vec::with_capacity(128 * 1024),
            input: self.input.clone(),
            lines: self.events_sent.clone(),
        })
    }

    /// A connection of `user`, read on its own thread, that must receive exactly
    /// `expected` (payloads without `\r\n`).
    fn watch(&self, user: u64, expected: Vec<Vec<u8>>) -> Result<Watch, String> {
        let conn = self.client(user)?;
        let progress = Arc::new(AtomicU64::new(0));
        let (p, timeout, notes) = (progress.clone(), self.timeout, self.notes.clone());
        let handle = std::thread::spawn(move || {
            let r = read_stream(conn, user, &expected, timeout, Some(&p));
            notes.fetch_add(p.load(Ordering::Relaxed), Ordering::Relaxed);
            r
        });
        Ok(Watch { progress, handle })
    }
}

/// The event source: lines are buffered and written in 64 KiB pieces.
struct Source {
    stream: TcpStream,
    buf: Vec<u8>,
    input: Arc<AtomicU64>,
    lines: Arc<AtomicU64>,
}

impl Source {
    fn line(&mut self, payload: std::fmt::Arguments) -> Result<(), String> {
        self.buf
            .write_fmt(payload)
            .and_then(|()| self.buf.write_all(b"\r\n"))
            .map_err(|e| e.to_string())?;
        self.lines.fetch_add(1, Ordering::Relaxed);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        self.stream
            .write_all(&self.buf)
            .map_err(|e| format!("event source: {e}"))?;
        self.input
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.buf.clear();
        Ok(())
    }

    /// Flushes and disconnects (the session ends).
    fn close(mut self) -> Result<(), String> {
        self.flush()
    }
}

/// A watched connection's reader thread and how far it got.
struct Watch {
    progress: Arc<AtomicU64>,
    handle: JoinHandle<Result<(), String>>,
}

impl Watch {
    /// Waits until `n` lines were verified; fails when the reader stopped short or
    /// `timeout` passed without progress.
    fn wait_for(&self, n: u64, timeout: Duration) -> Result<(), String> {
        let mut last = (self.progress.load(Ordering::Relaxed), Instant::now());
        loop {
            let p = self.progress.load(Ordering::Relaxed);
            if p >= n {
                return Ok(());
            }
            if self.handle.is_finished() {
                return Err(format!("watched client: stopped at line {p} of {n}"));
            }
            if p != last.0 {
                last = (p, Instant::now());
            } else if last.1.elapsed() > timeout {
                return Err(format!("watched client: stuck at line {p} of {n}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn join(self) -> Result<(), String> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err("watcher thread panicked".into()))
    }
}

/// Reads `conn` until every line of `expected` has arrived, exactly and in order.
fn read_stream(
    conn: TcpStream,
    user: u64,
    expected: &[Vec<u8>],
    timeout: Duration,
    progress: Option<&AtomicU64>,
) -> Result<(), String> {
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::with_capacity(64 * 1024, conn);
    let mut got = Vec::new();
    for (i, want) in expected.iter().enumerate() {
        got.clear();
        let ctx = || {
            format!(
                "user {user}, line {i} of {}: expected {:?}",
                expected.len(),
                String::from_utf8_lossy(want)
            )
        };
        match r.read_until(b'\n', &mut got) {
            Ok(0) => return Err(format!("{}, got end of stream", ctx())),
            Err(e) => return Err(format!("{}, got nothing ({e})", ctx())),
            Ok(_) => {}
        }
        if got.strip_suffix(b"\r\n") != Some(want.as_slice()) {
            return Err(format!(
                "{}, got {:?}",
                ctx(),
                String::from_utf8_lossy(&got)
            ));
        }
        if let Some(p) = progress {
            p.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Reads one line from `conn`, which must be `want` (with its `\r\n`).
fn read_exact_line(conn: &mut TcpStream, want: &[u8], timeout: Duration) -> Result<(), String> {
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut got = vec![0u8; want.len()];
    conn.read_exact(&mut got)
        .map_err(|e| format!("expected {:?}: {e}", String::from_utf8_lossy(want)))?;
    if got != want {
        return Err(format!(
            "expected {:?}, got {:?}",
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(&got)
        ));
    }
    Ok(())
}

/// Closing `conn` will send a reset, not a FIN (a FIN after the id is a half-close that
/// the server must not treat as a disconnect).
fn set_linger_zero(conn: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a pointer to a live `linger` of the given size.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Raises this process's open-file limit to its hard limit; returns the limit now.
fn raise_fd_limit() -> libc::rlim_t {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit read or write the `rlimit` we pass and nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r = want;
            }
        }
    }
    r.rlim_cur
}

// ---- measuring -------------------------------------------------------------------------

/// The freeze probe: a thread that every `interval` opens a client connection, sends an
/// invalid id and times until the server closes it.
struct Probe {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ProbeStats>,
}

#[derive(Default)]
struct ProbeStats {
    /// Latency of each probe, ms (a timed-out probe counts with its full wait).
    ms: Vec<f64>,
    failures: u64,
}

impl ProbeStats {
    fn summary(&self) -> String {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .map_or("-".to_owned(), |x| format!("{x:.3}"))
        };
        // p50 counts probes, not time: one probe waits through a whole freeze. This is
        // the time spent in probes that took 100 ms or more.
        let frozen = v
            .iter()
            .filter(|&&ms| ms >= 100.0)
            .fold(0.0, |a, ms| a + ms)
            / 1e3;
        format!(
            "probes={} probe_p50_ms={} probe_p99_ms={} probe_max_ms={} probe_frozen_s={frozen:.2}",
            v.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        )
    }
}

impl Probe {
    fn start(addr: SocketAddr, interval: Duration, limit: Duration) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut stats = ProbeStats::default();
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                match probe_once(addr, limit) {
                    Ok(()) => {}
                    Err(e) => {
                        stats.failures += 1;
                        log::warn!("probe: {e} after {:.3} s", t.elapsed().as_secs_f64());
                    }
                }
                stats.ms.push(t.elapsed().as_secs_f64() * 1e3);
                std::thread::sleep(interval);
            }
            stats
        });
        Probe { stop, handle }
    }

    /// Stops after the probe in flight; returns every latency.
    fn stop(self) -> ProbeStats {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// One probe: connect, send `x\r\n`, wait until the server closes (end of stream or
/// reset). Data from the server, or no close within `limit`, is an error.
fn probe_once(addr: SocketAddr, limit: Duration) -> Result<(), String> {
    let t = Instant::now();
    let mut c = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    let closed = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        )
    };
    match c.write_all(b"x\r\n") {
        Err(e) if closed(&e) => return Ok(()),
        Err(e) => return Err(format!("send: {e}")),
        Ok(()) => {}
    }
    let left = limit
        .saturating_sub(t.elapsed())
        .max(Duration::from_millis(1));
    c.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 256];
    match c.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("an invalid id was answered with {n} bytes")),
        Err(e) if closed(&e) => Ok(()),
        Err(e) => Err(format!("not closed: {e}")),
    }
}

/// The server's CPU time once it stands still (unchanged over 100 ms), or after `limit`.
fn settle(pid: u32, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut last = procfs::cpu_time(pid)?;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = procfs::cpu_time(pid)?;
        if now == last || start.elapsed() > limit {
            return Some(now);
        }
        last = now;
    }
}
