//! scripts/bench.sh end to end, on this build's binaries and a small stream: what it runs,
//! and in which order.

use std::path::Path;
use std::process::Command;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Rounds are interleaved: the floor and our server alternate, so each multiple of the
/// floor is taken between neighbouring runs (all floor runs first once read 4.1x where
/// interleaved runs read 3.1-3.3x, the machine's load having changed between them).
#[test]
fn runs_are_interleaved_round_by_round() {
    let bin = Path::new(env!("CARGO_BIN_EXE_maze-sim")).parent().unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-interleaved");
    let _ = std::fs::remove_dir_all(&out);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = Command::new("bash")
        .arg(root.join("scripts/bench.sh"))
        .args(["floor", "classic"])
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
            ("ours", "classic", "1"),
            ("floor", "floor", "2"),
            ("ours", "classic", "2"),
        ],
        "{tsv}"
    );
    assert!(rows.iter().all(|r| r[12] == "pass"), "{tsv}");
    assert!(
        stdout.contains("| ours | classic | median |"),
        "the report covers both rounds: {stdout}"
    );
}
