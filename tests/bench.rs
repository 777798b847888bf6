//! scripts/bench.sh end to end, on this build's binaries and a small stream: what it runs,
//! and in which order.

use std::path::Path;
use std::process::Command;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Rounds are interleaved: the floors (full speed and paced) and our server alternate, so
/// each multiple of the floor is taken between neighbouring runs (all floor runs first once
/// read 4.1x where interleaved runs read 3.1-3.3x, the machine's load having changed
/// between them).
#[test]
fn runs_are_interleaved_round_by_round() {
    let bin = Path::new(env!("CARGO_BIN_EXE_maze-sim")).parent().unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-interleaved");
    let _ = std::fs::remove_dir_all(&out);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = Command::new("bash")
        .arg(root.join("scripts/bench.sh"))
        .args(["floor", "floor-paced", "classic"])
        .env("BIN", bin)
        .env("RUNS", "2")
        .env("totalEvents", "3000")
        .env("BENCH_OUT", &out)
        .env("BENCH_EVENT_PORT", free_port().to_string())
        .env("BENCH_CLIENT_PORT", free_port().to_string())
        .output()
        .expect("run bench.sh");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let tsv = std::fs::read_to_string(out.join("results.tsv")).expect("results.tsv");
    let rows: Vec<Vec<&str>> = tsv
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    let order: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[0], r[1], r[2])).collect();
    assert_eq!(
        order,
        [
            ("floor", "floor", "1"),
            ("floor", "floor-paced", "1"),
            ("ours", "classic", "1"),
            ("floor", "floor", "2"),
            ("floor", "floor-paced", "2"),
            ("ours", "classic", "2"),
        ],
        "{tsv}"
    );
    assert!(rows.iter().all(|r| r[14] == "pass"), "{tsv}");
    assert!(
        stdout.contains("| ours | classic | median |"),
        "the report covers both rounds: {stdout}"
    );
    // The goals' units, computed by bench.sh for every run from the CPU seconds, the
    // run's time (3,000 events at events/s) and its notifications (notifications/s times
    // that time): within the rounding of the CPU seconds' two decimals.
    let num = |r: &[&str], i: usize| -> f64 {
        r[i].parse()
            .unwrap_or_else(|_| panic!("column {i} is not a number: {tsv}"))
    };
    for r in &rows {
        let (events_per_s, notes_per_s, cpu) = (num(r, 3), num(r, 4), num(r, 5));
        let (share, ns) = (num(r, 6), num(r, 7));
        let elapsed = 3000.0 / events_per_s;
        let near = |got: f64, want: f64| (got - want).abs() <= 0.02 * want + 0.01;
        assert!(near(share, cpu / elapsed), "cpu_share: {r:?}");
        assert!(
            near(ns, cpu * 1e9 / (notes_per_s * elapsed)),
            "ns_per_note: {r:?}"
        );
    }
}
