//! The tools that drive the system from outside: the JSON client, the
//! narrated scenario, the load generator, the fault drills and the cluster
//! of child processes they run, and test support. Services never import
//! tools.

pub mod canary;
pub(crate) mod client;
pub mod cluster;
pub mod drill;
pub mod load;
pub mod scenario;
pub mod slow_replica;
pub mod testing;
