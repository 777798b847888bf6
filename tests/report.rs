//! bench-report end to end: the built binary on results files written here, its Markdown
//! checked by value, its SVG rendered with resvg (a chart that does not parse or draws
//! nothing fails here rather than in a reader's browser).

use resvg::{tiny_skia, usvg};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HEADER: &str = "server\tworkload\trun\tevents_per_s\tnotifications_per_s\tserver_cpu_s\t\
                      cpu_share\tns_per_note\tserver_rss_kib\tsim_cpu_s\tp50_us\tp99_us\tp999_us\tmax_us\tresult";

/// Three runs of the floor, three of ours and two of another server on classic, paced runs
/// of both: every shape the report handles, with values whose medians are known.
const RESULTS: &str = "\
floor\tfloor\t1\t700000\t700000\t1.80\t0.50\t76\t2500\t3.0\t-\t-\t-\t-\tpass
floor\tfloor\t2\t720000\t720000\t1.60\t0.52\t77\t2600\t3.1\t-\t-\t-\t-\tpass
floor\tfloor\t3\t710000\t710000\t1.70\t0.51\t78\t2550\t3.2\t-\t-\t-\t-\tpass
ours\tclassic\t1\t310000\t620000\t2.50\t0.71\t99\t3400\t5.1\t80000\t130000\t135000\t140000\tpass
ours\tclassic\t2\t290000\t580000\t2.10\t0.73\t87\t3300\t5.3\t82000\t131000\t136000\t141000\tpass
ours\tclassic\t3\t300000\t600000\t2.30\t0.72\t93\t3350\t5.2\t81000\t132000\t137000\t142000\tpass
other\tclassic\t1\t200000\t400000\t4.00\t0.80\t150\t30000\t5.0\t100\t200\t300\t400\tpass
other\tclassic\t2\t210000\t420000\t5.00\t0.90\t160\t31000\t5.0\t101\t201\t301\t401\tfail(timeout)
ours\tpaced\t1\t100000\t200000\t0.90\t0.33\t1806\t3300\t2.0\t390\t2700\t5000\t7400\tpass
ours\tpaced\t2\t100000\t200000\t0.95\t0.29\t1608\t3300\t2.0\t400\t2800\t5100\t7500\tpass
ours\tpaced\t3\t100000\t200000\t0.80\t0.32\t1764\t3300\t2.0\t380\t2600\t4900\t7600\tpass
other\tpaced\t1\t99000\t198000\t1.90\t0.60\t3000\t30000\t2.0\t900\t12000\t25000\t37000\tpass
";

/// An empty directory of this test's own under cargo's scratch space for tests.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("report")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// Writes `tsv` to DIR/results.tsv and runs bench-report on it with `--svg DIR/chart.svg`.
fn report(dir: &Path, tsv: &str) -> Output {
    let input = dir.join("results.tsv");
    std::fs::write(&input, tsv).expect("write the results file");
    Command::new(env!("CARGO_BIN_EXE_bench-report"))
        .arg(&input)
        .arg("--svg")
        .arg(dir.join("chart.svg"))
        .output()
        .expect("run bench-report")
}

/// Runs bench-report on `tsv` and returns its Markdown and its SVG, checking it succeeded.
fn report_ok(name: &str, tsv: &str) -> (String, String) {
    let dir = scratch(name);
    let out = report(&dir, tsv);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench-report failed: {stderr}");
    assert!(stderr.is_empty(), "unexpected stderr: {stderr}");
    let svg = std::fs::read_to_string(dir.join("chart.svg")).expect("the chart was written");
    (String::from_utf8_lossy(&out.stdout).into_owned(), svg)
}

/// The table's row whose first three cells are `server`, `workload`, `run`.
fn row<'a>(markdown: &'a str, server: &str, workload: &str, run: &str) -> Option<&'a str> {
    let start = format!("| {server} | {workload} | {run} |");
    markdown.lines().find(|l| l.starts_with(&start))
}

/// What a rendered chart shows: its size, and its pixels by colour.
struct Rendered {
    width: u32,
    height: u32,
    /// Pixels that are not white: axes, grid, bars, legend swatches.
    ink: usize,
    /// Opaque colours other than greys, with their pixel counts: the bars.
    colours: HashMap<(u8, u8, u8), usize>,
}

/// Parses `svg` as usvg does and renders it into a pixmap: Err when it does not parse.
fn render(svg: &str) -> Result<Rendered, String> {
    let tree = usvg::Tree::from_str(svg, &usvg::Options::default()).map_err(|e| e.to_string())?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| format!("no pixmap of {size:?}"))?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    let mut ink = 0;
    let mut colours = HashMap::new();
    for p in pixmap.pixels() {
        let (r, g, b, a) = (p.red(), p.green(), p.blue(), p.alpha());
        if a > 0 && (r < 240 || g < 240 || b < 240) {
            ink += 1;
        }
        if a == 255 && r.max(g).max(b) - r.min(g).min(b) > 60 {
            *colours.entry((r, g, b)).or_insert(0) += 1;
        }
    }
    Ok(Rendered {
        width: size.width(),
        height: size.height(),
        ink,
        colours,
    })
}

/// The colours that fill at least `pixels` pixels: bars, not the blend at their edges.
fn bar_colours(r: &Rendered, pixels: usize) -> usize {
    r.colours.values().filter(|n| **n >= pixels).count()
}

/// A chart worth looking at: it parses, at least 3% of it is bars, and there are bars of
/// `servers` distinct colours.
fn check_drawn(svg: &str, servers: usize) -> Result<Rendered, String> {
    let r = render(svg)?;
    let area = (r.width * r.height) as usize;
    let bars: usize = r.colours.values().sum();
    if bars * 100 < area * 3 {
        return Err(format!("only {bars} of {area} pixels are bars"));
    }
    if bar_colours(&r, 500) < servers {
        return Err(format!(
            "bars of {} colours, not {servers}",
            bar_colours(&r, 500)
        ));
    }
    Ok(r)
}

#[test]
fn the_table_has_every_run_and_the_medians() {
    let (md, _) = report_ok("table", &format!("{HEADER}\n{RESULTS}"));
    let lines: Vec<&str> = md.lines().collect();
    assert!(
        lines[0].starts_with("| server | workload | run | events/s |"),
        "{md}"
    );
    assert!(lines[1].starts_with("| --- | --- | ---: |"), "{md}");
    // Twelve runs, and a median row for each of the four groups with more than one.
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("| ")).count(),
        2 + 12 + 4,
        "{md}"
    );
    assert_eq!(
        row(&md, "ours", "classic", "2"),
        Some("| ours | classic | 2 | 290000 | 580000 | 2.10 | 0.73 | 87 | 3300 | 5.3 | 82000 | 131000 | 136000 | 141000 | pass |")
    );
    // Medians of three: the middle value of each column, whichever run it came from.
    assert_eq!(
        row(&md, "ours", "classic", "median"),
        Some("| ours | classic | median | 300000 | 600000 | 2.30 | 0.72 | 93 | 3350 | 5.2 | 81000 | 131000 | 136000 | 141000 | 3/3 pass |")
    );
    assert_eq!(
        row(&md, "ours", "paced", "median"),
        Some("| ours | paced | median | 100000 | 200000 | 0.90 | 0.32 | 1764 | 3300 | 2.0 | 390 | 2700 | 5000 | 7500 | 3/3 pass |")
    );
    // Medians of two: the mean of both, a digit longer where that needs one.
    assert_eq!(
        row(&md, "other", "classic", "median"),
        Some("| other | classic | median | 205000 | 410000 | 4.50 | 0.85 | 155 | 30500 | 5.0 | 100.5 | 200.5 | 300.5 | 400.5 | 1/2 pass |")
    );
    assert_eq!(
        row(&md, "floor", "floor", "median"),
        Some("| floor | floor | median | 710000 | 710000 | 1.70 | 0.51 | 77 | 2550 | 3.1 | - | - | - | - | 3/3 pass |")
    );
    // One run: no median row.
    assert!(row(&md, "other", "paced", "1").is_some());
    assert_eq!(row(&md, "other", "paced", "median"), None);
    // The goal lines: classic median CPU over the floor's median (2.30 / 1.70 and
    // 4.50 / 1.70), and each server's paced share of a core and p99 (no paced floor ran).
    let floor: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("- "))
        .collect();
    assert_eq!(
        floor,
        [
            "- ours: classic server CPU 2.30 s = 1.35x the floor (1.70 s)",
            "- other: classic server CPU 4.50 s = 2.65x the floor (1.70 s)",
            "- ours: paced server CPU 0.32 of a core, p99 2700 us",
            "- other: paced server CPU 0.60 of a core, p99 12000 us",
        ]
    );
}

#[test]
fn the_chart_renders_with_bars_of_every_server() {
    let (_, svg) = report_ok("chart", &format!("{HEADER}\n{RESULTS}"));
    let r = check_drawn(&svg, 3).unwrap_or_else(|e| panic!("{e}"));
    // Axes and grid lines: grey ink besides the bars (three panels of axes alone are
    // over 3,000 pixels).
    let grey = r.ink.saturating_sub(r.colours.values().sum());
    assert!(grey > 3000, "{grey} pixels of axes and grid");
    // The text is the viewer's to lay out (this resvg has no fonts): it is in the SVG.
    for text in [
        "floor",
        "ours",
        "other",
        "events/s",
        "server CPU s",
        "latency",
        "p99.9",
    ] {
        assert!(svg.contains(text), "no {text:?} in the chart");
    }
}

#[test]
fn without_a_paced_workload_there_is_no_latency_panel() {
    let classic: String = RESULTS
        .lines()
        .filter(|l| !l.contains("\tpaced\t"))
        .collect::<Vec<_>>()
        .join("\n");
    let (md, svg) = report_ok("no-paced", &classic);
    assert!(row(&md, "ours", "paced", "1").is_none());
    assert!(!svg.contains("latency"));
    let without = check_drawn(&svg, 3).unwrap_or_else(|e| panic!("{e}"));
    let (_, full) = report_ok("with-paced", RESULTS);
    let with = check_drawn(&full, 3).unwrap_or_else(|e| panic!("{e}"));
    assert!(without.height < with.height, "one panel fewer");
}

#[test]
fn the_render_check_fails_on_a_broken_or_blank_chart() {
    let (_, svg) = report_ok("broken", RESULTS);
    assert!(check_drawn(&svg, 3).is_ok());
    let truncated = &svg[..svg.len() / 2];
    assert!(render(truncated).is_err(), "a truncated SVG parsed");
    let blank = r##"<svg width="960" height="1000" xmlns="http://www.w3.org/2000/svg">
        <rect x="0" y="0" width="960" height="1000" fill="#FFFFFF"/></svg>"##;
    let err = check_drawn(blank, 1).err().expect("a blank chart passed");
    assert!(err.contains("pixels are bars"), "{err}");
    // Bars of one server only, where three were expected.
    let one = RESULTS
        .lines()
        .filter(|l| l.starts_with("ours\t"))
        .collect::<Vec<_>>()
        .join("\n");
    let (_, svg) = report_ok("one-server", &one);
    assert!(check_drawn(&svg, 1).is_ok());
    assert!(check_drawn(&svg, 3).is_err());
}

#[test]
fn a_malformed_line_exits_2_and_names_it() {
    let dir = scratch("malformed");
    let bad = format!(
        "{HEADER}\nours\tclassic\t1\t300000\t600000\tfast\t0.5\t90\t3400\t5.1\t1\t2\t3\t4\tpass\n"
    );
    let out = report(&dir, &bad);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("server_cpu_s"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(out.stdout.is_empty());
    assert!(!dir.join("chart.svg").exists());

    let short = format!("{HEADER}\nours\tclassic\t1\t300000\n");
    let out = report(&dir, &short);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("4 tab-separated cells"));
}

#[test]
fn bad_usage_and_an_unreadable_file_exit_2() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_bench-report"))
            .args(args)
            .output()
            .expect("run bench-report")
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: bench-report"));
    let out = run(&["results.tsv", "--svg"]);
    assert_eq!(out.status.code(), Some(2));
    let missing = scratch("missing").join("nothing.tsv");
    let out = run(&[missing.to_str().expect("a UTF-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
