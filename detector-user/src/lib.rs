//! The detector's agent as a library: the binary `detector` is a thin CLI over it, and the
//! `tests` crate drives the same pieces (loading the kernel program, running it on crafted
//! packets, decoding its events, correlating them into diagnoses).

pub mod clock;
pub mod community_id;
pub mod correlate;
pub mod diagnosis;
pub mod event;
pub mod kernel;
pub mod live;
pub mod metrics;
pub mod pcap;
pub mod pipeline;
pub mod replay;
pub mod segment;
