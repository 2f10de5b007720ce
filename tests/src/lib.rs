//! Shared pieces of the detector's tests: crafted frames for the kernel program, and the
//! lab (network namespaces, real servers and clients, captures) for live tests.

pub mod agent;
pub mod frames;
pub mod harness;
pub mod idle_lab;
pub mod lab;
pub mod long_lived;
pub mod pcapfile;
pub mod relay;
pub mod scenarios;
pub mod soak;
pub mod spoof;
