//! The capture stage of replay: packets out of capture files, cut to frames the kernel
//! program takes.

pub mod pcap;
pub mod segment;

pub use pcap::{Packet, PcapError, Reader};
