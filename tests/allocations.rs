//! No allocation per event or per notification in steady state: the server runs in this
//! process, on its own thread, under a global allocator that counts that thread's
//! allocations; after a warm-up, 100,000 more events must cost only a small constant
//! number of them.

mod common;

use common::{expected, random_events, Client, Rng};
use follower_maze::{Config, Server};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

struct Counting;

static SERVER_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static IS_SERVER: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if IS_SERVER.with(Cell::get) {
            SERVER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if IS_SERVER.with(Cell::get) {
            SERVER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Starts the server on a thread of this process; returns (events, clients) addresses.
fn start_in_process() -> (SocketAddr, SocketAddr) {
    let events = TcpListener::bind("127.0.0.1:0").unwrap();
    let clients = TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = (events.local_addr().unwrap(), clients.local_addr().unwrap());
    let cfg = Config {
        stats_interval: None,
        ..Config::default()
    };
    std::thread::spawn(move || {
        IS_SERVER.with(|s| s.set(true));
        let mut server = Server::new(cfg, events, clients).expect("server");
        server.run().expect("run");
    });
    addrs
}

#[test]
fn steady_state_costs_no_allocation_per_event_or_notification() {
    let (events, clients) = start_in_process();
    let mut rng = Rng::new(7);
    let users: Vec<u64> = (1..=20).collect();
    // One stream, sent in two phases: warm-up, then the measured 100,000 events.
    let all = random_events(&mut rng, 130_000, 40);
    let want = expected(&all, &users);
    let split_seq = 30_000;
    let mut conns: Vec<(u64, Client)> = users
        .iter()
        .map(|&u| (u, Client::connect(clients)))
        .collect();
    for (u, c) in &conns {
        c.send(format!("{u}\r\n").as_bytes());
    }
    std::thread::sleep(Duration::from_millis(300)); // ids read before the first event
    let mut src = TcpStream::connect(events).unwrap();
    let mut send = |from: usize, to: usize, rng: &mut Rng| {
        let mut batch: Vec<&String> = all[from..to].iter().collect();
        for chunk in batch.chunks_mut(100) {
            rng.shuffle(chunk);
        }
        let mut bytes = Vec::new();
        for e in batch {
            bytes.extend_from_slice(e.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        src.write_all(&bytes).unwrap();
    };
    let seq_of = |line: &String| line.split('|').next().unwrap().parse::<usize>().unwrap();
    // Warm-up: buffers, window, maps and the follow graph reach their working size.
    send(0, split_seq, &mut rng);
    for (u, c) in &mut conns {
        let n = want[u].iter().filter(|l| seq_of(l) <= split_seq).count();
        assert_eq!(c.read_lines(n), want[u][..n], "user {u}");
    }
    let before = SERVER_ALLOCS.load(Ordering::Relaxed);
    send(split_seq, all.len(), &mut rng);
    let mut notifications = 0;
    for (u, c) in &mut conns {
        let start = want[u].iter().filter(|l| seq_of(l) <= split_seq).count();
        let rest = &want[u][start..];
        assert_eq!(c.read_lines(rest.len()), rest, "user {u}");
        notifications += rest.len();
    }
    let allocs = SERVER_ALLOCS.load(Ordering::Relaxed) - before;
    assert!(
        notifications > 100_000,
        "the phase notifies plenty: {notifications}"
    );
    // A handful of buffer or table growths may still happen; one per event would be 100,000.
    eprintln!("steady-state allocations: {allocs} for {notifications} notifications");
    assert!(
        allocs <= 64,
        "{allocs} allocations for 100,000 events and {notifications} notifications"
    );
}
