//! The agent's decoder of ring-buffer records on arbitrary bytes: only records of the
//! event's exact size decode, and a decoded event's variable parts stay inside their
//! fixed arrays whatever the length bytes say.
#![no_main]

use detector_common::{Event, HISTORY_LEN, SNIPPET_LEN};
use detector_user::kernel::event::KernelEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match KernelEvent::decode(data) {
        Ok(e) => {
            assert_eq!(data.len(), size_of::<Event>());
            assert!(e.snippet.len() <= SNIPPET_LEN);
            assert!(e.history.chars().count() <= HISTORY_LEN);
            assert!(
                e.history
                    .chars()
                    .all(|c| c.is_ascii_alphabetic() || c == '?')
            );
            // What the output stage does with every event: must not panic either.
            let _ = (
                e.tls.offered(),
                e.tls.resumption_offered(),
                format!("{e:?}"),
            );
        }
        Err(_) => {}
    }
});
