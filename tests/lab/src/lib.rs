//! The lab: every field case of docs/field-cases.md reproduced by real software (nginx,
//! openssl, curl, nftables) in network namespaces, captured, and checked against the
//! agent's diagnoses. Used by the live tests (crate `tests`) and by the `lab` binary behind
//! `cargo xtask lab`, `cargo xtask demo` and `cargo xtask soak`.
//!
//! One job a module:
//! - [`netns`]: namespaces, veths, addresses and routes ([`Lab`]); [`teardown`]: removing
//!   them again, also what labs of dead processes left;
//! - [`process`]: supervised processes inside a lab, commands under a time bound, PATH
//!   look-ups; [`clients`]: openssl and curl clients and waiting on their output;
//! - [`capture`]: tcpdump captures; [`pcapfile`]: reading, writing and re-timing them;
//! - [`prometheus`]: real Prometheus servers in lab namespaces and queries of their API;
//! - [`certs`]: a lab CA and server certificates; [`servers`]: nginx and s_server;
//! - [`agent`]: the `detector` binary, live in a namespace or replaying a capture;
//!   [`fixture`]: the lab + router + capture + agent set-up of the live tests;
//! - [`scenarios`]: the field cases as scenarios (registry, expectations, runners, one module
//!   a field case);
//! - [`relay`]: the inspecting relay of field case 2; [`idle_lab`], [`long_lived`],
//!   [`spoof`], [`soak`]: idle-gap servers, connections older than the agent, spoofed
//!   floods, and the soak.

pub mod agent;
pub mod capture;
pub mod certs;
pub mod clients;
pub mod fixture;
pub mod frames;
pub mod idle_lab;
pub mod long_lived;
pub mod netns;
pub mod pcapfile;
pub mod process;
pub mod prometheus;
pub mod relay;
pub mod scenarios;
pub mod servers;
pub mod soak;
pub mod spoof;
pub mod teardown;
mod util;

#[cfg(test)]
mod lab_tests;

pub use crate::{
    capture::Capture,
    certs::{DEFAULT_CN, KeyAlg, TlsFiles, cert_args, path_str, s_client_args},
    netns::{Lab, LabIface, NAME_PREFIX, STOP_GRACE, Topology, in_netns},
    process::{LabProcess, run_host},
    servers::{Nginx, NginxSite, url},
    teardown::sweep_stale,
};
