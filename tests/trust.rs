//! Hostile and unlucky input, one test per defect found by attacking the server with
//! nothing but sockets and flags (issue 9): no state outlives its connection, no input
//! costs more than its size, and every promise of SPEC.md holds at the edges.

mod common;

use common::{clients, counter, final_counter, proc_rss_kib, reset, send_lines, Client, Server};
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A client the server stall-drops while it still has input unread must not leave its key
/// behind: the next connection in its slot would have its id line discarded.
#[test]
fn a_dropped_chatty_client_leaves_nothing_behind_for_the_next_connection() {
    let s = Server::start(&[
        "--stall-timeout-ms",
        "100",
        "--client-buffer-limit",
        "65536",
        "--auth-timeout-ms",
        "1500",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    // Innocent clients connect all the time, each identifying at once.
    let innocents = {
        let (stop, addr) = (stop.clone(), s.clients);
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut user = 100_000;
            while !stop.load(Ordering::Relaxed) && kept.len() < 4000 {
                let c = TcpStream::connect(addr).unwrap();
                (&c).write_all(format!("{user}\r\n").as_bytes()).unwrap();
                kept.push(c);
                user += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            kept
        })
    };
    let mut src = s.source();
    let mut seq = 0;
    for round in 0..5 {
        // A client that never reads and never stops talking.
        let chatty = TcpStream::connect(s.clients).unwrap();
        common::set_socket_option(&chatty, libc::SO_RCVBUF, &4096);
        (&chatty)
            .write_all(format!("{}\r\n", 1 + round).as_bytes())
            .unwrap();
        let talker = {
            let c = chatty.try_clone().unwrap();
            std::thread::spawn(move || {
                let junk = vec![b'x'; 1 << 20];
                while (&c).write_all(&junk).is_ok() {}
            })
        };
        // Enough output to stall it (10 MB): its socket fills, its buffer passes the limit.
        let lines: Vec<String> = (0..20_000)
            .map(|_| {
                seq += 1;
                format!("{seq:0>500}|P|0|{}", 1 + round)
            })
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        send_lines(&mut src, &refs);
        s.wait_count("took no bytes for", round + 1);
        drop(chatty);
        talker.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let kept = innocents.join().unwrap();
    // Every innocent client got identified; none was dropped for "no id".
    std::thread::sleep(Duration::from_millis(2000));
    let log = s.log();
    assert!(
        !log.contains("no id within"),
        "an innocent client lost its id line ({} connected):\n{}",
        kept.len(),
        log.lines()
            .filter(|l| l.contains("no id within"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(log.matches(" identified as user ").count() >= kept.len() + 5);
}

/// Defect 4: a source that resets mid-line must not have its half line delivered.
#[test]
fn a_reset_sources_unterminated_tail_is_discarded() {
    let s = Server::start(&[]);
    let mut c = clients(&s, &[4]).remove(0);
    let mut src = s.source();
    src.write_all(b"1|P|3|4\r\n2|P|12|4").unwrap();
    assert_eq!(c.read_lines(1), ["1|P|3|4"]);
    std::thread::sleep(Duration::from_millis(100)); // let the server read the tail
    reset(src);
    s.wait_log("session 1 ended");
    // A new session: its first event must be the next thing user 4 sees.
    let mut src = s.source();
    send_lines(&mut src, &["1|P|5|4"]);
    assert_eq!(c.read_lines(1), ["1|P|5|4"]);
    drop(src);
    let (_, log) = s.terminate();
    assert_eq!(final_counter(&log, "truncated"), 1, "{log}");
}

/// The SPEC's rule for a clean end of stream stays: an unterminated last line is an event.
#[test]
fn a_closed_sources_unterminated_tail_is_processed() {
    let s = Server::start(&[]);
    let mut c = clients(&s, &[4]).remove(0);
    let mut src = s.source();
    src.write_all(b"1|P|3|4\r\n2|P|12|4").unwrap();
    src.shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.read_lines(2), ["1|P|3|4", "2|P|12|4"]);
}

/// Defect 7: end of input after the id is not a disconnect.
#[test]
fn a_client_that_half_closes_after_its_id_still_gets_its_notifications() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.clients);
    c.send(b"4\r\n");
    c.stream.shutdown(Shutdown::Write).unwrap();
    s.wait_log(" identified as user 4");
    std::thread::sleep(Duration::from_millis(100)); // the server sees the FIN
    let mut src = s.source();
    send_lines(&mut src, &["1|P|3|4", "2|B"]);
    assert_eq!(c.read_lines(2), ["1|P|3|4", "2|B"]);
    // Once its peer is gone for good, the connection is removed like any other.
    drop(c);
    send_lines(&mut src, &["3|P|3|4", "4|P|3|4", "5|P|3|4"]);
    s.wait_log("client #1 disconnected");
}

/// Defect 8: SIGHUP stops the server gracefully, like SIGTERM.
#[test]
fn sighup_stops_it_like_sigterm() {
    let s = Server::start(&[]);
    let mut c = clients(&s, &[1]).remove(0);
    let mut src = s.source();
    send_lines(&mut src, &["1|B"]);
    assert_eq!(c.read_lines(1), ["1|B"]);
    let (status, log) = s.stop_with(libc::SIGHUP);
    assert_eq!(status.code(), Some(0));
    assert!(log.contains("final stats:"), "{log}");
}

/// Defect 9: connections that never identify cannot lock real clients out.
#[test]
fn silent_connections_cannot_lock_real_clients_out() {
    let s = Server::start(&["--max-clients", "50", "--auth-timeout-ms", "60000"]);
    let silent: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(s.clients).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut real = clients(&s, &[7, 8]);
    let mut src = s.source();
    send_lines(&mut src, &["1|P|1|7", "2|P|1|8"]);
    assert_eq!(real[0].read_lines(1), ["1|P|1|7"]);
    assert_eq!(real[1].read_lines(1), ["2|P|1|8"]);
    let (_, log) = s.terminate();
    assert!(final_counter(&log, "clients_evicted") >= 2, "{log}");
    drop(silent);
}

/// Defect 10: the end of the sequence space does not wedge the server.
#[test]
fn after_the_last_seq_the_sequence_restarts_at_1() {
    for flags in [&["--keep-state"][..], &[]] {
        let s = Server::start(flags);
        let mut c = clients(&s, &[1]).remove(0);
        let mut src = s.source();
        send_lines(&mut src, &["18446744073709551615|P|0|1"]);
        assert_eq!(c.read_lines(1), ["18446744073709551615|P|0|1"]);
        send_lines(&mut src, &["2|P|0|1", "1|P|0|1"]);
        assert_eq!(c.read_lines(2), ["1|P|0|1", "2|P|0|1"], "{flags:?}");
    }
}

/// Found by a second fresh-eyes attack (session 7): seqs of the next cycle sent before
/// u64::MAX was delivered were dropped as late. And after the end, a late copy of a seq
/// from the end of the last cycle was taken for one 2^64 ahead: it was delivered again,
/// and the new cycle's seqs after it dropped.
#[test]
fn the_sequence_crosses_its_end_in_any_order() {
    for flags in [&[][..], &["--loss-detection", "timeout"]] {
        let s = Server::start(flags);
        let mut c = clients(&s, &[1]).remove(0);
        let mut src = s.source();
        let max = u64::MAX;
        send_lines(&mut src, &[format!("{}|B", max - 3)]);
        assert_eq!(c.read_lines(1), [format!("{}|B", max - 3)]);
        let shuffled = [max - 1, 2, max, 1, max - 2, 3];
        send_lines(&mut src, &shuffled.map(|s| format!("{s}|P|7|1")));
        let want = [max - 2, max - 1, max, 1, 2, 3].map(|s| format!("{s}|P|7|1"));
        assert_eq!(c.read_lines(6), want, "{flags:?}");
        // Late copies of the end of the last cycle, then the new cycle goes on.
        send_lines(
            &mut src,
            &[format!("{max}|B"), format!("{}|B", max - 1), "4|B".into()],
        );
        assert_eq!(c.read_lines(1), ["4|B"], "{flags:?}");
        // A second jump skips 2^62 more: the count stays at its ceiling, no overflow.
        send_lines(&mut src, &["4611686018427387904|B"]);
        assert_eq!(c.read_lines(1), ["4611686018427387904|B"], "{flags:?}");
        let (_, log) = s.terminate();
        assert_eq!(final_counter(&log, "late_or_dup"), 2, "{log}");
        assert_eq!(final_counter(&log, "skipped"), max, "{log}");
    }
}

/// Found by a fourth fresh-eyes attack: lines that arrive together are all stored before
/// any is delivered, so `12` (the next cycle's, in the same read as the end of the space)
/// was judged against the last seq before the read, taken for late and lost, where line
/// by line it was ahead.
#[test]
fn lines_read_together_are_judged_as_if_they_came_alone() {
    let s = Server::start(&[
        "--max-window",
        "4",
        "--keep-state",
        "--gap-timeout-ms",
        "0",
        "--loss-detection",
        "timeout",
    ]);
    let mut c = clients(&s, &[1]).remove(0);
    let mut src = s.source();
    let max = u64::MAX;
    let b = |s: u64| format!("{s}|B");
    send_lines(&mut src, &[1, 2, 3].map(b));
    assert_eq!(c.read_lines(3), [1, 2, 3].map(b));
    send_lines(&mut src, &[max - 5, max - 4, max - 3, max - 2].map(b));
    assert_eq!(c.read_lines(4), [max - 5, max - 4, max - 3, max - 2].map(b));
    send_lines(&mut src, &[max, max - 1, 12].map(b));
    assert_eq!(c.read_lines(2), [max - 1, max].map(b));
    send_lines(&mut src, &[9, 10, 11].map(b));
    assert_eq!(c.read_lines(4), [9, 10, 11, 12].map(b));
    let (_, log) = s.terminate();
    assert_eq!(final_counter(&log, "false_skips"), 0, "{log}");
}

/// Found by a third fresh-eyes attack: events still waiting behind a hole at shutdown were
/// counted nowhere, so the final counts did not add up to the events received.
#[test]
fn the_final_counts_account_for_every_event_received() {
    let s = Server::start(&["--gap-timeout-ms", "0"]);
    let mut c = clients(&s, &[1]).remove(0);
    let mut src = s.source();
    send_lines(
        &mut src,
        &["1|B", "1|B", "3|B", "4|B", "2|B", "7|B", "6|B", "x|B"],
    );
    assert_eq!(c.read_lines(4), ["1|B", "2|B", "3|B", "4|B"]);
    let (_, log) = s.terminate();
    let count = |name| final_counter(&log, name);
    assert_eq!(count("waiting"), 2, "{log}");
    let accounted = count("delivered") + count("late_or_dup") + count("false_skips");
    assert_eq!(count("events_in"), accounted + count("waiting"), "{log}");
}

/// Found by a third fresh-eyes attack: once the process's `skipped` count stood at its
/// ceiling, each session's (the difference of two counts) read near 0.
#[test]
fn each_session_counts_its_own_skips_past_the_ceiling() {
    let s = Server::start(&["--gap-timeout-ms", "50"]);
    let mut c = clients(&s, &[1]).remove(0);
    for n in 1..=3 {
        let mut src = s.source();
        send_lines(&mut src, &["18446744073709551614|B"]);
        assert_eq!(c.read_lines(1), ["18446744073709551614|B"]);
        drop(src);
        s.wait_log(&format!("session {n} ended"));
    }
    let log = s.log();
    let skipped: Vec<u64> = log
        .lines()
        .filter(|l| l.contains(" ended after "))
        .map(|l| counter(l, "skipped"))
        .collect();
    assert_eq!(skipped, [u64::MAX - 2; 3], "{log}");
    let (_, log) = s.terminate();
    assert_eq!(final_counter(&log, "skipped"), u64::MAX, "{log}");
}

/// Found by a third fresh-eyes attack: at `--max-window 2`, one read of `u64::MAX - 1`,
/// `u64::MAX - 2`, 1, `u64::MAX` lost seq 1 (the end took a place in the window, and the
/// next cycle's seq, beyond the window of the last seq delivered, was taken for late).
#[test]
fn a_small_window_holds_its_size_across_the_end() {
    let s = Server::start(&["--max-window", "2", "--gap-timeout-ms", "0"]);
    let mut c = clients(&s, &[1]).remove(0);
    let mut src = s.source();
    let max = u64::MAX;
    send_lines(
        &mut src,
        &[max - 1, max - 2, 1, max].map(|s| format!("{s}|B")),
    );
    let want = [max - 2, max - 1, max, 1].map(|s| format!("{s}|B"));
    assert_eq!(c.read_lines(4), want);
    let (_, log) = s.terminate();
    assert_eq!(final_counter(&log, "false_skips"), 0, "{log}");
}

/// Found by a third fresh-eyes attack: after a jump of more than half the sequence space,
/// a late copy of seq 1 read as the next cycle's, was jumped to and delivered again.
#[test]
fn a_seq_delivered_earlier_in_the_cycle_is_never_delivered_again() {
    let s = Server::start(&["--gap-timeout-ms", "100"]);
    let mut c = clients(&s, &[1]).remove(0);
    let mut src = s.source();
    send_lines(&mut src, &["1|B", "2|B"]);
    assert_eq!(c.read_lines(2), ["1|B", "2|B"]);
    let far = (1u64 << 63) + 2;
    send_lines(&mut src, &[format!("{far}|B")]);
    assert_eq!(c.read_lines(1), [format!("{far}|B")]);
    send_lines(&mut src, &["1|B".to_string(), format!("{}|B", far + 1)]);
    assert_eq!(c.read_lines(1), [format!("{}|B", far + 1)]);
    let (_, log) = s.terminate();
    assert_eq!(final_counter(&log, "late_or_dup"), 1, "{log}");
}

/// Found by a fresh-eyes attack (session 7): near the end of the sequence space, a hole
/// with an event waiting behind it. The gap timeout skipped the waiting event along with
/// the hole (the search for the next waiting event overflowed past u64::MAX), and at
/// session end the server spun at 100% CPU, skipping and wrapping for ever, and never
/// started the next session.
#[test]
fn a_hole_at_the_end_of_the_sequence_space_loses_nothing_and_the_next_session_starts() {
    let s = Server::start(&["--gap-timeout-ms", "100"]);
    let mut c = clients(&s, &[1]).remove(0);
    let mut src = s.source();
    // u64::MAX - 3 (everything before it is skipped after the gap timeout), then
    // u64::MAX - 1 with a hole at u64::MAX - 2.
    send_lines(&mut src, &["18446744073709551612|B"]);
    assert_eq!(c.read_lines(1), ["18446744073709551612|B"]);
    send_lines(&mut src, &["18446744073709551614|B"]);
    assert_eq!(c.read_lines(1), ["18446744073709551614|B"]);
    drop(src);
    s.wait_log("session 1 ended");
    let mut c2 = clients(&s, &[2]).remove(0);
    let mut src = s.source();
    send_lines(&mut src, &["1|B", "2|P|1|2", "3|B"]);
    assert_eq!(c2.read_lines(3), ["1|B", "2|P|1|2", "3|B"]);
    assert_eq!(c.read_lines(2), ["1|B", "3|B"]);
}

/// SPEC: warnings are rate-limited with an "N more suppressed" count. With the stats line
/// off the count was only logged once a later loop turn came 10 s on, and never at
/// shutdown (found by a second fresh-eyes attack).
#[test]
fn suppressed_warnings_are_counted_even_with_the_stats_line_off() {
    let s = Server::start(&["--stats-interval-s", "0"]);
    let mut c = clients(&s, &[1]).remove(0);
    let mut src = s.source();
    let mut lines: Vec<String> = (0..7).map(|k| format!("x{k}|B")).collect();
    lines.push("1|B".into()); // read back: every junk line before it was handled
    send_lines(
        &mut src,
        &lines.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(c.read_lines(1), ["1|B"]);
    let (_, log) = s.terminate();
    assert!(log.contains("Junk: 2 more suppressed"), "{log}");
}

/// Defect 11: log lines name connections by a serial never reused, not by slab slot.
#[test]
fn log_lines_name_each_connection_by_its_own_serial() {
    let s = Server::start(&[]);
    for _ in 0..3 {
        let mut c = Client::connect(s.clients);
        c.send(b"nope\r\n");
        c.expect_closed();
    }
    s.wait_count("invalid id", 3);
    let log = s.log();
    let mut named: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("invalid id"))
        .map(|l| {
            l.split("client ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
        })
        .collect();
    assert!(named.iter().all(|n| n.starts_with('#')), "{named:?}");
    named.dedup();
    assert_eq!(named.len(), 3, "one serial per connection: {named:?}");
}

/// Defect 5: every numeric flag either works over its whole range or is refused.
#[test]
fn huge_numbers_in_flags_are_refused_not_a_panic() {
    for flag in [
        "--stats-interval-s",
        "--gap-timeout-ms",
        "--stall-timeout-ms",
        "--auth-timeout-ms",
    ] {
        for value in ["9223372036854775807", "18446744073709551615"] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_follower-maze"))
                .args(["--event-port", "0", "--client-port", "0", flag, value])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
            assert_eq!(err.lines().count(), 1, "{flag} {value}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // The largest values accepted start a server that serves.
    let s = Server::start(&[
        "--stats-interval-s",
        "31536000",
        "--gap-timeout-ms",
        "31536000000",
        "--stall-timeout-ms",
        "31536000000",
        "--auth-timeout-ms",
        "31536000000",
        "--max-clients",
        "18446744073709551615",
        "--client-buffer-limit",
        "18446744073709551615",
        "--total-buffer-limit",
        "18446744073709551615",
        "--window-bytes",
        "18446744073709551615",
    ]);
    let mut c = clients(&s, &[1]).remove(0);
    let mut src = s.source();
    send_lines(&mut src, &["2|B", "1|B"]);
    assert_eq!(c.read_lines(2), ["1|B", "2|B"]);
    let (status, _) = s.terminate();
    assert_eq!(status.code(), Some(0));
}

/// Defect 3: waiting events' payloads are held within one byte budget; reaching it skips
/// the oldest missing seqs like a full window.
#[test]
fn zero_padded_waiting_events_stay_within_the_byte_budget() {
    let s = Server::start(&["--window-bytes", "2097152"]);
    let mut c = clients(&s, &[2]).remove(0);
    let (base, _) = s.rss_kib();
    const N: u64 = 20_000; // ~20 MB of waiting payloads if nothing bounded them
    let line = |seq: u64| format!("{seq:0>1000}|P|1|2");
    let reading = std::thread::spawn(move || {
        let got = c.read_lines(N as usize);
        (c, got)
    });
    let mut src = s.source();
    let mut bytes = String::new();
    for seq in 2..=N + 1 {
        bytes.push_str(&line(seq));
        bytes.push_str("\r\n");
    }
    src.write_all(bytes.as_bytes()).unwrap();
    let (mut c, got) = reading.join().unwrap();
    assert_eq!(got.first(), Some(&line(2)));
    assert_eq!(got.last(), Some(&line(N + 1)));
    let (peak, _) = s.rss_kib();
    assert!(
        peak < base + 8 * 1024,
        "peak RSS {peak} KiB, {base} KiB before: the 2 MiB budget did not hold"
    );
    send_lines(&mut src, &["1|P|1|2"]);
    c.expect_silence(Duration::from_millis(200));
    let (_, log) = s.terminate();
    assert_eq!(final_counter(&log, "skipped"), 1, "{log}");
    assert_eq!(
        final_counter(&log, "false_skips"),
        1,
        "seq 1, skipped, then sent: {log}"
    );
}

/// Defect 2, end to end: far-ahead seqs, each beyond the window, come out in order with
/// the seqs between them skipped, and the server stays responsive.
#[test]
fn far_ahead_seqs_are_skipped_in_order() {
    let s = Server::start(&["--max-window", "1024"]);
    let mut c = clients(&s, &[1]).remove(0);
    let mut src = s.source();
    let seqs: Vec<u64> = (1..=2000u64).map(|k| k * 1_000_000).collect();
    let lines: Vec<String> = seqs.iter().map(|q| format!("{q}|P|0|1")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    send_lines(&mut src, &refs);
    assert_eq!(c.read_lines(lines.len()), lines);
    // A bad id is still answered: the loop is not frozen.
    let mut bad = Client::connect(s.clients);
    bad.send(b"x\r\n");
    bad.expect_closed();
    let (_, log) = s.terminate();
    assert_eq!(
        final_counter(&log, "skipped"),
        2_000_000_000 - 2000,
        "{log}"
    );
}

/// Defect 6, end to end: a user with many connections following many authors comes and
/// goes; status updates still reach exactly the connected followers.
#[test]
fn many_connections_of_a_user_following_many_come_and_go() {
    let s = Server::start(&[]);
    let mut other = clients(&s, &[2]).remove(0);
    let mut src = s.source();
    let follows: Vec<String> = (1..=500u64)
        .map(|a| format!("{a}|F|1|{}", 1000 + a))
        .chain((501..=600u64).map(|a| format!("{a}|F|2|{}", 1000 + a - 500)))
        .collect();
    let refs: Vec<&str> = follows.iter().map(String::as_str).collect();
    send_lines(&mut src, &refs);
    let mut seq = 600;
    for _ in 0..3 {
        let conns = clients(&s, &vec![1; 300]);
        seq += 1;
        send_lines(&mut src, &[&format!("{seq}|S|1001")]);
        for mut c in conns {
            assert_eq!(c.read_lines(1), [format!("{seq}|S|1001")]);
        }
        assert_eq!(other.read_lines(1), [format!("{seq}|S|1001")]);
    }
    // All of user 1's connections are gone: only user 2 hears from author 1002.
    std::thread::sleep(Duration::from_millis(200));
    seq += 1;
    send_lines(&mut src, &[&format!("{seq}|S|1002")]);
    assert_eq!(other.read_lines(1), [format!("{seq}|S|1002")]);
    let (peak, _) = proc_rss_kib(s.pid());
    assert!(peak < 64 * 1024, "{peak} KiB");
}

/// A burst of connections larger than one turn's accept batch and one turn's flush batch:
/// every client is accepted and identified, and a broadcast reaches every one of them.
#[test]
fn a_burst_of_1500_clients_is_accepted_and_each_gets_a_broadcast() {
    let s = Server::start(&[]);
    let users: Vec<u64> = (1..=1500).collect();
    let connectors: Vec<_> = users
        .chunks(375)
        .map(|chunk| {
            let (addr, chunk) = (s.clients, chunk.to_vec());
            std::thread::spawn(move || {
                chunk
                    .iter()
                    .map(|u| {
                        let c = Client::connect(addr);
                        c.send(format!("{u}\r\n").as_bytes());
                        c
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<Client> = connectors
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    s.wait_count(" identified as user ", users.len());
    let mut src = s.source();
    send_lines(&mut src, &["1|B"]);
    for c in &mut all {
        assert_eq!(c.read_lines(1), ["1|B"]);
    }
    let (_, log) = s.terminate();
    assert!(
        log.contains(&format!("clients_connected={} ", users.len())),
        "{log}"
    );
}

/// An id line known to be over-long is refused at once, not at the id timeout: 65 digits
/// with no line end can no longer be a 64-byte id.
#[test]
fn an_id_over_64_bytes_is_refused_as_soon_as_it_is_known() {
    let s = Server::start(&["--auth-timeout-ms", "60000"]);
    let mut c = Client::connect(s.clients);
    c.send("1".repeat(65).as_bytes());
    c.expect_closed();
    s.wait_log("over-long id");
}

/// A user following 20,000 others (more than one turn's index slice) comes and goes:
/// its index is built over several turns while nothing is routed, and every status of an
/// author it follows reaches exactly its live connection.
#[test]
fn a_user_following_thousands_connects_and_resets_without_losing_a_status() {
    let s = Server::start(&[]);
    let mut other = clients(&s, &[2]).remove(0);
    let mut src = s.source();
    let follows: Vec<String> = (1..=20_000u64)
        .map(|a| format!("{a}|F|9|{}", 100_000 + a))
        .collect();
    let refs: Vec<&str> = follows.iter().map(String::as_str).collect();
    send_lines(&mut src, &refs);
    send_lines(&mut src, &["20001|F|2|100777", "20002|P|0|2"]);
    assert_eq!(other.read_lines(1), ["20002|P|0|2"]);
    let mut seq = 20_002;
    for round in 0..3 {
        let quick = clients(&s, &[9]).remove(0);
        reset(quick.stream);
        let mut c = clients(&s, &[9]).remove(0);
        seq += 1;
        let status = format!("{seq}|S|100777");
        send_lines(&mut src, &[&status]);
        assert_eq!(
            c.read_lines(1),
            std::slice::from_ref(&status),
            "round {round}"
        );
        assert_eq!(other.read_lines(1), [status]);
        reset(c.stream);
    }
}
