//! Every maze-sim scenario, at a small size, against the real server.

mod common;

use common::Server;
use std::process::Command;

/// Runs maze-sim against `server` and returns (passed, summary line, full output).
fn sim(server: &Server, scenario: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_maze-sim"))
        .args([
            "--scenario",
            scenario,
            "--server-pid",
            &server.pid().to_string(),
        ])
        .env("eventListenerPort", server.events.port().to_string())
        .env("clientListenerPort", server.clients.port().to_string())
        .env("timeout", "10000")
        .env("logInterval", "1000")
        .envs(env.iter().copied())
        .output()
        .expect("run maze-sim");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = stdout.lines().last().unwrap_or_default().to_owned();
    (out.status.success(), summary, format!("{stderr}\n{stdout}"))
}

fn field<'a>(summary: &'a str, key: &str) -> &'a str {
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {summary}"))
}

/// Runs one scenario and checks it passed, with the banner and a sane summary.
fn passes(server_args: &[&str], scenario: &str, env: &[(&str, &str)]) -> (String, String, Server) {
    let server = Server::start(server_args);
    let (ok, summary, output) = sim(&server, scenario, env);
    assert!(
        ok,
        "{scenario} failed:\n{output}\nserver log:\n{}",
        server.log()
    );
    assert!(
        output.contains("[INFO] \\o/ ALL NOTIFICATIONS RECEIVED \\o/"),
        "{output}"
    );
    assert_eq!(field(&summary, "result"), "pass");
    assert_eq!(field(&summary, "scenario"), scenario);
    let us = |k: &str| field(&summary, k).parse::<u64>().unwrap();
    assert!(us("latency_p50_us") >= 1, "{summary}");
    assert!(us("latency_p50_us") <= us("latency_p99_us"), "{summary}");
    assert!(us("latency_p99_us") <= us("latency_max_us"), "{summary}");
    assert!(
        field(&summary, "notifications").parse::<u64>().unwrap() > 0,
        "{summary}"
    );
    assert!(
        field(&summary, "server_peak_rss_kib")
            .parse::<u64>()
            .unwrap()
            > 0,
        "{summary}"
    );
    (summary, output, server)
}

#[test]
fn standard() {
    let (summary, _, _) = passes(
        &[],
        "standard",
        &[("totalEvents", "50000"), ("concurrencyLevel", "50")],
    );
    assert_eq!(field(&summary, "events"), "50000");
}

#[test]
fn junk_and_malformed_lines() {
    let (_, _, server) = passes(
        &[],
        "junk",
        &[("totalEvents", "30000"), ("concurrencyLevel", "20")],
    );
    let (_, log) = server.terminate();
    assert!(!log.contains(" junk=0 "), "junk was sent: {log}");
    assert!(!log.contains(" noop=0 "), "no-ops were sent: {log}");
    assert!(
        !log.contains(" overlong=0 "),
        "over-long lines were sent: {log}"
    );
}

#[test]
fn fragmented_writes() {
    passes(
        &[],
        "fragmented",
        &[("totalEvents", "3000"), ("concurrencyLevel", "10")],
    );
}

#[test]
fn deep_disorder() {
    passes(
        &[],
        "deep-disorder",
        &[
            ("totalEvents", "150000"),
            ("maxEventSourceBatchSize", "100000"),
            ("concurrencyLevel", "20"),
        ],
    );
}

#[test]
fn missing_sequence_numbers() {
    let (_, _, server) = passes(
        &["--gap-timeout-ms", "200"],
        "gaps",
        &[("totalEvents", "20000"), ("concurrencyLevel", "20")],
    );
    let (_, log) = server.terminate();
    assert!(log.contains("skipped=15"), "three gaps of five: {log}");
}

#[test]
fn a_client_that_never_reads() {
    passes(
        &["--client-buffer-limit", "8192", "--stall-timeout-ms", "500"],
        "never-reads",
        &[("totalEvents", "60000"), ("concurrencyLevel", "20")],
    );
}

#[test]
fn several_connections_per_user() {
    passes(
        &[],
        "multi-conn",
        &[("totalEvents", "30000"), ("concurrencyLevel", "20")],
    );
}

#[test]
fn misbehaving_clients() {
    let (_, _, server) = passes(
        &[],
        "misbehaving",
        &[("totalEvents", "30000"), ("concurrencyLevel", "20")],
    );
    let (_, log) = server.terminate();
    assert!(common::final_counter(&log, "clients_bad_id") > 0, "{log}");
}

#[test]
fn client_churn() {
    passes(
        &[],
        "churn",
        &[("totalEvents", "40000"), ("concurrencyLevel", "20")],
    );
}

#[test]
fn two_sessions_back_to_back() {
    let (summary, _, server) = passes(
        &[],
        "two-sessions",
        &[("totalEvents", "20000"), ("concurrencyLevel", "20")],
    );
    assert_eq!(field(&summary, "events"), "40000");
    server.wait_log("session 2 ended");
}

#[test]
fn soak_samples_server_rss() {
    let (_, output, _) = passes(
        &[],
        "soak",
        &[("totalEvents", "150000"), ("concurrencyLevel", "20")],
    );
    assert!(output.contains("rss_sample t="), "{output}");
}

#[test]
fn a_wrong_port_fails_with_a_reason_and_a_summary() {
    let server = Server::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_maze-sim"))
        .env("eventListenerPort", server.events.port().to_string())
        .env("clientListenerPort", "1")
        .env("totalEvents", "10")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().last().unwrap().starts_with("result=fail "),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("connect to clients port"));
}

/// The adversarial workload's attacks, each at a tiny size against a fresh server: every
/// one must pass its own correctness check and report its measurements.
#[test]
fn adversarial_attacks_at_a_small_size() {
    for attack in [
        "far-ahead",
        "far-ahead-max",
        "follow-storm",
        "follow-churn",
        "disconnect-storm",
        "zero-padded",
        "chatty",
    ] {
        let server = Server::start(&[]);
        let (ok, summary, output) = sim(
            &server,
            "adversarial",
            &[
                ("attack", attack),
                ("farLines", "50"),
                ("followCount", "200"),
                ("churnFollowers", "2000"),
                ("stormConnections", "200"),
                ("stormFollows", "100"),
                ("paddedEvents", "2000"),
                ("chattyClients", "4"),
                ("chattyBytes", "1000000"),
                ("chattyEvents", "5000"),
                ("chattyMs", "500"),
            ],
        );
        assert!(
            ok,
            "{attack} failed:\n{output}\nserver log:\n{}",
            server.log()
        );
        assert_eq!(field(&summary, "attack"), attack);
        assert!(field(&summary, "input_bytes").parse::<u64>().unwrap() > 0);
        assert!(
            field(&summary, "probe_max_ms").parse::<f64>().is_ok(),
            "{summary}"
        );
    }
}

/// Issue 11's no-false-skip cases: disorder that grows within a session (batches of up to
/// 100, then of up to 10,000), and a source that stops mid-batch for a second. Nothing may
/// be skipped: every client gets its whole stream, and the server counts no skip.
#[test]
fn growing_disorder_and_a_paused_source_lose_nothing() {
    for (scenario, total) in [("growing-disorder", "200000"), ("paused-source", "60000")] {
        let (_, _, server) = passes(
            &[],
            scenario,
            &[("totalEvents", total), ("concurrencyLevel", "20")],
        );
        let (_, log) = server.terminate();
        assert_eq!(
            common::final_counter(&log, "skipped"),
            0,
            "{scenario}: {log}"
        );
        assert_eq!(common::final_counter(&log, "false_skips"), 0, "{scenario}");
    }
}

/// The floor workload's relay and scenario: every line of the stream reaches some client,
/// and the relay's CPU and latency are measured (bench.sh's `floor`).
#[test]
fn the_floor_relay_hands_every_line_to_a_client() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (ep, cp) = (free(), free());
    let mut relay = Command::new(env!("CARGO_BIN_EXE_floor-relay"))
        .env("eventListenerPort", ep.to_string())
        .env("clientListenerPort", cp.to_string())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", ep)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_maze-sim"))
        .args([
            "--scenario",
            "floor",
            "--server-pid",
            &relay.id().to_string(),
        ])
        .env("eventListenerPort", ep.to_string())
        .env("clientListenerPort", cp.to_string())
        .env("totalEvents", "100000")
        .env("concurrencyLevel", "20")
        .env("timeout", "10000")
        .output()
        .unwrap();
    let _ = relay.kill();
    let _ = relay.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success(),
        "{summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(field(summary, "notifications"), "100000");
    assert!(
        field(summary, "server_cpu_s").parse::<f64>().is_ok(),
        "{summary}"
    );
    // Every line is timed (the instrument's own latency floor, paced).
    let us = |k: &str| field(summary, k).parse::<u64>().unwrap();
    assert!(us("latency_p50_us") >= 1, "{summary}");
    assert!(us("latency_p50_us") <= us("latency_max_us"), "{summary}");
}

/// `var` at `too_many` is a usage error (exit 2, one line saying `message`); at `fits` it is
/// accepted: maze-sim gets as far as connecting (port 1: nothing there) and fails so.
fn refused_above(var: &str, fits: &str, too_many: &str, env: &[(&str, &str)], message: &str) {
    for (value, code) in [(too_many, 2), (fits, 1)] {
        let out = Command::new(env!("CARGO_BIN_EXE_maze-sim"))
            .envs(env.iter().copied())
            .env(var, value)
            .env("eventListenerPort", "1")
            .env("clientListenerPort", "1")
            .env("timeout", "1000")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{var}={value}: {stderr}");
        if code == 2 {
            assert!(stderr.contains(message), "{stderr}");
        }
    }
}

/// Ids must fit the generator's 32-bit edges: more users than that is a usage error (exit 2,
/// one line), not a run that silently clamps them.
#[test]
fn more_users_than_ids_of_32_bits_is_refused() {
    let env = [("concurrencyLevel", "1"), ("totalEvents", "1")];
    refused_above(
        "numberOfUsers",
        "4294967295",
        "4294967296",
        &env,
        "numberOfUsers <= 4294967295",
    );
}

/// The verifier keeps a seq in 56 bits: a run that would pass them is refused up front.
#[test]
fn more_events_than_seqs_of_56_bits_is_refused() {
    refused_above(
        "totalEvents",
        "72057594037927935",
        "72057594037927936",
        &[],
        "totalEvents < 72057594037927936",
    );
}
