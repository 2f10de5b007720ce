//! Time: idle gaps before closes, resets and resumptions (field cases 4 and 5), with the
//! program's clock driven by the harness so 120 s and 350 s gaps take no time.

use std::time::Duration;

use detector_common::{
    Counter, EventKind, Side, flow_flags,
    tls::{
        content_type::{ALERT, APPLICATION_DATA as APPDATA, HANDSHAKE},
        handshake::CERTIFICATE,
    },
};
use detector_user::{
    kernel::{Options, event::KernelEvent},
    output::diagnosis::Kind,
};
use tests::{
    frames::{self, ACK, Conversation, FIN, Hello, RST, handshake, record},
    harness::{Harness, diagnose_idle},
    sessions::{ccs, sealed},
};

const IDLE: Duration = Duration::from_secs(30);

/// A TLS 1.2 session that has exchanged application data.
fn established(h: &mut Harness, conv: &mut Conversation) -> Vec<KernelEvent> {
    let mut flight = record(HANDSHAKE, &Hello::server().server_hello());
    flight.extend(record(HANDSHAKE, &handshake(CERTIFICATE, &[0x30; 300])));
    let mut cfin = ccs();
    cfin.extend(sealed(HANDSHAKE, 40));
    let frames = vec![
        conv.syn_ack(),
        conv.client(&frames::client_hello("idle.example")),
        conv.server(&flight),
        conv.client(&cfin),
        conv.server(&cfin),
        conv.client(&sealed(APPDATA, 200)),
        conv.server(&sealed(APPDATA, 900)),
    ];
    h.run_all(&frames)
}

fn kinds(events: &[KernelEvent]) -> Vec<(EventKind, Side)> {
    events.iter().map(|e| (e.kind, e.sender)).collect()
}

#[test]
fn proxy_closes_after_idle_with_encrypted_alert_and_fin() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    assert!(established(&mut h, &mut conv).is_empty());
    h.advance(Duration::from_millis(119_900));
    let mut events = h.run(&conv.server(&sealed(ALERT, 26)));
    events.extend(h.run(&conv.server_flags(ACK | FIN)));
    events.extend(h.run(&conv.client_flags(ACK)));
    h.advance(Duration::from_secs(15));
    events.extend(h.run(&conv.client_flags(ACK | RST)));
    assert_eq!(
        kinds(&events),
        [
            (EventKind::EncryptedAlert, Side::Server),
            (EventKind::IdleFin, Side::Server),
            // The path carried the server's words after the gap: evidence for the timeout
            // estimate, not a diagnosis.
            (EventKind::IdleSurvived, Side::Client),
        ],
        "the client's RST 15 s after the FIN is no idle reset"
    );
    // The harness's clock also moves 1 ms per frame.
    assert_eq!(events[0].gap_ns, 119_901_000_000);
    let d = diagnose_idle(&events, IDLE);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::IdleClose);
    assert_eq!(d[0].detail_json()["sender"], "server");
    assert_eq!(d[0].detail_json()["how"], "encrypted_alert");
    assert!((d[0].detail_json()["gap_s"].as_f64().unwrap() - 119.9).abs() < 0.01);
    let d = diagnose_idle(&events, IDLE);
    assert_eq!(d.len(), 1, "the survived delivery is no diagnosis: {d:?}");
    assert!(d[0].evidence[0].contains("with FIN"), "{:?}", d[0].evidence);
}

#[test]
fn reset_after_idle_names_who_and_how_long() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    established(&mut h, &mut conv);
    h.advance(Duration::from_secs(61));
    let events = h.run(&conv.server_flags(ACK | RST));
    assert_eq!(kinds(&events), [(EventKind::IdleRst, Side::Server)]);
    let d = diagnose_idle(&events, IDLE);
    assert_eq!(d[0].kind, Kind::RstAfterIdle);
    assert_eq!(d[0].detail_json()["gap_s"], 61.001);
}

#[test]
fn activity_below_the_threshold_raises_nothing() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    established(&mut h, &mut conv);
    let mut events = Vec::new();
    for _ in 0..5 {
        h.advance(Duration::from_secs(25));
        events.extend(h.run(&conv.client(&sealed(APPDATA, 60))));
        events.extend(h.run(&conv.server(&sealed(APPDATA, 60))));
    }
    h.advance(Duration::from_secs(20));
    events.extend(h.run(&conv.client_flags(ACK | FIN)));
    events.extend(h.run(&conv.server_flags(ACK | FIN)));
    assert!(events.is_empty(), "{events:?}");
}

/// Field case 5: flows idle past the load balancer's timeout get no answer; one idle for
/// less survives. The estimate lands on the shortest fatal gap.
#[test]
fn load_balancer_timeout_drops_and_inference() {
    let gaps = [(300u64, true), (352, false), (400, false)];
    let mut events = Vec::new();
    for (i, (gap, survives)) in gaps.iter().enumerate() {
        // One kernel per flow, so each flow's gap is exactly its own.
        let mut h = Harness::new();
        let mut conv = Conversation::new(
            ("10.1.0.1".parse().unwrap(), 42_000 + i as u16),
            ("10.2.0.1".parse().unwrap(), 443),
        );
        established(&mut h, &mut conv);
        h.advance(Duration::from_secs(*gap));
        let resume = conv.client(&sealed(APPDATA, 80));
        events.extend(h.run(&resume));
        if *survives {
            events.extend(h.run(&conv.server(&sealed(APPDATA, 80))));
        } else {
            h.advance(Duration::from_millis(200));
            events.extend(h.run(&resume)); // a retransmission, perhaps a probe
            h.advance(Duration::from_millis(400));
            events.extend(h.run(&resume)); // a second into silence: dropped
            h.advance(Duration::from_millis(800));
            events.extend(h.run(&resume)); // reported once
        }
    }
    let k: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        k,
        [
            EventKind::IdleSurvived,
            EventKind::IdleRetransmit,
            EventKind::IdleRetransmit
        ],
        "{events:?}"
    );
    let d = diagnose_idle(&events, IDLE);
    let drops: Vec<_> = d
        .iter()
        .filter(|x| x.kind == Kind::IdleTimeoutDrop)
        .collect();
    assert_eq!(drops.len(), 2, "{d:?}");
    assert_eq!(drops[0].detail_json()["how"], "unanswered_retransmission");
    assert!((drops[0].detail_json()["gap_s"].as_f64().unwrap() - 352.0).abs() < 0.01);
    let est = drops[1].detail_json()["inferred_idle_timeout_s"]
        .as_f64()
        .unwrap();
    assert!((est - 352.0).abs() / 352.0 < 0.01, "estimate {est}");
    assert_eq!(drops[1].detail_json()["inferred_from_flows"], 3);
}

/// A flow older than the detector (an agent restart, a long-lived pooled connection) or
/// one the table evicted shows up mid-stream. If its peer answers it is healthy, whatever
/// the uptime: adopted silently, and counted as an abstention.
#[test]
fn midstream_flow_that_is_answered_is_adopted_silently() {
    let mut h = Harness::new();
    h.advance(Duration::from_secs(31));
    let mut conv = Conversation::v4(443);
    let mut events = h.run(&conv.client(&sealed(APPDATA, 100)));
    events.extend(h.run(&conv.server(&sealed(APPDATA, 300))));
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(h.counter(Counter::MidstreamAdopted), 1);
    assert_eq!(
        h.counter(Counter::FlowsCreated),
        1,
        "confirmed once answered"
    );
    // Adopted: later idle gaps are judged as for any flow (this one survives).
    h.advance(Duration::from_secs(40));
    events.extend(h.run(&conv.client(&sealed(APPDATA, 100))));
    events.extend(h.run(&conv.server(&sealed(APPDATA, 100))));
    assert_eq!(kinds(&events), [(EventKind::IdleSurvived, Side::Server)]);
    assert!(diagnose_idle(&events, IDLE).is_empty());
}

/// Field case 5 seen from a detector that never saw the flow's start: the side that
/// resumes retransmits into silence. That is failure evidence; the gap is unknown.
#[test]
fn midstream_flow_retransmitting_into_silence_is_a_drop_after_uptime_only() {
    let mut h = Harness::new();
    let mut early = Conversation::v4(443);
    let first = early.client(&sealed(APPDATA, 100));
    let mut events = h.run(&first);
    for _ in 0..3 {
        h.advance(Duration::from_millis(300));
        events.extend(h.run(&first));
    }
    assert!(
        events.is_empty(),
        "just started: nothing to say: {events:?}"
    );

    h.advance(Duration::from_secs(31));
    let mut late = Conversation::new(
        ("10.1.0.9".parse().unwrap(), 50_000),
        ("10.2.0.1".parse().unwrap(), 443),
    );
    let resume = late.client(&sealed(APPDATA, 100));
    assert!(h.run(&resume).is_empty(), "one packet is no evidence");
    h.advance(Duration::from_millis(200));
    assert!(
        h.run(&resume).is_empty(),
        "one retransmission can be a tail-loss probe"
    );
    h.advance(Duration::from_millis(400));
    let events = h.run(&resume);
    assert_eq!(kinds(&events), [(EventKind::IdleRetransmit, Side::Client)]);
    assert!(events[0].midstream);
    let d = diagnose_idle(&events, IDLE);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::IdleTimeoutDrop);
    assert_eq!(
        d[0].detail_json()["how"],
        "midstream_unanswered_retransmission"
    );
    assert!(
        d[0].detail_json().get("gap_s").is_none(),
        "the gap is unknown"
    );
}

/// One-sided traffic (a scan, spoofed segments) answered by the host's RST: nothing was
/// seen from both sides, so nothing is judged.
#[test]
fn unconfirmed_flow_answered_by_rst_is_no_diagnosis() {
    let mut h = Harness::new();
    h.advance(Duration::from_secs(31));
    let mut conv = Conversation::v4(443);
    let mut events = h.run(&conv.client(&[0x41]));
    events.extend(h.run(&conv.server_flags(RST)));
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(h.counter(Counter::UnconfirmedReset), 1);
    assert_eq!(h.counter(Counter::FlowsCreated), 0);
}

/// A packet lost on a healthy path after an idle gap: one retransmission (the tail-loss
/// probe), then the answer. The flow survived; nothing is diagnosed.
#[test]
fn one_retransmission_then_an_answer_is_no_drop() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    established(&mut h, &mut conv);
    h.advance(Duration::from_secs(61));
    let resume = conv.client(&sealed(APPDATA, 80));
    let mut events = h.run(&resume);
    h.advance(Duration::from_millis(200));
    events.extend(h.run(&resume));
    events.extend(h.run(&conv.server(&sealed(APPDATA, 80))));
    assert_eq!(kinds(&events), [(EventKind::IdleSurvived, Side::Server)]);
    assert!(diagnose_idle(&events, IDLE).is_empty());
}

/// A resumption after an idle gap answered by a RST: the peer or the path forgot the flow.
#[test]
fn resumption_answered_by_rst_is_a_drop() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    established(&mut h, &mut conv);
    h.advance(Duration::from_secs(61));
    let mut events = h.run(&conv.client(&sealed(APPDATA, 80)));
    events.extend(h.run(&conv.server_flags(ACK | RST)));
    assert_eq!(kinds(&events), [(EventKind::IdleRstAnswer, Side::Server)]);
    let d = diagnose_idle(&events, IDLE);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, Kind::IdleTimeoutDrop);
    assert_eq!(d[0].detail_json()["how"], "rst_answer");
    assert_eq!(d[0].detail_json()["sender"], "server");
    assert_eq!(d[0].detail_json()["gap_s"], 61.001);
}

/// Spoofed one-byte segments from many sources: each is a flow of its own, seen from one
/// side. They never diagnose, and they churn the unconfirmed table only: the confirmed
/// flows of a table far smaller than the flood all stay.
#[test]
fn one_sided_flood_cannot_evict_confirmed_flows() {
    const TABLE: u32 = 64;
    let mut h = Harness::with(Options {
        flow_table_size: TABLE,
        ..Options::default()
    });
    let mut real: Vec<Conversation> = (0..8)
        .map(|i| {
            Conversation::new(
                ("10.1.0.1".parse().unwrap(), 41_000 + i),
                ("10.2.0.1".parse().unwrap(), 443),
            )
        })
        .collect();
    for conv in &mut real {
        assert!(established(&mut h, conv).is_empty());
    }
    h.advance(Duration::from_secs(31));
    let mut events = Vec::new();
    for i in 0..10 * TABLE {
        let src: std::net::IpAddr = format!("198.18.{}.{}", i / 250, 1 + i % 250)
            .parse()
            .unwrap();
        let mut spoof =
            Conversation::new((src, 1024 + i as u16), ("10.2.0.1".parse().unwrap(), 443));
        events.extend(h.run(&spoof.client(&[0x41])));
    }
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(
        h.counter(Counter::UnconfirmedCreated),
        8 + 10 * TABLE as u64
    );
    assert_eq!(h.counter(Counter::FlowsCreated), 8);
    // Every real flow is still known: closing after idle is still diagnosed with its gap.
    for conv in &mut real {
        let state = h.flow(conv.client_addr(), conv.server_addr());
        assert_ne!(state.flags & flow_flags::SYNACK_SEEN, 0);
    }
    let events = h.run(&real[0].server(&sealed(ALERT, 26)));
    assert_eq!(kinds(&events), [(EventKind::EncryptedAlert, Side::Server)]);
    assert!(events[0].gap_ns >= 31_000_000_000);
}
