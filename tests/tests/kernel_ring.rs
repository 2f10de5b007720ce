//! The event ring under saturation: with a one-page ring that nobody drains, every event
//! the kernel program finds is delivered or counted as dropped, for exactly one reason.

use detector_common::{
    Counter, EventKind,
    tls::alert::{CLOSE_NOTIFY, WARNING},
};
use detector_user::kernel::Options;
use tests::{
    frames::{self, Conversation},
    harness::Harness,
};

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";
/// Flows that each raise one event (an HTTP request to port 443).
const FLOWS: u16 = 100;
/// Alerts in one packet, beyond the cap of 4 events a packet holds.
const ALERTS: usize = 6;

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("a page size")
}

fn counters(h: &Harness) -> [u64; 4] {
    [
        Counter::EventsFound,
        Counter::EventsEmitted,
        Counter::EventsDropped,
        Counter::EventsOverCap,
    ]
    .map(|c| h.counter(c))
}

#[test]
fn saturated_ring_delivers_or_counts_every_event() {
    let ring = page_size();
    let mut h = Harness::with(Options {
        ring_size: ring,
        ..Options::default()
    });
    // One packet with more events than a packet keeps: alerts after a ClientHello.
    let mut chatty = Conversation::v4(443);
    let alerts: Vec<u8> = (0..ALERTS)
        .flat_map(|_| frames::tls10(frames::alert(WARNING, CLOSE_NOTIFY)))
        .collect();
    for f in [
        chatty.syn_ack(),
        chatty.client(&frames::client_hello("chatty.example")),
        chatty.server(&alerts),
    ] {
        h.run_undrained(&f.build());
    }
    for i in 0..FLOWS {
        let mut conv = Conversation::new(
            ("10.1.0.1".parse().unwrap(), 20_000 + i),
            ("10.2.0.1".parse().unwrap(), 443),
        );
        for f in [conv.syn_ack(), conv.client(GET)] {
            h.run_undrained(&f.build());
        }
    }
    let candidates = FLOWS as u64 + ALERTS as u64;
    let [found, emitted, ring_full, over_cap] = counters(&h);
    let delivered = h.drain();
    println!(
        "{ring}-byte ring: {candidates} candidates, {found} found, {emitted} emitted, \
         {} delivered, {ring_full} dropped (ring full), {over_cap} dropped (over the packet cap)",
        delivered.len()
    );
    assert_eq!(found, candidates);
    assert_eq!(over_cap, (ALERTS - 4) as u64);
    assert_eq!(
        emitted,
        delivered.len() as u64,
        "every emitted event is read"
    );
    assert_eq!(found, emitted + ring_full + over_cap);
    assert!(ring_full > 0, "a one-page ring must fill");
    // The events that made it are whole: the alerts first, then the first requests.
    let alerts_read = delivered
        .iter()
        .filter(|e| e.kind == EventKind::PlaintextAlert)
        .count();
    assert_eq!(alerts_read, 4);
    assert!(
        delivered[4..]
            .iter()
            .all(|e| e.kind == EventKind::ProtocolMismatch),
        "{delivered:?}"
    );

    // Drained, the ring takes events again, and the books still balance.
    let mut late = Conversation::v4(443);
    late.client.1 = 30_000;
    let events = h.run_all(&[late.syn_ack(), late.client(GET)]);
    assert_eq!(events.len(), 1, "{events:?}");
    let [found, emitted, ring_full2, over_cap] = counters(&h);
    assert_eq!(ring_full2, ring_full);
    assert_eq!(found, candidates + 1);
    assert_eq!(emitted, delivered.len() as u64 + 1);
    assert_eq!(found, emitted + ring_full2 + over_cap);
}
