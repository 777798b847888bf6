//! The metrics endpoint (`--metrics-addr`), scraped by a real HTTP client and read by a
//! Prometheus text-format parser; plus the scrapers an operator does not want: slow,
//! malformed, never reading.

mod common;

use common::{clients, long_broadcasts_read_by, send_lines, Server};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn metrics_addr(s: &Server) -> SocketAddr {
    s.wait_log("metrics on http://");
    let log = s.log();
    let rest = log.split("metrics on http://").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut resp = agent
        .get(&format!("http://{addr}{path}"))
        .call()
        .expect("HTTP GET");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

/// Every sample of a scrape, by name, parsed as Prometheus text.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    parsed
        .samples
        .into_iter()
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                prometheus_parse::Value::Untyped(v) => v,
                other => panic!("{}: {other:?}", s.metric),
            };
            (s.metric, v)
        })
        .collect()
}

#[test]
fn a_scrape_shows_every_counter_as_the_final_stats_line_prints_it() {
    let s = Server::start(&["--metrics-addr", "127.0.0.1:0"]);
    let addr = metrics_addr(&s);
    let mut c = clients(&s, &[1, 2]);
    let mut src = s.source();
    send_lines(&mut src, &["2|F|1|2", "1|B", "3|S|2", "x|junk", "5|P|1|2"]);
    assert_eq!(c[0].read_lines(2), ["1|B", "3|S|2"]);
    assert_eq!(c[1].read_lines(2), ["1|B", "2|F|1|2"]);
    let m = scrape(addr);
    assert_eq!(m["follower_maze_clients"], 2.0);
    assert_eq!(m["follower_maze_sources"], 1.0);
    assert_eq!(m["follower_maze_window_waiting"], 1.0, "5 waits for 4");
    assert_eq!(m["follower_maze_next_seq"], 4.0);
    assert!(m["follower_maze_resident_memory_bytes"] > 1e6);
    assert!(m["follower_maze_open_fds"] >= 6.0);
    let (_, log) = s.terminate();
    let line = log.lines().rfind(|l| l.contains("final stats:")).unwrap();
    for field in line
        .split("final stats: ")
        .nth(1)
        .unwrap()
        .split_whitespace()
    {
        let (name, value) = field.split_once('=').unwrap();
        if name == "longest_turn_us" || name == "scrapes" || name.starts_with("bytes_") {
            continue; // the scrape itself moved these
        }
        let metric = match name {
            "waiting" => "follower_maze_window_waiting".to_string(), // a gauge
            "most_turn_bytes" => "follower_maze_most_turn_bytes".to_string(), // a gauge
            _ => format!("follower_maze_{name}_total"),
        };
        assert_eq!(
            m.get(&metric),
            Some(&value.parse::<f64>().unwrap()),
            "{metric}: {line}"
        );
    }
    assert!(line.contains("scrapes=1 "), "{line}");
}

#[test]
fn healthz_and_unknown_paths_and_methods() {
    let s = Server::start(&["--metrics-addr", "127.0.0.1:0"]);
    let addr = metrics_addr(&s);
    assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(get(addr, "/nope").0, 404);
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("Allow: GET"), "{answer}");
}

#[test]
fn malformed_slow_and_never_reading_scrapers_hold_nothing() {
    let s = Server::start(&["--metrics-addr", "127.0.0.1:0"]);
    let addr = metrics_addr(&s);
    // Malformed: an answer, then closed.
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let mut answer = String::new();
    bad.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Too large: refused, closed.
    let mut big = TcpStream::connect(addr).unwrap();
    let _ =
        big.write_all(format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000)).as_bytes());
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Slow: half a request, then silence: closed at the deadline (2 s), not held.
    let t0 = Instant::now();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /metr").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "closed by the deadline"
    );
    // Twenty that never read, at once: the server still serves events and scrapes.
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| {
            let c = TcpStream::connect(addr).unwrap();
            (&c).write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
            c
        })
        .collect();
    let mut c = clients(&s, &[7]);
    let mut src = s.source();
    send_lines(&mut src, &["1|P|1|7"]);
    assert_eq!(c[0].read_lines(1), ["1|P|1|7"]);
    std::thread::sleep(Duration::from_millis(2500)); // past their deadline
    assert_eq!(get(addr, "/healthz").0, 200);
    drop(idle);
}

/// Found by a fresh-eyes attack (session 9): after a burst each idle client kept up to 16
/// KiB of write buffer, so 10,000 clients held 58.7 MiB against a 4.5 MiB baseline. Idle
/// buffers now keep, together, at most an eighth of `--total-buffer-limit`, once idle for
/// 2 s (buffers used again within that are kept: no growing back every burst).
#[test]
fn after_a_burst_idle_buffers_keep_at_most_their_share_of_the_total_limit() {
    let total_limit = 2 << 20;
    let s = Server::start(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--total-buffer-limit",
        &total_limit.to_string(),
    ]);
    let addr = metrics_addr(&s);
    // 100 clients, 30 notifications of 1,006 bytes each: each buffer grows to the 12 KiB
    // write size (100 of them fit in the limit), 1.2 MB in all, against an allowance of
    // 256 KiB.
    let _connected = long_broadcasts_read_by(&s, 100, 30);
    let read_all = Instant::now();
    let held = scrape(addr)["follower_maze_output_buffer_bytes"];
    if read_all.elapsed() < Duration::from_millis(1500) {
        assert!(held >= 1e6, "released before 2 s idle: {held} bytes held");
    }
    // Released once idle for 2 s, at most once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = scrape(addr)["follower_maze_output_buffer_bytes"];
        if held <= (total_limit / 8) as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle buffers still hold {held} bytes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Found by a fresh-eyes attack (session 10): each scrape listed `/proc/self/fd` and summed
/// every connection's buffer, 11-13 ms with 10,000 connections, and 16 scrapers at once
/// made loop turns of 130-200 ms. Those figures are now taken at most once a second.
#[test]
fn the_costly_gauges_are_taken_at_most_once_a_second() {
    let s = Server::start(&["--metrics-addr", "127.0.0.1:0"]);
    let addr = metrics_addr(&s);
    let first = Instant::now();
    let before = scrape(addr)["follower_maze_open_fds"];
    let users: Vec<u64> = (1..=20).collect();
    let _more = clients(&s, &users);
    let again = scrape(addr)["follower_maze_open_fds"];
    if first.elapsed() < Duration::from_millis(800) {
        assert_eq!(again, before, "taken again within a second");
    }
    std::thread::sleep(Duration::from_millis(1100));
    let later = scrape(addr)["follower_maze_open_fds"];
    assert!(later >= before + 20.0, "{before} -> {later}");
}
