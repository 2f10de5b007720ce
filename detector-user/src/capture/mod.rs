//! The capture stage of replay: packets out of capture files (classic pcap and pcapng,
//! whatever their link type, as Ethernet frames), cut to frames the kernel program takes.
//!
//! # Why the pcap and pcapng reader is our own
//!
//! The maintained crate, `pcap-file` (2.0.0, the latest 2.x), was run over every capture
//! the reader's tests build (`pcap_file_eval` keeps that evaluation as tests asserting what
//! the crate does, so a release that changes it shows up). It agrees on well-formed classic
//! files in all four magics, and a file cut at any byte gives an error rather than a panic
//! or a silent end. It cannot replace ours because:
//!
//! - its errors carry no position: a cut-off file is a bare `UnexpectedEof` ("Error reading
//!   bytes"), and its reader buffers 8 MB ahead, so no byte count outside it says where the
//!   bad record starts. Ours names the file offset of the record or block;
//! - a record claiming more than any snapshot length reads as truncation (it waits for the
//!   bytes), where ours reports a corrupt record at its offset;
//! - `next_packet` rejects every record whose original length exceeds the file's snapshot
//!   length, which is every cut packet of a `tcpdump -s 96` capture;
//! - pcapng timestamps are taken as nanoseconds whatever the interface's `if_tsresol`: the
//!   default microsecond interfaces (tcpdump, dumpcap) come out 1000 times too early;
//! - simple packet blocks keep their padding and ignore the interface's snapshot length;
//! - an interface option it cannot decode (an `if_name` not in UTF-8, an option list without
//!   end-of-options) ends the capture; a section of unknown major version is read as 1.x;
//! - the interface list of a section is unbounded (ours stops at 4096);
//! - an `Interrupted` read is an error instead of being retried, and after any error every
//!   further call returns it again, so a loop that skips errors never ends.
//!
//! An adapter over its slice parsers would have to keep our buffering, offsets, length
//! caps, timestamp scaling, simple-packet handling and interface bound, leaving the crate
//! only the decoding of fixed header fields while adding its stricter rejections. The
//! link-type normalisation to Ethernet (`link`) no crate does in any case.

mod classic;
pub mod ethernet;
mod input;
mod link;
#[cfg(test)]
mod pcap_file_eval;
mod pcapng;
mod reader;
pub mod segment;
#[cfg(test)]
mod test_capture;

pub use reader::{Frame, Packet, PcapError, Reader};
