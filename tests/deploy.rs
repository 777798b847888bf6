//! Running as a service: systemd readiness (`NOTIFY_SOCKET`, `READY=1` once both listeners
//! accept), and the unit and environment files in `deploy/` (checked against the code's
//! defaults, and by `systemd-analyze` where it is installed).

mod common;

use common::{send_lines, Server, TIMEOUT};
use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "follower-maze-deploy-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The next datagram on `sock` within `wait`, as text; `None` if none came.
fn recv(sock: &UnixDatagram, wait: Duration) -> Option<String> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).expect("notification is UTF-8")),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("recv: {e}"),
    }
}

/// The `KEY=VALUE` assignments of one notification.
fn assignments(datagram: &str) -> HashMap<&str, &str> {
    datagram
        .lines()
        .map(|l| {
            l.split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {l:?} in {datagram:?}"))
        })
        .collect()
}

/// Starts the server with `NOTIFY_SOCKET=notify_socket`, checks the one `READY=1` it
/// sends, that it serves, that nothing else is sent while it runs, then `STOPPING=1` and
/// exit 0 on SIGTERM.
fn ready_once_then_stopping(sock: &UnixDatagram, notify_socket: &str) {
    let server = Server::start_with(&[], |cmd| {
        cmd.env("NOTIFY_SOCKET", notify_socket);
    });
    let ready = recv(sock, TIMEOUT).expect("no notification within the timeout");
    let kv = assignments(&ready);
    assert_eq!(kv.get("READY"), Some(&"1"), "{ready:?}");
    // The bound ports (the server was given port 0): sent after binding, not before.
    let status = format!("events on {}, clients on {}", server.events, server.clients);
    assert_eq!(kv.get("STATUS"), Some(&status.as_str()), "{ready:?}");
    // Ready means serving: both ports accept, and an event reaches a client.
    let mut client = common::clients(&server, &[7]).pop().unwrap();
    let mut source = server.source();
    send_lines(&mut source, &["1|P|3|7", "2|B"]);
    assert_eq!(client.read_lines(2), ["1|P|3|7", "2|B"]);
    let log = server.log();
    let listening = log.find(" listening: events on ").unwrap();
    let notified = log
        .find("READY=1")
        .expect("the notification is logged at debug");
    assert!(listening < notified, "{log}");
    // Exactly once.
    assert_eq!(
        recv(sock, Duration::from_millis(300)),
        None,
        "a second notification"
    );
    let (status, log) = server.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
    let stopping = recv(sock, TIMEOUT).expect("no STOPPING=1 at shutdown");
    let kv = assignments(&stopping);
    assert_eq!(kv.get("STOPPING"), Some(&"1"), "{stopping:?}");
    assert!(!kv.contains_key("READY"), "{stopping:?}");
    assert_eq!(recv(sock, Duration::from_millis(50)), None);
    assert!(!log.contains("cannot notify"), "{log}");
}

#[test]
fn ready_is_sent_once_when_both_listeners_accept() {
    let dir = TempDir::new("ready");
    let path = dir.0.join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    ready_once_then_stopping(&sock, path.to_str().unwrap());
}

#[test]
fn ready_reaches_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;
    let name = format!("follower-maze-test-notify-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    ready_once_then_stopping(&sock, &format!("@{name}"));
}

#[test]
fn no_ready_when_a_port_cannot_be_bound() {
    let dir = TempDir::new("busy");
    let path = dir.0.join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_follower-maze"))
        .args(["--event-port", "0", "--client-port", &port])
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot listen for clients"), "{stderr}");
    assert_eq!(recv(&sock, Duration::from_millis(100)), None);
}

#[test]
fn a_notify_socket_that_cannot_be_reached_is_only_a_warning() {
    let dir = TempDir::new("unreachable");
    let nobody = dir.0.join("nobody");
    for (var, warning) in [
        (nobody.to_str().unwrap(), "cannot notify"),
        ("relative/path", "not an absolute path"),
        ("@follower-maze-test-nobody-listens", "cannot notify"),
    ] {
        let server = Server::start_with(&[], |cmd| {
            cmd.env("NOTIFY_SOCKET", var);
        });
        let mut client = common::clients(&server, &[1]).pop().unwrap();
        send_lines(&mut server.source(), &["1|B"]);
        assert_eq!(client.read_lines(1), ["1|B"]);
        let (status, log) = server.terminate();
        assert_eq!(status.code(), Some(0), "{log}");
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(warning)),
            "NOTIFY_SOCKET={var}: no warning {warning:?} in\n{log}"
        );
    }
}

fn deploy_file(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    (path, text)
}

/// `(section, key) -> values`, in order, the way systemd reads a unit file (comments,
/// blank lines; no line continuations are used in ours).
fn parse_unit(text: &str) -> HashMap<(String, String), Vec<String>> {
    let mut section = String::new();
    let mut keys: HashMap<(String, String), Vec<String>> = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(!line.ends_with('\\'), "continuation line: {line}");
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
        keys.entry((section.clone(), k.trim().to_owned()))
            .or_default()
            .push(v.trim().to_owned());
    }
    keys
}

/// A size with systemd's K/M/G suffixes (base 1024), in bytes.
fn bytes(v: &str) -> u64 {
    let (num, mult) = match v.chars().last() {
        Some('K') => (&v[..v.len() - 1], 1 << 10),
        Some('M') => (&v[..v.len() - 1], 1 << 20),
        Some('G') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>().unwrap_or_else(|_| panic!("size {v:?}")) * mult
}

#[test]
fn unit_file_has_what_the_server_needs_and_verifies() {
    let (path, text) = deploy_file("follower-maze.service");
    let unit = parse_unit(&text);
    let get = |section: &str, key: &str| -> String {
        let values = unit
            .get(&(section.to_owned(), key.to_owned()))
            .unwrap_or_else(|| panic!("no {key}= in [{section}]"));
        values.last().unwrap().clone()
    };
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("KillSignal", "SIGTERM"),
        ("EnvironmentFile", "-/etc/default/follower-maze"),
    ] {
        assert_eq!(get("Service", key), want, "{key}=");
    }
    assert_eq!(get("Install", "WantedBy"), "multi-user.target");
    // Extra flags as a word of its own ($VAR, not ${VAR}: split into arguments).
    let exec = get("Service", "ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(
        words,
        ["/usr/local/bin/follower-maze", "$FOLLOWER_MAZE_OPTS"]
    );
    // Sized from the defaults.
    let defaults = follower_maze::Config::default();
    let nofile: usize = get("Service", "LimitNOFILE").parse().unwrap();
    let needed = defaults.max_clients + follower_maze::server::MAX_SOURCES + 2 + 16 + 8;
    assert!(nofile >= needed, "LimitNOFILE={nofile} < {needed}");
    let memory = bytes(&get("Service", "MemoryMax"));
    let floor = (defaults.window_bytes + defaults.total_buffer_limit) as u64
        + defaults.max_clients as u64 * follower_maze::outbuf::WRITE_AT as u64;
    assert!(memory >= floor, "MemoryMax={memory} < {floor}");
    let stop = get("Service", "TimeoutStopSec");
    let stop: u64 = stop.strip_suffix('s').unwrap_or(&stop).parse().unwrap();
    assert!(
        (2..=30).contains(&stop),
        "TimeoutStopSec={stop}: 1 s drain + margin"
    );

    let version = Command::new("systemd-analyze").arg("--version").output();
    if !version.is_ok_and(|o| o.status.success()) {
        eprintln!("systemd-analyze not installed: `systemd-analyze verify` skipped");
        return;
    }
    // verify wants ExecStart's binary to exist: a copy of the unit that runs the one
    // just built.
    let dir = TempDir::new("unit");
    let copy = dir.0.join("follower-maze.service");
    let text = text.replace(
        "ExecStart=/usr/local/bin/follower-maze ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_follower-maze")),
    );
    std::fs::write(&copy, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("systemd-analyze verify {path:?}: {:?}\n{said}", out.status);
    assert!(out.status.success(), "{said}");
    // Unknown keys and bad values are only warnings there: any line about our unit fails.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("follower-maze"))
        .collect();
    assert!(ours.is_empty(), "{ours:#?}");
    // The sandbox stays tight: systemd's own exposure score (0-100, printed / 10) must
    // not creep up as options are dropped.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let overall = said.lines().find(|l| l.contains("Overall exposure level"));
    eprintln!("systemd-analyze security: {}", overall.unwrap_or("?"));
    assert!(out.status.success(), "{said}");
}

#[test]
fn env_file_documents_what_the_server_reads() {
    let (_, text) = deploy_file("follower-maze.env");
    // Assignments, commented out (`#VAR=value`) or not; prose comments are `# ...`.
    let mut vars: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("# ") || line == "#" {
            continue;
        }
        let assignment = line.strip_prefix('#').unwrap_or(line);
        let (k, v) = assignment
            .split_once('=')
            .unwrap_or_else(|| panic!("neither a comment nor VAR=value: {line:?}"));
        assert!(
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line:?}"
        );
        vars.push((k.to_owned(), v.to_owned()));
    }
    let mut names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "FOLLOWER_MAZE_OPTS",
            "RUST_LOG",
            "clientListenerPort",
            "eventListenerPort",
            "logLevel"
        ]
    );
    // Every variable but the unit's own is one the server documents in --help.
    for (k, _) in &vars {
        assert!(
            k == "FOLLOWER_MAZE_OPTS" || follower_maze::config::USAGE.contains(k.as_str()),
            "{k} is not read by the server"
        );
    }
    // The example values are accepted: the binary parses the variables and every flag
    // before `--help` (which then ends it without binding anything).
    let opts = &vars
        .iter()
        .find(|(k, _)| k == "FOLLOWER_MAZE_OPTS")
        .unwrap()
        .1;
    let out = Command::new(env!("CARGO_BIN_EXE_follower-maze"))
        .args(opts.split_whitespace())
        .arg("--help")
        .envs(
            vars.iter()
                .filter(|(k, _)| k != "FOLLOWER_MAZE_OPTS")
                .cloned(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{opts}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
