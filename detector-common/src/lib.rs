//! The contract between the kernel program and the agent: map names, the flow key and
//! state kept per flow, the events sent through the ring buffer, and counter indices.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, so that the kernel
//! (which hashes keys byte by byte) and the agent (which reads events byte by byte) agree
//! on every byte.
#![no_std]

mod config;
mod counter;
mod event;
mod flow;
mod key;
pub mod tls;

pub use config::*;
pub use counter::*;
pub use event::*;
pub use flow::*;
pub use key::*;

/// Map and program names, as they appear in the compiled object.
pub mod names {
    pub const XDP_PROGRAM: &str = "detector_xdp";
    pub const TC_PROGRAM: &str = "detector_tc";
    pub const XDP_SLOW_PATH: &str = "detector_xdp_slow";
    pub const TC_SLOW_PATH: &str = "detector_tc_slow";
    pub const XDP_SLOW_ARRAY: &str = "XDP_SLOW";
    pub const TC_SLOW_ARRAY: &str = "TC_SLOW";
    pub const FLOWS: &str = "FLOWS";
    pub const UNCONFIRMED: &str = "UNCONFIRMED";
    pub const SNI: &str = "SNI";
    pub const SCRATCH: &str = "SCRATCH";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CONFIG: &str = "CONFIG";
    pub const TLS_PORTS: &str = "TLS_PORTS";
}

/// Default number of flows the kernel tracks; the agent can change it at load time.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 65_536;
/// Default size of the table of unconfirmed flows (seen from one side only so far). A
/// flood of one-sided packets (scans, spoofed segments, SYN-ACKs of a SYN flood) churns
/// this table only, never the confirmed flows in the main one.
pub const DEFAULT_UNCONFIRMED_TABLE_SIZE: u32 = 16_384;
/// Size of the kernel → agent ring buffer in bytes (a power of two, page aligned).
pub const EVENT_RING_BYTES: u32 = 1 << 20;
/// How many ports the TLS port set can hold.
pub const MAX_TLS_PORTS: u32 = 64;
/// Ports treated as TLS when the operator names none.
pub const DEFAULT_TLS_PORTS: [u16; 7] = [443, 465, 636, 853, 993, 995, 8443];
/// Largest record length TLS allows (2^14 + 2048); anything longer is not TLS.
pub const MAX_TLS_RECORD: u32 = (1 << 14) + 2048;
/// Bytes of the triggering payload copied into an event, so the agent can show them.
pub const SNIPPET_LEN: usize = 16;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C) plain data whose every byte is initialised (padding
    // is explicit) and for which any bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Sni {}
}

// The kernel writes these layouts and the agent reads them; a silent change of size would
// make one misread the other, so pin them.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<Direction>() == 96);
const _: () = assert!(core::mem::size_of::<Tls>() == 40);
// 272 since the flow keeps what RST and SYN-ACK checks need (each side's window scale,
// the sequence number of a new SYN): 8 bytes more per flow, 512 KiB for 65 536 flows.
const _: () = assert!(core::mem::size_of::<FlowState>() == 272);
const _: () = assert!(core::mem::size_of::<Event>() == 128);
const _: () = assert!(core::mem::size_of::<Sni>() == 1 + SNI_MAX);
