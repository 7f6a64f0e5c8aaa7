//! Scheduling state of the CLS: the target table, the server table and the
//! LBLL algorithm (thesis §7.3.1, §7.5.4).

pub mod lbll;
pub mod servers;
pub mod table;

pub use lbll::{Decision, Lbll, Mode, Params};
pub use servers::{DistKey, ServerState, ServerTable};
pub use table::{ServerSet, TargetTable, MAX_SET};
