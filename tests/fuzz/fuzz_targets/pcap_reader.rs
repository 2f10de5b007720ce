//! The capture reader (classic pcap and pcapng, any link type) on arbitrary bytes: it must
//! return packets or an error naming an offset inside the input, never panic, never hand
//! out an empty or oversized frame, and stop after its first error. Every frame it yields
//! goes on through the segmenter, as in replay.
#![no_main]

use std::io::Cursor;

use detector_user::capture::{Reader, segment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = Reader::new(Cursor::new(data)) else {
        return;
    };
    // An input of n bytes holds fewer than n records; the bound keeps a reader that
    // stopped advancing from hanging the fuzzer instead of failing it.
    for _ in 0..=data.len() {
        match reader.next_packet() {
            Ok(Some(p)) => {
                assert!(reader.offset() <= data.len() as u64);
                // Bytes of the input, behind at most a 14-byte Ethernet header the
                // reader wrote in place of another link layer's.
                assert!(
                    p.frame.len() <= data.len() + 14,
                    "frame longer than the input"
                );
                for part in segment::split(&p.frame) {
                    assert!(part.len() <= segment::MAX_FRAME);
                }
            }
            Ok(None) => {
                assert!(
                    matches!(reader.next_packet(), Ok(None)),
                    "a finished reader reads on"
                );
                return;
            }
            Err(e) => {
                let at = e.offset().expect("every read error has an offset");
                assert!(
                    at <= data.len() as u64,
                    "error offset {at} past the input: {e}"
                );
                assert!(
                    matches!(reader.next_packet(), Ok(None)),
                    "reader goes on after {e}"
                );
                return;
            }
        }
    }
    panic!(
        "the reader neither ended nor failed after {} reads",
        data.len() + 1
    );
});
