//! `l4-front`: a user-space L4 director in the manner of IPVS (thesis
//! chapters 3–5): VS/DR, VS/TUN and VS/NAT over AF_PACKET.
//!
//! Life of a packet: `datapath::worker` receives a frame → `packet::parse`
//! → `datapath::process::Processor::process` (VIP lookup, `conn::ConnTable`
//! tracking, `sched` for new connections) → `packet::rewrite` → send.

pub mod config;
pub mod conn;
pub mod control;
pub mod datapath;
pub mod decap;
pub mod director;
pub mod hash;
pub mod health;
pub mod kernel_drop;
pub mod packet;
pub mod sched;
pub mod service;
pub mod stats;
pub mod sync;

pub use director::{run, RunError};
