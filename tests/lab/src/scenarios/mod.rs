//! The lab's scenarios: every field case of docs/field-cases.md (and handshake failures,
//! and clean controls) played by real software in a fresh routed [`Lab`], with the agent
//! running live on the router and tcpdump capturing there. Shared by `cargo xtask lab` (the
//! `lab` binary), `cargo xtask demo` and the regression suite (`tests/tests/lab_regression.rs`),
//! so the three cannot drift apart.
//!
//! A scenario knows what must be diagnosed (an [`Expected`]: kind, client IP, server,
//! sender, and for idle cases the gap with a tolerance) and what must not. [`run`] plays one
//! and writes `NAME.pcap`, `NAME.expected.json` and `NAME.live.json` into an output dir;
//! [`Expected::check`] judges any list of diagnoses (live or replayed) against it.
//!
//! Long field timeouts are scaled down: nginx's keep-alive timeout is 3 s (the field's WAF:
//! 120 s), the router's conntrack forgets established flows after 4 s (the field's load
//! balancer: 350 s), and the agent's `--idle-threshold` is [`IDLE_THRESHOLD_S`] (2 s)
//! accordingly.

pub mod clean;
mod expect;
pub mod handshake;
pub mod keepalive;
pub mod middlebox;
pub mod plaintext;
pub mod precision;
mod registry;
pub mod renegotiation;
pub mod resumption;
mod runner;
#[cfg(test)]
mod tests;

pub use self::{
    clean::{BULK_MIB, BULK_TRANSFERS},
    middlebox::CONNTRACK_TIMEOUT_S,
    precision::{FLOOD_FLOW_TABLE, FLOOD_SEGMENTS},
};
pub use self::{expect::*, registry::*, runner::*};

/// The agent's `--idle-threshold` in every scenario: below the scaled-down timeouts (3 s
/// keep-alive, 4 s conntrack), above anything a clean scenario pauses for.
pub const IDLE_THRESHOLD_S: f64 = 2.0;

/// The agent's `--correlation-window` in replay, as live (see [`LiveAgent`]).
pub const CORRELATION_WINDOW_S: f64 = crate::agent::CORRELATION_WINDOW_S;

/// nginx's `keepalive_timeout` in the field-case-4 (docs/field-cases.md) scenarios (the
/// field's 120 s, scaled).
pub const KEEPALIVE_TIMEOUT_S: u32 = 3;

/// `ssl_protocols` of every TLS nginx here: nginx 1.22 (Debian 12) leaves TLS 1.3 off
/// unless told.
pub const NGINX_PROTOCOLS: &str = "TLSv1.2 TLSv1.3";
