//! follower-maze: a single-threaded server that reads an out-of-order stream of social
//! events on one port and delivers, in sequence order, the right notifications to user
//! clients on another.
//!
//! The data flow, one module per step:
//!
//! ```text
//! socket -> lines (LineSplitter) -> event (parse) -> window (ReorderWindow)
//!        -> router (follow graph, who gets it) -> outbuf (per-connection) -> socket
//! ```
//!
//! [`server`] owns the `mio` poll loop, both listeners and the connection slab ([`conn`]),
//! and drives the pipeline; [`config`] turns flags and environment into a [`Config`];
//! [`stats`] keeps the counters and rate-limits warnings. No threads, no locks.

pub mod config;
pub mod conn;
pub mod event;
pub mod lines;
pub mod notify;
pub mod outbuf;
pub mod prefetch;
pub mod procfs;
pub mod rng;
pub mod router;
pub mod server;
pub mod stats;
pub mod window;

pub use config::Config;
pub use server::Server;
