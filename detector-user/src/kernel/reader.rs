//! The kernel stage's output: ring-buffer records decoded into events, each with the host
//! name the kernel's SNI map holds for its connection, so that later stages get all they
//! need with the event and never reach back into kernel maps.

use detector_common::tls_flags;

use super::{
    SniMap,
    event::{DecodeError, KernelEvent},
};

/// A decoded event and its connection's SNI, where the kernel saw one.
#[derive(Clone, Debug)]
pub struct Sighting {
    pub event: KernelEvent,
    /// Escaped for display ([`crate::output::escape`]): the name is a peer's bytes.
    pub sni: Option<String>,
}

pub struct EventReader {
    /// None where there is no kernel map to read (unit tests of later stages).
    sni: Option<SniMap>,
}

impl EventReader {
    pub fn new(sni: Option<SniMap>) -> EventReader {
        EventReader { sni }
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<Sighting, DecodeError> {
        let event = KernelEvent::decode(bytes)?;
        // Only a flow whose ClientHello carried a name is looked up: for any other, the
        // map may still hold a previous connection's name under the same flow key.
        let sni = match &self.sni {
            Some(map) if event.tls.flags & tls_flags::SNI != 0 => {
                map.lookup(event.client, event.server)
            }
            _ => None,
        };
        Ok(Sighting { event, sni })
    }
}
