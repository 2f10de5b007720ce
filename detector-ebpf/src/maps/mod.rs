//! Every map of the program, each private to the module that owns it and reached through
//! functions that say what they do, so that what touches a map is found in one place. The
//! agent finds the maps by their names (`FLOWS`, `SNI`, ...): those stay as they are.

pub mod config;
pub mod counters;
pub mod events;
pub mod flows;
pub mod options;
pub mod sni;
pub mod tail;
