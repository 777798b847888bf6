//! Configuration: command-line flags and environment variables in, a validated
//! [`Config`] out. A flag beats its environment variable, which beats the default.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Everything the server can be told.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub bind: IpAddr,
    pub event_port: u16,
    pub client_port: u16,
    /// Most events held beyond the next expected seq.
    pub max_window: u64,
    /// Bytes held for waiting events (the window's ring and the payloads kept beside it).
    pub window_bytes: usize,
    /// `None`: wait for a missing seq forever.
    pub gap_timeout: Option<Duration>,
    /// Skip a missing seq once the stream has moved well past it (learned disorder), not
    /// only on the gap timeout.
    pub learned_loss: bool,
    /// Keep seq and follow graph across event-source sessions.
    pub keep_state: bool,
    /// Pending output per client above which event sources are no longer read.
    pub client_buffer_limit: usize,
    /// Pending output over all clients above which event sources are no longer read.
    pub total_buffer_limit: usize,
    /// A client with pending output that takes no bytes this long is disconnected.
    pub stall_timeout: Duration,
    /// Output below the write threshold waits at most this long for more to join it (one
    /// `write` for several loop turns' notifications); zero: written at the end of the turn.
    pub flush_delay: Duration,
    /// A connection must send its id within this.
    pub auth_timeout: Duration,
    pub max_clients: usize,
    /// Client connections without an id at once; the oldest gives way to a new one.
    pub max_unidentified: usize,
    /// `None`: no periodic stats line.
    pub stats_interval: Option<Duration>,
    /// Where to serve `/metrics` and `/healthz`; `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::from([127, 0, 0, 1]),
            event_port: 9090,
            client_port: 9099,
            max_window: 1 << 20,
            window_bytes: 64 << 20,
            gap_timeout: Some(Duration::from_millis(2000)),
            learned_loss: true,
            keep_state: false,
            client_buffer_limit: 1 << 20,
            total_buffer_limit: 16 << 20,
            stall_timeout: Duration::from_millis(5000),
            // Measured (issue 13): at 100k events/s, 0.36 of a core instead of 0.74, p99
            // latency 4.9 ms instead of 2.6 (docs/design.md has the sweep).
            flush_delay: Duration::from_micros(2000),
            auth_timeout: Duration::from_millis(5000),
            max_clients: 10_000,
            max_unidentified: 1024,
            stats_interval: Some(Duration::from_secs(10)),
            metrics_addr: None,
        }
    }
}

/// The longest duration any flag takes: one year. Deadlines are `now + duration`, and a
/// bound far inside what `Instant` can represent keeps every such sum valid.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The largest `--max-window`: a ring of 2^21 slots is 64 MiB, and growing to it copies up
/// to a million waiting events in one loop turn; a larger one would be a longer turn.
pub const MAX_WINDOW: u64 = 1 << 21;

/// The smallest `--window-bytes`.
pub const MIN_WINDOW_BYTES: usize = crate::window::MIN_BUDGET;

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Config),
    Help,
    Version,
}

pub const USAGE: &str = "\
Usage: follower-maze [OPTIONS]

Reads events on the event port and delivers notifications to user clients on the client port.

Options (flag, environment variable, default):
  --event-port N           eventListenerPort    9090   0 picks a free port
  --client-port N          clientListenerPort   9099   0 picks a free port
  --bind ADDR                                   127.0.0.1
  --max-window N                                1048576  events held out of order at most
  --window-bytes N                              67108864  bytes held for waiting events
                                                       (ring and kept payloads) at most
  --gap-timeout-ms N                            2000   skip a missing seq after this; 0 = never
  --loss-detection MODE                         learned  learned: also skip a missing seq once
                                                       the stream is well past it; timeout:
                                                       only on the gap timeout
  --keep-state                                  keep seq and follow graph across sessions
  --client-buffer-limit N                       1048576  bytes pending per client before
                                                       event sources are paused
  --total-buffer-limit N                       16777216  bytes pending over all clients
                                                       before event sources are paused
  --stall-timeout-ms N                          5000   drop a client that takes no bytes
  --flush-delay-us N                            2000   output under 12 KiB waits at most this
                                                       for more (fewer writes); 0 = written
                                                       at the end of every loop turn
  --auth-timeout-ms N                           5000   drop a connection with no id by then
  --max-clients N                               10000  connections beyond are closed at once
  --max-unidentified N                          max-clients/2, at most 1024: connections
                                                       without an id; the oldest gives way
  --stats-interval-s N                          10     stats line period; 0 = off
  --metrics-addr [IP:]PORT                      off    serve /metrics (Prometheus) and
                                                       /healthz there (IP default 127.0.0.1)
  (durations: at most one year)
  -h, --help                                    print this and exit
  -V, --version                                 print the version and exit

Logging: RUST_LOG (or logLevel) = error|warn|info|debug|trace; default info.";

/// Parses `args` (without the program name), reading environment variables through `env`.
pub fn parse<I, E>(args: I, env: E) -> Result<Command, String>
where
    I: IntoIterator<Item = String>,
    E: Fn(&str) -> Option<String>,
{
    let mut c = Config::default();
    if let Some(v) = env("eventListenerPort") {
        c.event_port = number(&v, "eventListenerPort")?;
    }
    if let Some(v) = env("clientListenerPort") {
        c.client_port = number(&v, "clientListenerPort")?;
    }
    let mut max_unidentified = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--keep-state" if inline.is_none() => {
                c.keep_state = true;
                continue;
            }
            _ => {}
        }
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--event-port" => c.event_port = number(&value()?, &flag)?,
            "--client-port" => c.client_port = number(&value()?, &flag)?,
            "--bind" => {
                let v = value()?;
                c.bind = v.parse().map_err(|_| {
                    format!("invalid value '{v}' for --bind: expected an IP address")
                })?;
            }
            "--max-window" => {
                c.max_window = number(&value()?, &flag)?;
                if c.max_window == 0 || c.max_window > MAX_WINDOW {
                    return Err(format!("--max-window must be between 1 and {MAX_WINDOW}"));
                }
            }
            "--window-bytes" => {
                c.window_bytes = number(&value()?, &flag)?;
                if c.window_bytes < MIN_WINDOW_BYTES {
                    return Err(format!(
                        "--window-bytes must be at least {MIN_WINDOW_BYTES}"
                    ));
                }
            }
            "--gap-timeout-ms" => c.gap_timeout = millis(&value()?, &flag)?,
            "--loss-detection" => {
                c.learned_loss = match value()?.as_str() {
                    "learned" => true,
                    "timeout" => false,
                    v => {
                        return Err(format!(
                            "invalid value '{v}' for --loss-detection: expected learned or timeout"
                        ))
                    }
                }
            }
            "--client-buffer-limit" => c.client_buffer_limit = positive(&value()?, &flag)?,
            "--total-buffer-limit" => c.total_buffer_limit = positive(&value()?, &flag)?,
            "--stall-timeout-ms" => c.stall_timeout = required_millis(&value()?, &flag)?,
            "--flush-delay-us" => {
                let us: u64 = number(&value()?, &flag)?;
                if us > MAX_DURATION.as_micros() as u64 {
                    return Err(format!(
                        "{flag} must be at most {}",
                        MAX_DURATION.as_micros()
                    ));
                }
                c.flush_delay = Duration::from_micros(us);
            }
            "--auth-timeout-ms" => c.auth_timeout = required_millis(&value()?, &flag)?,
            "--max-clients" => c.max_clients = number(&value()?, &flag)?,
            "--metrics-addr" => {
                let v = value()?;
                let addr = match v.parse::<u16>() {
                    Ok(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
                    Err(_) => v.parse::<SocketAddr>(),
                };
                c.metrics_addr = Some(addr.map_err(|_| {
                    format!("invalid value '{v}' for --metrics-addr: expected PORT or IP:PORT")
                })?);
            }
            "--max-unidentified" => max_unidentified = Some(positive(&value()?, &flag)?),
            "--stats-interval-s" => {
                let secs: u64 = number(&value()?, &flag)?;
                if secs > MAX_DURATION.as_secs() {
                    return Err(format!("{flag} must be at most {}", MAX_DURATION.as_secs()));
                }
                c.stats_interval = (secs > 0).then(|| Duration::from_secs(secs));
            }
            _ => return Err(format!("unknown option '{flag}' (see --help)")),
        }
    }
    c.max_unidentified = match max_unidentified {
        Some(n) if n > c.max_clients => {
            return Err("--max-unidentified must be at most --max-clients".into())
        }
        Some(n) => n,
        // Below the client cap, so silence cannot take every place.
        None => (c.max_clients / 2).clamp(1, 1024),
    };
    if c.event_port != 0 && c.event_port == c.client_port {
        return Err(format!("event and client ports are both {}", c.event_port));
    }
    Ok(Command::Run(c))
}

fn number<T: std::str::FromStr>(v: &str, name: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("invalid value '{v}' for {name}: expected a whole number in range"))
}

fn positive(v: &str, name: &str) -> Result<usize, String> {
    match number(v, name)? {
        0 => Err(format!("{name} must be at least 1")),
        n => Ok(n),
    }
}

/// Milliseconds where 0 means "never".
fn millis(v: &str, name: &str) -> Result<Option<Duration>, String> {
    let ms: u64 = number(v, name)?;
    if ms > MAX_DURATION.as_millis() as u64 {
        return Err(format!(
            "{name} must be at most {}",
            MAX_DURATION.as_millis()
        ));
    }
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

fn required_millis(v: &str, name: &str) -> Result<Duration, String> {
    millis(v, name)?.ok_or_else(|| format!("{name} must be at least 1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(args.iter().map(|s| s.to_string()), |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match run(args, env) {
            Ok(Command::Run(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        assert_eq!(config(&[], &[]), Config::default());
        assert_eq!(Config::default().event_port, 9090);
        assert_eq!(Config::default().client_port, 9099);
    }

    #[test]
    fn flag_beats_env_beats_default() {
        let env = [
            ("eventListenerPort", "7000"),
            ("clientListenerPort", "7001"),
        ];
        let c = config(&[], &env);
        assert_eq!((c.event_port, c.client_port), (7000, 7001));
        let c = config(&["--event-port", "8000", "--client-port=8001"], &env);
        assert_eq!((c.event_port, c.client_port), (8000, 8001));
    }

    #[test]
    fn every_flag() {
        let c = config(
            &[
                "--bind",
                "0.0.0.0",
                "--max-window",
                "64",
                "--gap-timeout-ms",
                "0",
                "--loss-detection",
                "timeout",
                "--keep-state",
                "--client-buffer-limit",
                "4096",
                "--total-buffer-limit",
                "8192",
                "--stall-timeout-ms",
                "10",
                "--flush-delay-us",
                "1500",
                "--auth-timeout-ms",
                "20",
                "--max-clients",
                "3",
                "--max-unidentified",
                "2",
                "--window-bytes",
                "100000",
                "--stats-interval-s",
                "0",
                "--metrics-addr",
                "9100",
                "--event-port",
                "0",
                "--client-port",
                "0",
            ],
            &[],
        );
        assert_eq!(c.bind, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(c.max_window, 64);
        assert_eq!(c.gap_timeout, None);
        assert!(!c.learned_loss);
        assert!(c.keep_state);
        assert_eq!(c.client_buffer_limit, 4096);
        assert_eq!(c.total_buffer_limit, 8192);
        assert_eq!(c.stall_timeout, Duration::from_millis(10));
        assert_eq!(c.flush_delay, Duration::from_micros(1500));
        assert_eq!(c.auth_timeout, Duration::from_millis(20));
        assert_eq!(c.max_clients, 3);
        assert_eq!(c.max_unidentified, 2);
        assert_eq!(c.window_bytes, 100_000);
        assert_eq!(c.stats_interval, None);
        assert_eq!(
            c.metrics_addr,
            Some(SocketAddr::from(([127, 0, 0, 1], 9100)))
        );
        let c = config(&["--metrics-addr", "0.0.0.0:9101"], &[]);
        assert_eq!(c.metrics_addr, Some(SocketAddr::from(([0, 0, 0, 0], 9101))));
    }

    #[test]
    fn unidentified_connections_get_their_own_bound_below_max_clients() {
        assert_eq!(config(&[], &[]).max_unidentified, 1024);
        assert_eq!(config(&["--max-clients", "50"], &[]).max_unidentified, 25);
        assert_eq!(config(&["--max-clients", "1"], &[]).max_unidentified, 1);
    }

    #[test]
    fn help_and_version() {
        assert_eq!(run(&["--help"], &[]), Ok(Command::Help));
        assert_eq!(run(&["-V"], &[]), Ok(Command::Version));
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        for args in [
            &["--event-port", "70000"][..],
            &["--event-port", "x"],
            &["--event-port"],
            &["--bind", "nowhere"],
            &["--max-window", "0"],
            &["--max-window", "2097153"],
            &["--auth-timeout-ms", "0"],
            &["--client-buffer-limit", "0"],
            &["--total-buffer-limit", "0"],
            &["--frobnicate"],
            &["--keep-state=yes"],
            &["--window-bytes", "65535"],
            &["--loss-detection", "guess"],
            &["--metrics-addr", "localhost:80"],
            &["--max-unidentified", "0"],
            &["--max-clients", "5", "--max-unidentified", "6"],
            &["--stats-interval-s", "31536001"],
            &["--gap-timeout-ms", "31536000001"],
            &["--stall-timeout-ms", "18446744073709551615"],
            &["--flush-delay-us", "31536000000001"],
            &["--flush-delay-us", "-1"],
            &["--event-port", "5", "--client-port", "5"],
        ] {
            let err = run(args, &[]).unwrap_err();
            assert!(!err.contains('\n') && !err.is_empty(), "{args:?}: {err}");
        }
        assert!(run(&[], &[("eventListenerPort", "-1")]).is_err());
    }
}
