//! # trellis-eventsourcing
//!
//! **Not yet implemented**: this crate is reserved in the workspace; see the
//! architecture notes for what it will hold.
