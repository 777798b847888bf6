//! maze-sim: verifier and load generator for any follower-maze server.
//!
//! Configured like the classic verifier (same environment variables and defaults), plus
//! `scenario` and `--server-pid`. Threads: one event source, one verifier polling every
//! client with mio, and helpers for misbehaving or churning clients. Prints the classic
//! banner on success, a precise reason on failure, and always a `key=value` summary last.

mod adversarial;
mod expected;
mod feed;
mod floor;
mod gen;
mod latency;
mod model;
mod source;
mod verify;

use follower_maze::procfs;
use gen::{GenConfig, Rng};
use model::Model;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use verify::{Mode, Verifier};

/// Every scenario, with its own pass criterion (README: "maze-sim scenarios").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Standard,
    Junk,
    Fragmented,
    DeepDisorder,
    GrowingDisorder,
    PausedSource,
    Gaps,
    NeverReads,
    MultiConn,
    Misbehaving,
    Churn,
    TwoSessions,
    Soak,
    Adversarial,
    Floor,
}

const SCENARIOS: [(&str, Scenario); 15] = [
    ("standard", Scenario::Standard),
    ("junk", Scenario::Junk),
    ("fragmented", Scenario::Fragmented),
    ("deep-disorder", Scenario::DeepDisorder),
    ("growing-disorder", Scenario::GrowingDisorder),
    ("paused-source", Scenario::PausedSource),
    ("gaps", Scenario::Gaps),
    ("never-reads", Scenario::NeverReads),
    ("multi-conn", Scenario::MultiConn),
    ("misbehaving", Scenario::Misbehaving),
    ("churn", Scenario::Churn),
    ("two-sessions", Scenario::TwoSessions),
    ("soak", Scenario::Soak),
    ("adversarial", Scenario::Adversarial),
    ("floor", Scenario::Floor),
];

#[derive(Clone, Debug)]
struct Settings {
    host: String,
    event_port: u16,
    client_port: u16,
    total: u64,
    clients: u64,
    users: u64,
    seed: u64,
    timeout: Duration,
    max_batch: usize,
    log_interval: Duration,
    scenario: Scenario,
    server_pid: Option<u32>,
    grace: Duration,
    broadcast_permille: u64,
    /// Events sent per second (in whole batches); 0: as fast as possible.
    events_per_second: u64,
    /// Scenario adversarial: the attack and its sizes.
    adversarial: Option<adversarial::Config>,
}

const USAGE: &str = "\
Usage: maze-sim [--scenario NAME] [--server-pid PID] [--NAME VALUE ...]

Settings come from the classic verifier's environment variables (flags of the same name
override them): eventListenerPort 9090, clientListenerPort 9099, totalEvents 10000000,
concurrencyLevel 100, numberOfUsers concurrencyLevel*10, randomSeed 666, timeout 20000 (ms),
maxEventSourceBatchSize 100, logInterval 1000 (ms), logLevel info; also host 127.0.0.1,
graceMs 300, broadcastPermille 5, eventsPerSecond 0 (paced: batches sent at that rate;
0 = as fast as possible), scenario standard.

Scenarios: standard junk fragmented deep-disorder growing-disorder paused-source gaps
never-reads multi-conn misbehaving churn two-sessions soak adversarial floor";

fn settings() -> Result<Settings, String> {
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    let mut server_pid = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "-h" || a == "--help" {
            return Err(format!("{USAGE}\n\n{}", adversarial::USAGE));
        }
        let name = a
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument '{a}'"))?;
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n.to_owned(), v.to_owned()),
            None => (
                name.to_owned(),
                args.next()
                    .ok_or_else(|| format!("--{name} needs a value"))?,
            ),
        };
        match name.as_str() {
            "server-pid" => {
                server_pid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("bad --server-pid '{value}'"))?,
                )
            }
            "scenario" => vars.push(("scenario".into(), value)),
            _ => vars.push((name, value)),
        }
    }
    let get = |k: &str| {
        vars.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let scenario_name = get("scenario").unwrap_or_else(|| "standard".into());
    let scenario = SCENARIOS
        .iter()
        .find(|(n, _)| *n == scenario_name)
        .map(|(_, s)| *s)
        .ok_or_else(|| format!("unknown scenario '{scenario_name}'"))?;
    let clients: u64 = num(get("concurrencyLevel"), "concurrencyLevel", 100)?;
    let default_total = match scenario {
        Scenario::Soak => 100_000_000,
        _ => 10_000_000,
    };
    let default_batch = match scenario {
        Scenario::DeepDisorder => 200_000,
        _ => 100,
    };
    let s = Settings {
        host: get("host").unwrap_or_else(|| "127.0.0.1".into()),
        event_port: num(get("eventListenerPort"), "eventListenerPort", 9090)?,
        client_port: num(get("clientListenerPort"), "clientListenerPort", 9099)?,
        total: num(get("totalEvents"), "totalEvents", default_total)?,
        clients,
        users: num(get("numberOfUsers"), "numberOfUsers", clients * 10)?,
        seed: num(get("randomSeed"), "randomSeed", 666)?,
        // Adversarial attacks may legitimately freeze a server for tens of seconds.
        timeout: Duration::from_millis(num(
            get("timeout"),
            "timeout",
            match scenario {
                Scenario::Adversarial => 60_000,
                _ => 20_000,
            },
        )?),
        max_batch: num(
            get("maxEventSourceBatchSize"),
            "maxEventSourceBatchSize",
            default_batch,
        )?,
        log_interval: Duration::from_millis(num(get("logInterval"), "logInterval", 1000)?.max(1)),
        scenario,
        server_pid,
        grace: Duration::from_millis(num(get("graceMs"), "graceMs", 300)?),
        broadcast_permille: num(get("broadcastPermille"), "broadcastPermille", 5)?.min(1000),
        events_per_second: num(get("eventsPerSecond"), "eventsPerSecond", 0)?,
        adversarial: match scenario {
            Scenario::Adversarial => Some(adversarial::config(get)?),
            _ => None,
        },
    };
    if s.clients == 0 || s.users < s.clients || s.users > u64::from(u32::MAX) || s.max_batch == 0 {
        return Err("need concurrencyLevel >= 1, concurrencyLevel <= numberOfUsers <= 4294967295, maxEventSourceBatchSize >= 1".into());
    }
    // The feed packs a seq in 56 bits (feed.rs).
    if s.total >= 1 << 56 {
        return Err(format!("need totalEvents < {}", 1u64 << 56));
    }
    Ok(s)
}

fn main() -> ExitCode {
    let s = match settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let level = std::env::var("logLevel").unwrap_or_else(|_| "info".into());
    env_logger::Builder::new()
        .parse_filters(&level.to_lowercase())
        .format(|f, r| writeln!(f, "[{}] {}", r.level(), r.args()))
        .init();
    if let Some(adv) = &s.adversarial {
        return adversarial::main(&s, adv);
    }
    if s.scenario == Scenario::Floor {
        return floor::main(&s);
    }
    let name = SCENARIOS
        .iter()
        .find(|(_, sc)| *sc == s.scenario)
        .map(|(n, _)| *n)
        .unwrap_or("?");
    log::info!(
        "scenario={name} events={} clients={} users={} seed={} max_batch={} server={}:{}/{}",
        s.total,
        s.clients,
        s.users,
        s.seed,
        s.max_batch,
        s.host,
        s.event_port,
        s.client_port
    );
    let started = Instant::now();
    let outcome = run(&s);
    let elapsed = started.elapsed().as_secs_f64();
    let (result, tally, events, latency) = match &outcome {
        Ok((t, e, l)) => {
            log::info!("==================================");
            log::info!("\\o/ ALL NOTIFICATIONS RECEIVED \\o/");
            log::info!("==================================");
            ("pass", *t, *e, l.as_str())
        }
        Err((why, t, e)) => {
            log::error!("FAILED: {why}");
            ("fail", *t, *e, "")
        }
    };
    let mut summary = format!(
        "result={result} scenario={name} events={events} notifications={} bytes={} elapsed_s={elapsed:.3} events_per_s={:.0} sim_cpu_s={:.2}",
        tally.notifications,
        tally.bytes,
        events as f64 / elapsed.max(1e-9),
        proc_cpu_s("self").unwrap_or(0.0),
    );
    if !latency.is_empty() {
        summary += " ";
        summary += latency;
    }
    report(summary, s.server_pid, outcome.is_ok())
}

/// "pass", or "fail" with the reason logged.
fn verdict<T>(outcome: &Result<T, String>) -> &'static str {
    match outcome {
        Ok(_) => "pass",
        Err(why) => {
            log::error!("FAILED: {why}");
            "fail"
        }
    }
}

/// Prints the summary line, with the server's CPU and peak RSS when its pid is known, and
/// returns the exit code.
fn report(mut summary: String, server_pid: Option<u32>, passed: bool) -> ExitCode {
    if let Some(pid) = server_pid {
        summary += &format!(
            " server_cpu_s={:.2} server_peak_rss_kib={}",
            proc_cpu_s(pid).unwrap_or(f64::NAN),
            procfs::status_kib(pid, "VmHWM:").unwrap_or(0)
        );
    }
    println!("{summary}");
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The tally, events sent, and the latency summary (`latency_p50_us=…`).
type Outcome = Result<(verify::Tally, u64, String), (String, verify::Tally, u64)>;

fn run(s: &Settings) -> Outcome {
    let zero = verify::Tally::default();
    let fail = |e: String| Err((e, zero, 0));
    let addr = |port| -> Result<SocketAddr, String> {
        format!("{}:{port}", s.host)
            .parse()
            .map_err(|e| format!("bad address: {e}"))
    };
    let (events_addr, clients_addr) = match (addr(s.event_port), addr(s.client_port)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let mut verifier = match Verifier::new(s.timeout, s.log_interval) {
        Ok(v) => v,
        Err(e) => return fail(format!("poll: {e}")),
    };
    let mut rng = Rng::new(s.seed);
    let hot_user = 1 + rng.below(s.users);
    let users = pick_users(&mut rng, s.users, s.clients, hot_user);
    let mut watch: Vec<(u64, usize)> = Vec::new();
    let connect = |user: u64| -> Result<TcpStream, String> {
        let mut c = TcpStream::connect(clients_addr)
            .map_err(|e| format!("connect to clients port {clients_addr}: {e}"))?;
        c.write_all(format!("{user}\r\n").as_bytes())
            .map_err(|e| format!("send id: {e}"))?;
        Ok(c)
    };
    // Steady clients: exact verification.
    let per_user = if s.scenario == Scenario::MultiConn {
        3
    } else {
        1
    };
    for (n, &u) in users.iter().enumerate() {
        // Multi-conn: users get 1, 2 or 3 connections.
        for _ in 0..(if per_user > 1 { 1 + n % per_user } else { 1 }) {
            match connect(u)
                .and_then(|c| verifier.add(c, u, Mode::Exact).map_err(|e| e.to_string()))
            {
                Ok(i) => watch.push((u, i)),
                Err(e) => return fail(e),
            }
        }
    }
    // The never-reader: the hot user, connected, identified, never read.
    let _never_reader = match s.scenario {
        Scenario::NeverReads => match connect(hot_user) {
            Ok(c) => Some(c),
            Err(e) => return fail(e),
        },
        _ => None,
    };
    // Churners: a few users whose connections come and go; suffix verification.
    let mut churn: Vec<(usize, u64)> = Vec::new();
    if s.scenario == Scenario::Churn {
        for k in 0..8u64 {
            let u = 1 + (hot_user + k * 7919) % s.users;
            match connect(u)
                .and_then(|c| verifier.add(c, u, Mode::Suffix).map_err(|e| e.to_string()))
            {
                Ok(i) => {
                    watch.push((u, i));
                    churn.push((i, u));
                }
                Err(e) => return fail(e),
            }
        }
    }
    let misbehaving = (s.scenario == Scenario::Misbehaving)
        .then(|| std::thread::spawn(move || misbehave(clients_addr)));
    // Identification happens on the server's next turns; give it a moment to read ids.
    std::thread::sleep(Duration::from_millis(200 + s.clients / 20));

    let sessions = if s.scenario == Scenario::TwoSessions {
        2
    } else {
        1
    };
    let mut total_events = 0;
    let soak = s
        .server_pid
        .filter(|_| s.scenario == Scenario::Soak)
        .map(rss_sampler);
    for session in 0..sessions {
        let gen_cfg = gen_config(s, session, hot_user);
        let (mut feed_tx, feed_rx) = feed::feed();
        feed_tx.keep_only(watch.iter().map(|&(u, _)| u));
        let mut model = Model::new(feed_rx);
        for &(u, i) in &watch {
            model.watch(u, i);
        }
        let send = source::SendConfig {
            addr: events_addr,
            max_batch: s.max_batch,
            junk_every: if s.scenario == Scenario::Junk { 20 } else { 0 },
            fragment: s.scenario == Scenario::Fragmented,
            seed: s.seed.wrapping_add(session),
            events_per_second: s.events_per_second,
            // Disorder that grows: batches up to 100 for the first half, then up to 100x.
            grow_at: (s.scenario == Scenario::GrowingDisorder).then_some(s.total / 2),
            // A source that stops mid-batch for a second, half-way through.
            pause_at: (s.scenario == Scenario::PausedSource).then_some(s.total / 2),
        };
        let (close_tx, close_rx) = std::sync::mpsc::channel();
        let stamps = latency::Stamps::default();
        verifier.latency.restart(stamps.clone());
        let sender = source::spawn(gen_cfg, send, stamps, Some(feed_tx), close_rx);
        let mut churn_rng = Rng::new(s.seed ^ 0xc4);
        let result = verifier.run(&mut model, s.grace, |v| {
            // Churn: now and then one churner leaves, or comes back.
            for &(i, u) in &churn {
                if churn_rng.below(20) == 0 {
                    v.detach(i);
                    if churn_rng.below(2) == 0 {
                        if let Ok(c) = connect(u) {
                            let _ = v.attach(i, c);
                        }
                    }
                }
            }
        });
        // The model goes first: a source waiting for it to catch up stops waiting.
        drop(model);
        let _ = close_tx.send(());
        let sent = match sender.join() {
            Ok(Ok((events, _bytes))) => events,
            Ok(Err(e)) => return Err((format!("event source: {e}"), verifier.tally, total_events)),
            Err(_) => {
                return Err((
                    "event source thread panicked".into(),
                    verifier.tally,
                    total_events,
                ))
            }
        };
        total_events += sent;
        if let Err(e) = result {
            return Err((e, verifier.tally, total_events));
        }
        if sessions > 1 {
            log::info!("session {} verified: {sent} events", session + 1);
            // The server resets when the source leaves; let it finish before the next one.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    if let Some(h) = misbehaving {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err((e, verifier.tally, total_events)),
            Err(_) => {
                return Err((
                    "misbehaving clients thread panicked".into(),
                    verifier.tally,
                    total_events,
                ))
            }
        }
    }
    if let Some(stop) = soak {
        let _ = stop.send(());
    }
    let latency = latency::summary(verifier.latency.total(), "latency_");
    Ok((verifier.tally, total_events, latency))
}

fn gen_config(s: &Settings, session: u64, hot_user: u64) -> GenConfig {
    let mut g = GenConfig::new(s.total, s.users, s.seed.wrapping_add(session * 1_000_003));
    g.broadcast_permille = s.broadcast_permille;
    match s.scenario {
        Scenario::Junk => g.noop_every = 37,
        Scenario::Gaps => {
            // Three gaps, one of them at the very start.
            g.gaps = vec![1, s.total / 3, 2 * s.total / 3];
            g.gap_len = 5;
        }
        Scenario::NeverReads => {
            g.hot_share = 20;
            g.hot_user = hot_user;
        }
        _ => {}
    }
    g
}

/// A setting's value: `default` when unset, an error when it does not parse.
fn num<T: std::str::FromStr>(v: Option<String>, name: &str, default: T) -> Result<T, String> {
    match v {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("bad value '{v}' for {name}")),
    }
}

/// `n` distinct users from `1..=users`, never `exclude`.
fn pick_users(rng: &mut Rng, users: u64, n: u64, exclude: u64) -> Vec<u64> {
    let mut chosen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let n = n.min(users.saturating_sub(1)).max(1);
    while (out.len() as u64) < n {
        let u = 1 + rng.below(users);
        if (u != exclude || users == 1) && chosen.insert(u) {
            out.push(u);
        }
    }
    out
}

/// Clients that do everything wrong at once; each must be closed by the server (or just
/// go away) while the steady clients carry on.
fn misbehave(addr: SocketAddr) -> Result<(), String> {
    let mut expect_closed = Vec::new();
    let mut silent = Vec::new();
    for round in 0..5u8 {
        let connect = || TcpStream::connect(addr).map_err(|e| format!("misbehaving connect: {e}"));
        for bad in [
            &b"abc\r\n"[..],
            b"-5\r\n",
            b"99999999999999999999999\r\n",
            &[b'7'; 200][..],
        ] {
            let mut c = connect()?;
            let _ = c.write_all(bad);
            expect_closed.push(c);
        }
        let mut garbage = connect()?;
        let bytes: Vec<u8> = (0..64u8)
            .map(|b| b.wrapping_mul(37).wrapping_add(round))
            .collect();
        let _ = garbage.write_all(&bytes);
        let _ = garbage.write_all(b"\n");
        expect_closed.push(garbage);
        drop(connect()?); // instant disconnect
        let mut quick = connect()?;
        let _ = quick.write_all(b"5\r\n");
        drop(quick); // identified, then gone
        silent.push(connect()?); // never sends an id
        std::thread::sleep(Duration::from_millis(20));
    }
    for mut c in expect_closed {
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(_) => return Err("a client with a bad id received data".into()),
            Err(e) => return Err(format!("a client with a bad id was not closed: {e}")),
        }
    }
    drop(silent);
    Ok(())
}

/// Samples the server's RSS every second until told to stop; prints each sample.
fn rss_sampler(pid: u32) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let start = Instant::now();
        loop {
            log::info!(
                "rss_sample t={:.0}s rss_kib={} cpu_s={:.2}",
                start.elapsed().as_secs_f64(),
                procfs::status_kib(pid, "VmRSS:").unwrap_or(0),
                proc_cpu_s(pid).unwrap_or(0.0)
            );
            if rx.recv_timeout(Duration::from_secs(1)).is_ok() {
                break;
            }
        }
    });
    tx
}

/// CPU seconds of process `pid` (a number, or `self`).
fn proc_cpu_s(pid: impl std::fmt::Display) -> Option<f64> {
    procfs::cpu_time(pid).map(|t| t.as_secs_f64())
}
