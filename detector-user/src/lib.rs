//! The detector's agent as a library: the binary `detector` is a thin CLI over it, and the
//! `tests` crate drives the same pieces (loading the kernel program, running it on crafted
//! packets, decoding its events, correlating them into diagnoses).
//!
//! Stages, each depending only on those before it: [`capture`] (replay's packets),
//! [`kernel`] (the program, its maps, its decoded events), [`correlate`] (sessions judged
//! into diagnoses), [`output`] (JSON lines, metrics). [`pipeline`] wires them; [`live`] and
//! [`replay`] drive the pipeline from interfaces or from a file; [`privilege`] is what the
//! agent needs of root and gives up once attached.

pub mod capture;
pub mod correlate;
pub mod kernel;
pub mod live;
pub mod output;
pub mod pipeline;
pub mod privilege;
pub mod replay;
