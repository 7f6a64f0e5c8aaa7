//! `cls-server`: the central Content Location Service of thesis chapter 7.
//!
//! * [`proto`] — the wire protocol, shared with the distributors.
//! * [`client`] — the distributor-side client with self-clocking batching.
//! * [`sched`] — LBLL in its three forms, the bounded target table, the
//!   server/load table.
//! * [`server`] — the server thread: accept, answer batches.
//! * [`monitor`] — the resource monitor (probes, load agent, feedback).
//! * [`config`] — two-layer TOML configuration.
//! * [`metrics`] — counters, Prometheus text.

pub mod client;
pub mod config;
pub mod metrics;
pub mod monitor;
pub mod proto;
pub mod sched;
pub mod server;

pub use client::{ClientConfig, ClsClient, ClsError};
pub use config::Config;
pub use server::{spawn, ServerHandle};
