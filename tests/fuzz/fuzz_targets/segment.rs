//! The segmenter on arbitrary frames: every part fits the program's page, a frame that
//! fits is passed whole, and a split super-packet's parts are its headers (sequence number,
//! flags and IP length rewritten) followed by its payload in order, cut at the segment size.
#![no_main]

use detector_user::capture::segment::{MAX_FRAME, SEGMENT_PAYLOAD, split};
use libfuzzer_sys::fuzz_target;

/// Header bytes a part may change: the sequence number, the flags, the IP length.
const REWRITTEN: usize = 4 + 1 + 2;

fn differing(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    for p in &parts {
        assert!(p.len() <= MAX_FRAME, "a part of {} bytes", p.len());
    }
    if data.len() <= MAX_FRAME {
        assert_eq!(parts, [data]);
        return;
    }
    match parts.as_slice() {
        [] => {}
        [one] => {
            // Cut to the page, or one segment of headers plus a payload that fits one.
            assert!(
                differing(one, data) <= REWRITTEN,
                "{} bytes changed",
                differing(one, data)
            );
        }
        [first, .., last] => {
            let header = first.len() - SEGMENT_PAYLOAD;
            assert!(last.len() > header && last.len() <= first.len());
            let mut payload = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                if i + 1 < parts.len() {
                    assert_eq!(p.len(), first.len(), "part {i} is not a full segment");
                }
                assert!(differing(&p[..header], &data[..header]) <= REWRITTEN);
                payload.extend_from_slice(&p[header..]);
            }
            assert_eq!(
                payload,
                data[header..header + payload.len()],
                "the parts' payload is not the input's"
            );
        }
    }
});
