//! The capture stage of replay: packets out of capture files (classic pcap and pcapng,
//! whatever their link type, as Ethernet frames), cut to frames the kernel program takes.

mod classic;
mod input;
mod link;
mod pcapng;
mod reader;
pub mod segment;
#[cfg(test)]
mod test_capture;

pub use reader::{Packet, PcapError, Reader};
