//! `--flush-delay-us`: output below the write threshold waits up to the delay for more, so
//! several turns' notifications go out in one `write`; the threshold, session end, a
//! graceful stop and backpressure still write at once. Real server, real sockets; what
//! happened is read from the server's `writes` counter, never from a clock.

mod common;

use common::{clients, final_counter, send_lines, Client, Server};
use follower_maze::outbuf::WRITE_AT;
use std::time::Duration;

/// A delay no test waits out: output that arrives was written for another reason.
const FOREVER_US: &str = "60000000";

const FAT: usize = 106;

/// A private message to a one-digit `to` of `FAT` bytes with `\r\n` (the seq zero-padded:
/// valid, and delivered exactly as read).
fn fat_message(seq: u64, to: u64) -> String {
    format!("{seq:0>98}|P|1|{to}")
}

/// Sends events `first..=last` as fat messages to `to`, in one write.
fn send_fat(source: &mut std::net::TcpStream, first: u64, last: u64, to: u64) {
    let lines: Vec<String> = (first..=last).map(|seq| fat_message(seq, to)).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    send_lines(source, &lines);
}

/// Reads fat messages `first..=last` on `c`.
fn read_fat(c: &mut Client, first: u64, last: u64, to: u64) {
    let want: Vec<String> = (first..=last).map(|seq| fat_message(seq, to)).collect();
    assert_eq!(c.read_lines(want.len()), want);
}

#[test]
fn without_a_delay_every_turn_ends_with_a_write_per_client() {
    let s = Server::start(&["--flush-delay-us", "0"]);
    let mut c = clients(&s, &[1, 2, 3]);
    let mut src = s.source();
    // Each event waits for the previous one to arrive everywhere: one turn each.
    for seq in 1..=10 {
        send_lines(&mut src, &[&format!("{seq}|B")]);
        for c in c.iter_mut() {
            assert_eq!(c.read_lines(1), [format!("{seq}|B")]);
        }
    }
    let (_, log) = s.terminate();
    assert_eq!(final_counter(&log, "writes"), 30, "{log}");
}

#[test]
fn events_within_the_delay_reach_each_client_in_one_write() {
    let s = Server::start(&["--flush-delay-us", "1000000"]);
    let mut c = clients(&s, &[1, 2, 3]);
    let mut src = s.source();
    // Ten writes of one event each, within a few ms of each other: ten loop turns, and
    // without the delay ten writes per client.
    for seq in 1..=10 {
        send_lines(&mut src, &[&format!("{seq}|B")]);
        std::thread::sleep(Duration::from_millis(1));
    }
    let want: Vec<String> = (1..=10).map(|seq| format!("{seq}|B")).collect();
    for c in c.iter_mut() {
        assert_eq!(c.read_lines(10), want, "written once the delay was up");
    }
    let (_, log) = s.terminate();
    // One per client; two should the sends above have straddled a delay of a second.
    let writes = final_counter(&log, "writes");
    assert!((3..=6).contains(&writes), "writes={writes}: {log}");
}

#[test]
fn a_client_past_the_write_threshold_is_written_without_waiting_for_the_delay() {
    let s = Server::start(&["--flush-delay-us", FOREVER_US]);
    let mut c = clients(&s, &[1, 2]);
    let mut src = s.source();
    send_lines(&mut src, &["1|P|1|2"]);
    // Written whenever the next message would take the buffer past `WRITE_AT`: after
    // every `per_write` of them; send two writes' worth and 46 more, which wait.
    let per_write = (WRITE_AT / FAT) as u64;
    assert_eq!(fat_message(1, 1).len() + 2, FAT);
    let last = 1 + 2 * per_write + 46;
    send_fat(&mut src, 2, last, 1);
    read_fat(&mut c[0], 2, 1 + 2 * per_write, 1);
    c[0].expect_silence(Duration::from_millis(300));
    c[1].expect_silence(Duration::from_millis(300));
    let (_, log) = s.terminate();
    assert_eq!(final_counter(&log, "clients_stalled"), 0, "{log}");
    // The stop wrote the rest.
    read_fat(&mut c[0], 2 + 2 * per_write, last, 1);
    assert_eq!(c[1].read_lines(1), ["1|P|1|2"]);
}

#[test]
fn a_graceful_stop_writes_what_the_delay_held_back() {
    let s = Server::start(&["--flush-delay-us", FOREVER_US]);
    let mut c = clients(&s, &[1, 2, 9]);
    let mut src = s.source();
    send_lines(&mut src, &["1|B", "2|P|2|1", "3|F|1|2", "4|S|2"]);
    // Barrier: a probe's buffer passes the threshold, so the events before it were taken.
    // After "1|B\r\n", `fit` messages fit under `WRITE_AT`; the next one is held back.
    let fit = ((WRITE_AT - 5) / FAT) as u64;
    send_fat(&mut src, 5, 5 + fit, 9);
    assert_eq!(c[2].read_lines(1), ["1|B"]);
    read_fat(&mut c[2], 5, 4 + fit, 9);
    c[0].expect_silence(Duration::from_millis(100));
    let (status, log) = s.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(!log.contains("exiting with output pending"), "{log}");
    assert_eq!(c[0].read_lines(3), ["1|B", "2|P|2|1", "4|S|2"]);
    assert_eq!(c[1].read_lines(2), ["1|B", "3|F|1|2"]);
    read_fat(&mut c[2], 5 + fit, 5 + fit, 9);
}

#[test]
fn a_session_end_writes_what_the_delay_held_back() {
    for extra in [None, Some("--keep-state")] {
        let mut args = vec!["--flush-delay-us", FOREVER_US];
        args.extend(extra);
        let s = Server::start(&args);
        let mut c = clients(&s, &[1]);
        let mut src = s.source();
        send_lines(&mut src, &["2|P|2|1", "1|B"]);
        drop(src);
        assert_eq!(c[0].read_lines(2), ["1|B", "2|P|2|1"], "{extra:?}");
        s.wait_log("session 1 ended");
    }
}

#[test]
fn output_held_back_is_written_at_once_when_it_pauses_the_sources() {
    // 300 broadcasts to 10 clients: about 2 KB each, under the write threshold, 20 KB in
    // all. Each time the pending total passes its limit (every ~60 events) the sources are
    // paused, and waiting for the delay would stop them for a minute: it is written at
    // once. Only the last run under the limit waits (here, for the stop).
    let s = Server::start(&[
        "--flush-delay-us",
        FOREVER_US,
        "--total-buffer-limit",
        "4096",
    ]);
    let users: Vec<u64> = (1..=10).collect();
    let mut c = clients(&s, &users);
    let mut src = s.source();
    let lines: Vec<String> = (1..=300).map(|seq| format!("{seq}|B")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    send_lines(&mut src, &lines);
    for c in c.iter_mut() {
        assert_eq!(c.read_lines(200), lines[..200]);
    }
    let (_, log) = s.terminate();
    for c in c.iter_mut() {
        assert_eq!(c.read_lines(100), lines[200..], "{log}");
    }
}

#[test]
fn the_stall_clock_starts_when_delayed_output_is_due() {
    // A client is dropped when it takes no bytes for 100 ms with output pending; here the
    // output is not even offered for a second.
    let s = Server::start(&["--flush-delay-us", "1000000", "--stall-timeout-ms", "100"]);
    let mut c = clients(&s, &[1]);
    let mut src = s.source();
    send_lines(&mut src, &["1|B"]);
    assert_eq!(c[0].read_lines(1), ["1|B"]);
    let (_, log) = s.terminate();
    assert_eq!(final_counter(&log, "clients_stalled"), 0, "{log}");
    assert_eq!(final_counter(&log, "writes"), 1, "{log}");
}
