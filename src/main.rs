//! The server binary: parse flags, set up logging, bind, hand over to the library, and
//! tell systemd (or any supervisor speaking its notify protocol) when it is ready.

use follower_maze::config::{self, Command};
use follower_maze::Server;
use std::net::TcpListener;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cmd = match config::parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(cmd) => cmd,
        Err(e) => {
            eprintln!("follower-maze: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match cmd {
        Command::Help => {
            println!("{}", config::USAGE);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("follower-maze {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run(cfg) => cfg,
    };
    init_logging();
    let bind = |port: u16, what: &str| {
        TcpListener::bind((cfg.bind, port))
            .map_err(|e| format!("cannot listen for {what} on {}:{port}: {e}", cfg.bind))
    };
    let listeners =
        bind(cfg.event_port, "events").and_then(|e| Ok((e, bind(cfg.client_port, "clients")?)));
    let (events, clients) = match listeners {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("follower-maze: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Server::new(cfg.clone(), events, clients).and_then(|mut server| {
        server.handle_signals()?;
        Ok(server)
    });
    let mut server = match started {
        Ok(server) => server,
        Err(e) => {
            eprintln!("follower-maze: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let addrs = server.local_addrs();
    if let Ok((ev, cl)) = &addrs {
        log::info!(
            "follower-maze {} listening: events on {ev}, clients on {cl} (max_window={} window_bytes={} gap_timeout={:?} loss_detection={} keep_state={} client_buffer_limit={} total_buffer_limit={} stall_timeout={:?} flush_delay={:?} auth_timeout={:?} max_clients={} max_unidentified={} stats_interval={:?})",
            env!("CARGO_PKG_VERSION"),
            cfg.max_window,
            cfg.window_bytes,
            cfg.gap_timeout,
            if cfg.learned_loss { "learned" } else { "timeout" },
            cfg.keep_state,
            cfg.client_buffer_limit,
            cfg.total_buffer_limit,
            cfg.stall_timeout,
            cfg.flush_delay,
            cfg.auth_timeout,
            cfg.max_clients,
            cfg.max_unidentified,
            cfg.stats_interval,
        );
    }
    // Both listeners are bound and listening, signals are handled: from here on a
    // connection is accepted, so this is the moment to report ready (once).
    let notifier = follower_maze::notify::Notifier::from_env();
    if let Some(n) = &notifier {
        let status = match &addrs {
            Ok((ev, cl)) => format!("STATUS=events on {ev}, clients on {cl}"),
            Err(_) => "STATUS=listening".to_owned(),
        };
        n.send(&format!("READY=1\n{status}"));
    }
    let result = server.run();
    if let Some(n) = &notifier {
        n.send("STOPPING=1\nSTATUS=stopped");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("poll loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG`, else the classic verifier's `logLevel`, else `info`.
fn init_logging() {
    let spec = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("logLevel"))
        .unwrap_or_else(|_| "info".to_owned());
    env_logger::Builder::new()
        .parse_filters(&spec.to_lowercase())
        .init();
}
