//! Connection tracking: the sharded table, the half-connection state machine
//! and the three-level timing wheel that expires entries.

pub mod state;
pub mod table;
pub mod wheel;

pub use state::{ConnState, Segment, Timeouts};
pub use table::{Conn, ConnKey, ConnTable, Event, Hit, Loc, RevKey, Stage, Target};
