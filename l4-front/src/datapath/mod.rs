//! The data path: AF_PACKET sockets, the per-worker loop and the pure
//! per-packet pipeline.

pub mod afpacket;
pub mod neigh;
pub mod process;
pub mod ring;
pub mod txring;
pub mod worker;
pub mod xdp;

pub use process::{Processor, Verdict};
