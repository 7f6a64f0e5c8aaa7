//! `cls-server`: the central Content Location Service of thesis chapter 7.
//!
//! * [`proto`] — the wire protocol, shared with the distributors.
//! * [`sched`] — LBLL in its three forms, the bounded target table, the
//!   server/load table.
//! * [`server`] — the tokio server: accept, answer batches, metrics.
//! * [`monitor`] — the resource monitor (probes, load agent, feedback).
//! * [`config`] — two-layer TOML configuration.
//! * [`client`] — the distributor-side client with self-clocking batching.

pub mod config;
pub mod proto;
pub mod sched;
