//! bench-report: the Markdown table and the SVG chart of a `scripts/bench.sh` results file.
//!
//! Input: a TSV with one line per run in the columns of bench.sh's text table (`COLUMNS`),
//! "-" for a cell without a value; a first line naming the columns is allowed, and checked.
//! Output: on stdout a Markdown table of the runs, with a median row per server and
//! workload that ran more than once, then the goal lines of issue #13 for what was measured
//! (`goal_lines`: classic CPU against the floor's, 10k-clients CPU per notification against
//! classic's, the paced share of a core and p99 beside the paced floor's). With `--svg OUT`,
//! a chart: events/s and server CPU per workload and server, and latency percentiles per
//! server at the paced workload when it ran, the paced floor's beside them (medians where
//! there are several runs).
//!
//! Usage: `bench-report RESULTS.tsv [--svg OUT.svg]`. Exit 2 on bad usage or bad input
//! (one line on stderr), 1 when the chart cannot be written.

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::HashMap;
use std::process::ExitCode;

/// The TSV's columns, in order.
const COLUMNS: [&str; 15] = [
    "server",
    "workload",
    "run",
    "events_per_s",
    "notifications_per_s",
    "server_cpu_s",
    "cpu_share",
    "ns_per_note",
    "server_rss_kib",
    "sim_cpu_s",
    "p50_us",
    "p99_us",
    "p999_us",
    "max_us",
    "result",
];
/// The Markdown table's headings: the names bench.sh's text table uses.
const HEADINGS: [&str; 15] = [
    "server",
    "workload",
    "run",
    "events/s",
    "notifications/s",
    "server_cpu_s",
    "cpu_share",
    "ns_per_note",
    "server_rss_kib",
    "sim_cpu_s",
    "p50_us",
    "p99_us",
    "p999_us",
    "max_us",
    "result",
];
/// The numeric columns start after server, workload and run.
const FIRST_NUM: usize = 3;
const NUMS: usize = 11;
// Indexes into `Run::cells`.
const EVENTS: usize = 0;
const CPU: usize = 2;
const SHARE: usize = 3;
const NS_PER_NOTE: usize = 4;
const P50: usize = 7;
const P99: usize = 8;
const MAX: usize = 10;

/// A numeric cell: the text as written (the table repeats it) and its value ("-": none).
#[derive(Debug, Clone, PartialEq)]
struct Cell {
    text: String,
    value: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Run {
    server: String,
    workload: String,
    run: u32,
    cells: Vec<Cell>,
    result: String,
}

fn parse_value(text: &str) -> Result<Option<f64>, String> {
    if text == "-" {
        return Ok(None);
    }
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
        _ => Err(format!("{text:?} is neither a number nor \"-\"")),
    }
}

fn parse_line(line: &str) -> Result<Run, String> {
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != COLUMNS.len() {
        return Err(format!(
            "{} tab-separated cells, expected {} ({})",
            fields.len(),
            COLUMNS.len(),
            COLUMNS.join(" ")
        ));
    }
    for (i, f) in fields.iter().enumerate() {
        if f.trim().is_empty() {
            return Err(format!(
                "{} is empty (\"-\" stands for no value)",
                COLUMNS[i]
            ));
        }
    }
    let run = match fields[2].parse::<u32>() {
        Ok(n) if n > 0 => n,
        _ => return Err(format!("run {:?} is not a run number", fields[2])),
    };
    let mut cells = Vec::with_capacity(NUMS);
    for (i, text) in fields[FIRST_NUM..FIRST_NUM + NUMS].iter().enumerate() {
        let value = parse_value(text).map_err(|e| format!("{}: {e}", COLUMNS[FIRST_NUM + i]))?;
        cells.push(Cell {
            text: text.to_string(),
            value,
        });
    }
    Ok(Run {
        server: fields[0].to_string(),
        workload: fields[1].to_string(),
        run,
        cells,
        result: fields[FIRST_NUM + NUMS].to_string(),
    })
}

/// Every run of a results file, in file order; an error names the line.
fn parse_runs(text: &str) -> Result<Vec<Run>, String> {
    let header = COLUMNS.join("\t");
    let mut runs: Vec<Run> = Vec::new();
    // A run twice is a script appending to an old file, not a second measurement.
    let mut seen: HashMap<(String, String, u32), usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if n == 1 && line.starts_with("server\t") {
            if line != header {
                return Err(format!(
                    "line 1: a header, but not these columns: {}",
                    COLUMNS.join(" ")
                ));
            }
            continue;
        }
        let run = parse_line(line).map_err(|e| format!("line {n}: {e}"))?;
        let key = (run.server.clone(), run.workload.clone(), run.run);
        if let Some(first) = seen.insert(key, n) {
            return Err(format!(
                "line {n}: run {} of {} {} again (first on line {first})",
                run.run, run.server, run.workload
            ));
        }
        runs.push(run);
    }
    if runs.is_empty() {
        return Err("no runs in it".to_string());
    }
    Ok(runs)
}

/// The middle value; with an even count, the mean of the two middle ones.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Digits after the decimal point, so a median is written like the values it came from.
fn decimals(text: &str) -> usize {
    text.split_once('.').map_or(0, |(_, f)| {
        f.chars().take_while(char::is_ascii_digit).count()
    })
}

/// `v` with `places` decimals, or one more when that would round it (half of two values).
fn fmt_num(v: f64, places: usize) -> String {
    let s = format!("{v:.places$}");
    match s.parse::<f64>() {
        Ok(back) if (back - v).abs() <= 1e-9 * v.abs().max(1.0) => s,
        _ => format!("{v:.prec$}", prec = places + 1),
    }
}

/// The runs of one server on one workload.
struct Group<'a> {
    server: &'a str,
    workload: &'a str,
    runs: Vec<&'a Run>,
}

impl Group<'_> {
    fn median(&self, col: usize) -> Option<f64> {
        median(
            self.runs
                .iter()
                .filter_map(|r| r.cells[col].value)
                .collect(),
        )
    }

    fn median_text(&self, col: usize) -> String {
        let places = self
            .runs
            .iter()
            .map(|r| decimals(&r.cells[col].text))
            .max()
            .unwrap_or(0);
        self.median(col)
            .map_or_else(|| "-".to_string(), |v| fmt_num(v, places))
    }
}

/// Runs grouped by server and workload, groups in order of first appearance.
fn groups(runs: &[Run]) -> Vec<Group<'_>> {
    let mut out: Vec<Group> = Vec::new();
    for r in runs {
        match out
            .iter_mut()
            .find(|g| g.server == r.server && g.workload == r.workload)
        {
            Some(g) => g.runs.push(r),
            None => out.push(Group {
                server: &r.server,
                workload: &r.workload,
                runs: vec![r],
            }),
        }
    }
    out
}

/// A group's median in `col` as the table writes it, and its value.
fn median_of(g: &Group, col: usize) -> Option<(String, f64)> {
    let text = g.median_text(col);
    let value = parse_value(&text).ok().flatten()?;
    Some((text, value))
}

/// The goal lines of issue #13, each from medians as the table writes them (the same
/// figures as the median rows), for every server measured on what a line needs:
/// - classic server CPU as a multiple of the floor's (floor-relay on the same stream);
/// - 10k-clients CPU per notification as a multiple of the server's own classic one;
/// - the paced run's share of a core and p99, with the paced floor's p99 beside it (the
///   part of a p99 that any server pays on this machine and instrument).
fn goal_lines(groups: &[Group]) -> Vec<String> {
    let find = |server: &str, workload: &str| {
        groups
            .iter()
            .find(|g| g.server == server && g.workload == workload)
    };
    let floor = find("floor", "floor")
        .and_then(|g| median_of(g, CPU))
        .filter(|(_, f)| *f > 0.0);
    let floor_p99 = find("floor", "floor-paced").and_then(|g| median_of(g, P99));
    let mut out = Vec::new();
    for g in groups.iter().filter(|g| g.server != "floor") {
        match g.workload {
            "classic" => {
                let (Some((text, value)), Some((floor_text, floor))) = (median_of(g, CPU), &floor)
                else {
                    continue;
                };
                out.push(format!(
                    "{}: classic server CPU {text} s = {:.2}x the floor ({floor_text} s)",
                    g.server,
                    value / floor
                ));
            }
            "10k-clients" => {
                let classic = find(g.server, "classic")
                    .and_then(|c| median_of(c, NS_PER_NOTE))
                    .filter(|(_, c)| *c > 0.0);
                let (Some((text, value)), Some((classic_text, classic))) =
                    (median_of(g, NS_PER_NOTE), classic)
                else {
                    continue;
                };
                out.push(format!(
                    "{}: 10k-clients server CPU {text} ns per notification = {:.2}x classic's ({classic_text} ns)",
                    g.server,
                    value / classic
                ));
            }
            "paced" => {
                let (Some((share, _)), Some((p99, _))) = (median_of(g, SHARE), median_of(g, P99))
                else {
                    continue;
                };
                let floor = floor_p99
                    .as_ref()
                    .map(|(f, _)| format!(" (the paced floor's p99: {f} us)"))
                    .unwrap_or_default();
                out.push(format!(
                    "{}: paced server CPU {share} of a core, p99 {p99} us{floor}",
                    g.server
                ));
            }
            _ => {}
        }
    }
    out
}

/// A cell's text with the one character that would end a Markdown cell escaped.
fn md(text: &str) -> String {
    text.replace('|', "\\|")
}

fn md_row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

fn markdown(runs: &[Run]) -> String {
    let groups = groups(runs);
    let mut out = md_row(&HEADINGS.map(String::from));
    let align: Vec<String> = (0..HEADINGS.len())
        .map(|i| {
            // Numbers right-aligned, names and results left.
            if (FIRST_NUM - 1..FIRST_NUM + NUMS).contains(&i) {
                "---:".to_string()
            } else {
                "---".to_string()
            }
        })
        .collect();
    out += &md_row(&align);
    for g in &groups {
        for r in &g.runs {
            let mut cells = vec![md(&r.server), md(&r.workload), r.run.to_string()];
            cells.extend(r.cells.iter().map(|c| md(&c.text)));
            cells.push(md(&r.result));
            out += &md_row(&cells);
        }
        if g.runs.len() > 1 {
            let mut cells = vec![md(g.server), md(g.workload), "median".to_string()];
            cells.extend((0..NUMS).map(|c| g.median_text(c)));
            let passed = g.runs.iter().filter(|r| r.result == "pass").count();
            cells.push(format!("{passed}/{} pass", g.runs.len()));
            out += &md_row(&cells);
        }
    }
    let goals = goal_lines(&groups);
    if !goals.is_empty() {
        out.push('\n');
        for line in goals {
            out += &format!("- {}\n", md(&line));
        }
    }
    out
}

/// One panel of grouped bars: per category, (server index, value) for each server.
struct Panel {
    title: String,
    categories: Vec<String>,
    bars: Vec<Vec<(usize, f64)>>,
    log: bool,
}

fn index_of(servers: &[&str], server: &str) -> usize {
    servers.iter().position(|s| *s == server).unwrap_or(0)
}

/// Column `col`'s medians, a category per workload, a bar per server.
fn by_workload(groups: &[Group], servers: &[&str], col: usize, title: &str) -> Panel {
    let mut workloads: Vec<&str> = Vec::new();
    for g in groups {
        if !workloads.contains(&g.workload) {
            workloads.push(g.workload);
        }
    }
    let bars = workloads
        .iter()
        .map(|w| {
            groups
                .iter()
                .filter(|g| g.workload == *w)
                .filter_map(|g| Some((index_of(servers, g.server), g.median(col)?)))
                .collect()
        })
        .collect();
    Panel {
        title: title.to_string(),
        categories: workloads.iter().map(|w| w.to_string()).collect(),
        bars,
        log: false,
    }
}

/// The paced workload's latency percentiles, a category per percentile, a bar per server.
fn latency(groups: &[Group], servers: &[&str]) -> Panel {
    // The paced floor is the floor's bar here: the same load through a relay.
    let paced: Vec<&Group> = groups
        .iter()
        .filter(|g| g.workload == "paced" || g.workload == "floor-paced")
        .collect();
    let bars = (P50..=MAX)
        .map(|col| {
            paced
                .iter()
                // A latency of 0 us has no place on a log scale.
                .filter_map(|g| Some((index_of(servers, g.server), g.median(col)?)))
                .filter(|(_, v)| *v > 0.0)
                .collect()
        })
        .collect();
    Panel {
        title: "delivery latency at the paced load, µs, log scale (medians of the runs)"
            .to_string(),
        categories: ["p50", "p99", "p99.9", "max"].map(String::from).to_vec(),
        bars,
        log: true,
    }
}

/// 1234567 -> "1.23M": three significant digits, for axis ticks and bar labels.
fn compact(v: f64) -> String {
    let (scaled, suffix) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let places = match scaled.abs() {
        0.0 => 0,
        a => (2 - a.log10().floor() as i32).max(0) as usize,
    };
    let mut s = format!("{scaled:.places$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    s + suffix
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn color(server: usize) -> RGBColor {
    COLORS[server % COLORS.len()]
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// An x axis of `n` categories, category i spanning i..i+1, ticked at the middles (where
/// the labels go). Plotters' own key-point binding cannot be labelled on an f64 axis.
struct Categories(usize);

impl Ranged for Categories {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (lo, hi): (i32, i32)) -> i32 {
        let span = self.0.max(1) as f64;
        lo + ((hi - lo) as f64 * value / span).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _: H) -> Vec<f64> {
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.0 as f64
    }
}

fn draw_legend(area: &Area, servers: &[&str]) -> Result<(), String> {
    let style =
        TextStyle::from(("sans-serif", 18).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let mut x = 70;
    for (i, s) in servers.iter().enumerate() {
        area.draw(&Rectangle::new([(x, 13), (x + 14, 27)], color(i).filled()))
            .map_err(|e| e.to_string())?;
        area.draw(&Text::new(s.to_string(), (x + 20, 20), style.clone()))
            .map_err(|e| e.to_string())?;
        // The SVG's text is laid out by whoever views it: an estimate of its width.
        x += 20 + 10 * s.chars().count() as i32 + 28;
    }
    Ok(())
}

fn draw_panel(area: &Area, p: &Panel) -> Result<(), String> {
    let values = p.bars.iter().flatten().map(|b| b.1);
    let max = values.clone().fold(0.0, f64::max);
    let x = Categories(p.categories.len());
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&p.title, ("sans-serif", 21))
        .margin(10)
        .margin_left(4)
        .x_label_area_size(26)
        .y_label_area_size(62);
    if p.log {
        let min = values.fold(f64::INFINITY, f64::min);
        // Room below the smallest bar (so it shows) and above the largest (its label).
        let range = (min / 3.0)..(max * 4.0);
        let chart = builder
            .build_cartesian_2d(x, range.log_scale())
            .map_err(|e| e.to_string())?;
        draw_bars(chart, p, min / 3.0)
    } else {
        let top = if max > 0.0 { max * 1.15 } else { 1.0 };
        let chart = builder
            .build_cartesian_2d(x, 0.0..top)
            .map_err(|e| e.to_string())?;
        draw_bars(chart, p, 0.0)
    }
}

fn draw_bars<Y>(
    mut chart: ChartContext<SVGBackend, Cartesian2d<Categories, Y>>,
    p: &Panel,
    bottom: f64,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let label = |x: &f64| {
        p.categories
            .get(x.max(0.0).floor() as usize)
            .cloned()
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&label)
        .y_label_formatter(&|v| compact(*v))
        .x_label_style(("sans-serif", 17))
        .y_label_style(("sans-serif", 15))
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(|e| e.to_string())?;
    // The same width in every category, sized by the fullest one.
    let slots = p.bars.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let width = 0.8 / slots as f64;
    let label_style =
        TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, bars) in p.bars.iter().enumerate() {
        let start = i as f64 + 0.5 - width * bars.len() as f64 / 2.0;
        for (j, &(server, v)) in bars.iter().enumerate() {
            let x0 = start + width * j as f64;
            let x1 = x0 + width;
            let pad = width * 0.06;
            chart
                .draw_series([Rectangle::new(
                    [(x0 + pad, bottom), (x1 - pad, v)],
                    color(server).filled(),
                )])
                .map_err(|e| e.to_string())?;
            chart
                .draw_series([Text::new(
                    compact(v),
                    ((x0 + x1) / 2.0, v),
                    label_style.clone(),
                )])
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The chart as SVG text: a legend, then a panel per measure that has any value.
fn chart(runs: &[Run]) -> Result<String, String> {
    let groups = groups(runs);
    let mut servers: Vec<&str> = Vec::new();
    for g in &groups {
        if !servers.contains(&g.server) {
            servers.push(g.server);
        }
    }
    let panels: Vec<Panel> = [
        by_workload(&groups, &servers, EVENTS, "events/s (medians of the runs)"),
        by_workload(
            &groups,
            &servers,
            CPU,
            "server CPU s, user+sys (medians of the runs)",
        ),
        latency(&groups, &servers),
    ]
    .into_iter()
    .filter(|p| p.bars.iter().any(|b| !b.is_empty()))
    .collect();
    const WIDTH: u32 = 960;
    const LEGEND: u32 = 40;
    const PANEL: u32 = 320;
    let height = LEGEND + PANEL * panels.len().max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (legend, rest) = root.split_vertically(LEGEND);
        draw_legend(&legend, &servers)?;
        if panels.is_empty() {
            rest.draw(&Text::new(
                "no values to chart",
                (70, 40),
                ("sans-serif", 15),
            ))
            .map_err(|e| e.to_string())?;
        }
        for (area, p) in rest
            .split_evenly((panels.len().max(1), 1))
            .iter()
            .zip(&panels)
        {
            draw_panel(area, p)?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

const USAGE: &str = "usage: bench-report RESULTS.tsv [--svg OUT.svg]";

/// The results file and the chart's path, from the arguments.
fn parse_args(args: &[String]) -> Result<(String, Option<String>), String> {
    let mut input = None;
    let mut svg = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--svg" => match it.next() {
                Some(p) if svg.is_none() => svg = Some(p.clone()),
                Some(_) => return Err("--svg given twice".to_string()),
                None => return Err("--svg needs a path".to_string()),
            },
            s if s.starts_with('-') && s != "-" => return Err(format!("unknown option {s}")),
            _ if input.is_none() => input = Some(a.clone()),
            _ => return Err(format!("one results file, not also {a}")),
        }
    }
    let input = input.ok_or_else(|| "no results file".to_string())?;
    Ok((input, svg))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (input, svg) = match parse_args(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-report: {e}; {USAGE}");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read_to_string(&input) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bench-report: cannot read {input}: {e}");
            return ExitCode::from(2);
        }
    };
    let runs = match parse_runs(&text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench-report: {input}: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", markdown(&runs));
    if let Some(path) = svg {
        let written =
            chart(&runs).and_then(|s| std::fs::write(&path, s).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("bench-report: cannot write the chart {path}: {e}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runs of these result lines, which must parse.
    fn runs_of(lines: &[String]) -> Vec<Run> {
        parse_runs(&lines.join("\n")).expect("good lines")
    }

    fn line(server: &str, workload: &str, run: u32, cpu: &str, p50: &str) -> String {
        goal_line(server, workload, run, cpu, "0.25", "100", p50, "20")
    }

    /// A line with the goal lines' cells set too.
    #[allow(clippy::too_many_arguments)]
    fn goal_line(
        server: &str,
        workload: &str,
        run: u32,
        cpu: &str,
        share: &str,
        ns: &str,
        p50: &str,
        p99: &str,
    ) -> String {
        format!(
            "{server}\t{workload}\t{run}\t1000\t2000\t{cpu}\t{share}\t{ns}\t3000\t0.5\t{p50}\t{p99}\t30\t40\tpass"
        )
    }

    #[test]
    fn values_are_numbers_or_a_dash() {
        assert_eq!(parse_value("-"), Ok(None));
        assert_eq!(parse_value("2.30"), Ok(Some(2.3)));
        assert_eq!(parse_value("708845"), Ok(Some(708845.0)));
        for bad in ["", "abc", "1,5", "-1", "NaN", "inf", "--"] {
            assert!(parse_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_line_has_every_column() {
        let r = parse_line(&line("ours", "classic", 2, "2.30", "-")).expect("a good line");
        assert_eq!(
            (r.server.as_str(), r.workload.as_str(), r.run),
            ("ours", "classic", 2)
        );
        assert_eq!(r.cells[CPU].value, Some(2.3));
        assert_eq!(r.cells[P50].value, None);
        assert_eq!(r.result, "pass");
        let short = "ours\tclassic\t1\t1000";
        assert!(parse_line(short)
            .unwrap_err()
            .contains("4 tab-separated cells"));
        let long = format!("{}\textra", line("ours", "classic", 1, "1", "1"));
        assert!(parse_line(&long)
            .unwrap_err()
            .contains("16 tab-separated cells"));
        let bad_cpu = line("ours", "classic", 1, "fast", "1");
        assert!(parse_line(&bad_cpu).unwrap_err().contains("server_cpu_s"));
        let bad_run = line("ours", "classic", 0, "1", "1");
        assert!(parse_line(&bad_run).unwrap_err().contains("run"));
        let empty = line("", "classic", 1, "1", "1");
        assert!(parse_line(&empty).unwrap_err().contains("server is empty"));
    }

    #[test]
    fn a_file_has_an_optional_header_and_names_its_bad_line() {
        let good = format!(
            "{}\n{}\n\n{}\r\n",
            COLUMNS.join("\t"),
            line("ours", "classic", 1, "1", "1"),
            line("ours", "classic", 2, "1", "1")
        );
        assert_eq!(parse_runs(&good).map(|r| r.len()), Ok(2));
        let headless = line("ours", "classic", 1, "1", "1");
        assert_eq!(parse_runs(&headless).map(|r| r.len()), Ok(1));
        let bad = format!("{good}{}\n", line("ours", "classic", 3, "x", "1"));
        assert!(parse_runs(&bad).unwrap_err().starts_with("line 5: "));
        let wrong_header = "server\tworkload\trun\n";
        assert!(parse_runs(wrong_header).unwrap_err().contains("header"));
        let twice = format!("{good}{}\n", line("ours", "classic", 2, "1", "1"));
        assert!(parse_runs(&twice).unwrap_err().contains("first on line 4"));
        assert!(parse_runs("").is_err());
        assert!(parse_runs(&COLUMNS.join("\t")).is_err());
    }

    #[test]
    fn the_median_is_the_middle_or_the_mean_of_the_two_middles() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![5.0]), Some(5.0));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![9.0, 1.0, 1.0]), Some(1.0));
    }

    #[test]
    fn a_median_is_written_like_its_values() {
        assert_eq!(decimals("2.30"), 2);
        assert_eq!(decimals("83199"), 0);
        assert_eq!(decimals("1.5e3"), 1);
        assert_eq!(fmt_num(2.3, 2), "2.30");
        assert_eq!(fmt_num(2.4, 2), "2.40");
        assert_eq!(fmt_num(83199.5, 0), "83199.5");
        assert_eq!(fmt_num(0.055, 2), "0.055");
        assert_eq!(fmt_num(300000.0, 0), "300000");
    }

    #[test]
    fn groups_keep_the_order_of_first_appearance() {
        let runs = runs_of(&[
            line("ours", "classic", 1, "3", "1"),
            line("other", "classic", 1, "5", "1"),
            line("ours", "paced", 1, "1", "1"),
            line("ours", "classic", 2, "2", "1"),
        ]);
        let g = groups(&runs);
        let names: Vec<(&str, &str, usize)> = g
            .iter()
            .map(|g| (g.server, g.workload, g.runs.len()))
            .collect();
        assert_eq!(
            names,
            [
                ("ours", "classic", 2),
                ("other", "classic", 1),
                ("ours", "paced", 1)
            ]
        );
        assert_eq!(g[0].median(CPU), Some(2.5));
        assert_eq!(g[0].median_text(CPU), "2.5");
    }

    #[test]
    fn missing_values_are_left_out_of_a_median() {
        let runs = runs_of(&[
            line("ours", "classic", 1, "3", "-"),
            line("ours", "classic", 2, "2", "100"),
            line("ours", "classic", 3, "4", "-"),
        ]);
        let g = groups(&runs);
        assert_eq!(g[0].median_text(P50), "100");
        assert_eq!(g[0].median_text(CPU), "3");
        let none = parse_runs(&line("floor", "floor", 1, "1", "-")).expect("a good line");
        assert_eq!(groups(&none)[0].median_text(P50), "-");
    }

    #[test]
    fn the_floor_multiple_needs_both_and_a_floor_above_zero() {
        let with = |floor_cpu: &str| {
            let runs = runs_of(&[
                line("floor", "floor", 1, floor_cpu, "-"),
                line("ours", "classic", 1, "3.00", "1"),
                line("ours", "paced", 1, "9", "1"),
            ]);
            // Only the classic line: the paced run is not a classic one.
            let mut lines = goal_lines(&groups(&runs));
            lines.retain(|l| !l.contains("paced"));
            lines
        };
        assert_eq!(
            with("1.50"),
            ["ours: classic server CPU 3.00 s = 2.00x the floor (1.50 s)"]
        );
        assert!(with("0.00").is_empty());
        // 0.08 and 0.09: a median of 0.085 as written, not 0.0849999... rounded to 0.08.
        let runs = runs_of(&[
            line("floor", "floor", 1, "0.04", "-"),
            line("ours", "classic", 1, "0.08", "1"),
            line("ours", "classic", 2, "0.09", "1"),
        ]);
        assert_eq!(
            goal_lines(&groups(&runs)),
            ["ours: classic server CPU 0.085 s = 2.12x the floor (0.04 s)"]
        );
        let no_floor = parse_runs(&line("ours", "classic", 1, "3", "1")).expect("a good line");
        assert!(goal_lines(&groups(&no_floor)).is_empty());
    }

    #[test]
    fn the_10k_clients_ratio_is_per_notification_against_the_same_servers_classic() {
        let runs = runs_of(&[
            goal_line("ours", "classic", 1, "2", "0.9", "100", "-", "-"),
            goal_line("other", "classic", 1, "2", "0.9", "50", "-", "-"),
            goal_line("ours", "10k-clients", 1, "9", "0.9", "150", "-", "-"),
            goal_line("ours", "10k-clients", 2, "9", "0.9", "120", "-", "-"),
            goal_line("ours", "10k-clients", 3, "9", "0.9", "190", "-", "-"),
            goal_line("other", "10k-clients", 1, "9", "0.9", "-", "-", "-"),
            goal_line("third", "10k-clients", 1, "9", "0.9", "80", "-", "-"),
        ]);
        assert_eq!(
            goal_lines(&groups(&runs)),
            ["ours: 10k-clients server CPU 150 ns per notification = 1.50x classic's (100 ns)"],
            "no line without a value, or without the same server's classic"
        );
    }

    #[test]
    fn the_paced_line_has_the_share_and_p99_and_the_paced_floors_p99() {
        let paced = |p99: &str| goal_line("ours", "paced", 1, "3", "0.31", "-", "900", p99);
        let floor = goal_line("floor", "floor-paced", 1, "2", "0.70", "-", "300", "2500");
        assert_eq!(
            goal_lines(&groups(&runs_of(&[floor.clone(), paced("4800")]))),
            ["ours: paced server CPU 0.31 of a core, p99 4800 us (the paced floor's p99: 2500 us)"]
        );
        assert_eq!(
            goal_lines(&groups(&runs_of(&[paced("4800")]))),
            ["ours: paced server CPU 0.31 of a core, p99 4800 us"]
        );
        assert!(goal_lines(&groups(&runs_of(&[floor, paced("-")]))).is_empty());
    }

    #[test]
    fn a_bar_in_a_name_does_not_split_a_markdown_cell() {
        let runs = parse_runs(&line("a|b", "classic", 1, "1", "1")).expect("a good line");
        let table = markdown(&runs);
        let row = table.lines().nth(2).expect("a row");
        assert!(row.starts_with("| a\\|b | classic | 1 |"), "{row}");
    }

    #[test]
    fn compact_numbers_keep_three_digits() {
        assert_eq!(compact(298266.0), "298k");
        assert_eq!(compact(1234567.0), "1.23M");
        assert_eq!(compact(2.30), "2.3");
        assert_eq!(compact(83199.0), "83.2k");
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(100000.0), "100k");
        assert_eq!(compact(0.045), "0.045");
        assert_eq!(compact(999.0), "999");
    }

    #[test]
    fn arguments_are_one_file_and_an_optional_chart() {
        let args = |a: &[&str]| parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(args(&["r.tsv"]), Ok(("r.tsv".to_string(), None)));
        assert_eq!(
            args(&["--svg", "c.svg", "r.tsv"]),
            Ok(("r.tsv".to_string(), Some("c.svg".to_string())))
        );
        for bad in [
            &[][..],
            &["r.tsv", "--svg"],
            &["a", "b"],
            &["r.tsv", "--png", "x"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }
}
