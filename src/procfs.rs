//! A process's CPU time and memory, read from `/proc` (Linux), for maze-sim's summary, the
//! tests, and the server's own RSS gauge on its metrics endpoint.

use std::fmt::Display;
use std::time::Duration;

/// User + system CPU time of process `pid` (a number, or `self`).
pub fn cpu_time(pid: impl Display) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may itself hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&hz| hz > 0)?;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// A `kB` field of `/proc/<pid>/status`, such as `VmHWM:` (peak RSS) or `VmRSS:`.
pub fn status_kib(pid: impl Display, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
