//! The record walk's fast path, through BPF_PROG_TEST_RUN: application-data record headers
//! wholly inside an in-order packet of a side in its application-data phase are stepped
//! over without the slow path (`kernel_tls_fast_path_packets`), leaving the walker exactly
//! where the slow path would; everything else (another record type, a header cut by the
//! segment's end, an implausible length, reordering, a FIN, an idle gap) still takes the
//! slow path (`kernel_slow_path_packets`) with the same outcome as before.

use detector_common::{
    Counter, EventKind, FlowState, MAX_TLS_RECORD, OWNER_STALE, Side, dir_flags, owner_stamp,
    tls::content_type::{ALERT, APPLICATION_DATA as APPDATA, CHANGE_CIPHER_SPEC, HANDSHAKE},
};
use detector_user::kernel::event::KernelEvent;
use tests::{
    frames::{Conversation, FIN, Frame, Hello, record, record_header},
    harness::Harness,
    sessions::{sealed, tls12_session},
};

/// A TLS 1.2 session with application data both ways: the bulk phase.
fn bulk() -> (Harness, Conversation) {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let f = tls12_session(&mut conv, &Hello::client("bulk.example"), &Hello::server());
    let events = h.run_all(&f);
    assert!(events.is_empty(), "a clean handshake: {events:?}");
    (h, conv)
}

/// What one frame did: which path walked it, records counted, sync lost, its events.
#[derive(Debug, PartialEq, Eq)]
struct Walked {
    fast: u64,
    slow: u64,
    records: u64,
    lost: u64,
}

fn counts(h: &Harness) -> [u64; 4] {
    [
        Counter::TlsFastPathPackets,
        Counter::SlowPathPackets,
        Counter::TlsRecords,
        Counter::TlsSyncLost,
    ]
    .map(|c| h.counter(c))
}

fn run(h: &mut Harness, f: &Frame) -> (Walked, Vec<KernelEvent>) {
    let before = counts(h);
    let events = h.run(f);
    let after = counts(h);
    let d = |i: usize| after[i] - before[i];
    let walked = Walked {
        fast: d(0),
        slow: d(1),
        records: d(2),
        lost: d(3),
    };
    (walked, events)
}

fn fast(records: u64) -> Walked {
    Walked {
        fast: 1,
        slow: 0,
        records,
        lost: 0,
    }
}

fn slow(records: u64) -> Walked {
    Walked {
        fast: 0,
        slow: 1,
        records,
        lost: 0,
    }
}

const NEITHER: Walked = Walked {
    fast: 0,
    slow: 0,
    records: 0,
    lost: 0,
};

fn server(h: &Harness, conv: &Conversation) -> detector_common::Direction {
    let flow: FlowState = h.flow(conv.client_addr(), conv.server_addr());
    flow.dir[Side::Server as usize]
}

/// Where the walker stands after a frame: cursor, record end, the last record's type and
/// length, what it has looked at, whether it is synced.
fn place(h: &Harness, conv: &Conversation) -> (u32, u32, u8, u16, u32, bool) {
    let d = server(h, conv);
    (
        d.cursor,
        d.rec_end,
        d.last_record_type,
        d.last_record_len,
        d.walked_end,
        d.flags & dir_flags::SYNCED != 0,
    )
}

fn end_of(f: &Frame) -> u32 {
    f.seq.wrapping_add(f.payload.len() as u32)
}

#[test]
fn several_application_data_records_in_one_packet() {
    let (mut h, mut conv) = bulk();
    let mut data = Vec::new();
    for len in [200, 300, 0, 100] {
        data.extend(sealed(APPDATA, len));
    }
    let f = conv.server(&data);
    let (walked, events) = run(&mut h, &f);
    assert_eq!(walked, fast(4));
    assert!(events.is_empty(), "{events:?}");
    let end = end_of(&f);
    assert_eq!(place(&h, &conv), (end, end, APPDATA, 100, end, true));

    // Five headers are stepped; a sixth sends the packet to the slow path, which walks
    // them all to the same place.
    for (n, expect) in [(5, fast(5)), (6, slow(6))] {
        let data: Vec<u8> = (0..n).flat_map(|i| sealed(APPDATA, 40 + i)).collect();
        let f = conv.server(&data);
        let (walked, events) = run(&mut h, &f);
        assert_eq!(walked, expect, "{n} records");
        assert!(events.is_empty(), "{events:?}");
        let end = end_of(&f);
        let last = 40 + n as u16 - 1;
        assert_eq!(place(&h, &conv), (end, end, APPDATA, last, end, true));
    }
}

#[test]
fn header_at_the_very_end_then_its_body() {
    let (mut h, mut conv) = bulk();
    // A record, then a whole header ending the packet: its 2000-byte body follows.
    let mut data = sealed(APPDATA, 100);
    data.extend(record_header(APPDATA, 2000));
    let f = conv.server(&data);
    let (walked, _) = run(&mut h, &f);
    assert_eq!(walked, fast(2));
    let body_end = end_of(&f).wrapping_add(2000);
    assert_eq!(
        place(&h, &conv),
        (body_end, body_end, APPDATA, 2000, end_of(&f), true)
    );
    // Body only: neither path reads anything.
    let (walked, _) = run(&mut h, &conv.server(&[0xa5; 1448]));
    assert_eq!(walked, NEITHER);
    // The body's end and a whole record: stepped again.
    let mut data = vec![0xa5; 552];
    data.extend(sealed(APPDATA, 700));
    let f = conv.server(&data);
    let (walked, _) = run(&mut h, &f);
    assert_eq!(walked, fast(1));
    let end = end_of(&f);
    assert_eq!(place(&h, &conv), (end, end, APPDATA, 700, end, true));
}

#[test]
fn header_cut_by_the_segment_end_takes_the_slow_path() {
    let (mut h, mut conv) = bulk();
    let mut data = sealed(APPDATA, 100);
    let next = sealed(APPDATA, 60);
    data.extend(&next[..3]);
    let (walked, _) = run(&mut h, &conv.server(&data));
    assert_eq!(walked, slow(1), "the cut header is kept by the slow path");
    assert_eq!(server(&h, &conv).pend_len, 3);
    // The rest of the cut header (pending bytes): the slow path again.
    let f = conv.server(&next[3..]);
    let (walked, _) = run(&mut h, &f);
    assert_eq!(walked, slow(1));
    let end = end_of(&f);
    assert_eq!(place(&h, &conv), (end, end, APPDATA, 60, end, true));
    // And the next whole header is the fast path's.
    let f = conv.server(&sealed(APPDATA, 10));
    assert_eq!(run(&mut h, &f).0, fast(1));
}

#[test]
fn header_followed_by_an_alert_takes_the_slow_path() {
    let (mut h, mut conv) = bulk();
    let mut data = sealed(APPDATA, 300);
    data.extend(sealed(ALERT, 26));
    let f = conv.server(&data);
    let (walked, events) = run(&mut h, &f);
    assert_eq!(walked, slow(2));
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::EncryptedAlert]);
    assert_eq!(events[0].record_len, 26);
    let end = end_of(&f);
    assert_eq!(place(&h, &conv), (end, end, ALERT, 26, end, true));
}

#[test]
fn lengths_at_and_past_the_limit() {
    let (mut h, mut conv) = bulk();
    let limit = MAX_TLS_RECORD as u16;
    let f = conv.server(&record_header(APPDATA, limit));
    let (walked, _) = run(&mut h, &f);
    assert_eq!(walked, fast(1), "a record of the largest length TLS allows");
    let body_end = end_of(&f).wrapping_add(MAX_TLS_RECORD);
    assert_eq!(
        place(&h, &conv),
        (body_end, body_end, APPDATA, limit, end_of(&f), true)
    );
    // Its body, then a header one byte over the limit: the slow path loses its place, as
    // it always did.
    for chunk in vec![0xa5; MAX_TLS_RECORD as usize].chunks(3000) {
        let (walked, _) = run(&mut h, &conv.server(chunk));
        assert_eq!(walked, NEITHER);
    }
    let f = conv.server(&record_header(APPDATA, limit + 1));
    let (walked, events) = run(&mut h, &f);
    assert_eq!(walked, Walked { lost: 1, ..slow(0) });
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(server(&h, &conv).flags & dir_flags::SYNCED, 0);
    // An empty application-data record is allowed (and stepped).
    let (mut h, mut conv) = bulk();
    assert_eq!(run(&mut h, &conv.server(&record(APPDATA, &[]))).0, fast(1));
}

#[test]
fn other_record_types_take_the_slow_path() {
    let (mut h, mut conv) = bulk();
    // An encrypted handshake record after application data: renegotiation.
    let (walked, events) = run(&mut h, &conv.server(&sealed(HANDSHAKE, 64)));
    assert_eq!(walked, slow(1));
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Renegotiation]);
    let (walked, _) = run(&mut h, &conv.server(&record(CHANGE_CIPHER_SPEC, &[1])));
    assert_eq!(walked, slow(1));
    // Application data behind them is stepped again.
    assert_eq!(run(&mut h, &conv.server(&sealed(APPDATA, 80))).0, fast(1));
}

#[test]
fn a_side_before_its_first_application_data_takes_the_slow_path() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a.example"), &Hello::server());
    // Up to the server's Finished: the server has sent no application data yet.
    let server_data = f.pop().expect("the server's application data");
    assert!(h.run_all(&f).is_empty());
    let (walked, _) = run(&mut h, &server_data);
    assert_eq!(walked, slow(1), "the first application data sets the phase");
    let flow = h.flow(conv.client_addr(), conv.server_addr());
    assert_eq!(
        &flow.tls.history[..flow.tls.history_len as usize],
        b"CsxknGIFifDd"
    );
    assert_eq!(run(&mut h, &conv.server(&sealed(APPDATA, 80))).0, fast(1));
}

#[test]
fn reordering_and_retransmission_take_the_slow_path() {
    let (mut h, mut conv) = bulk();
    // Records of one size, as in a bulk transfer (what the read-ahead predicts by).
    assert_eq!(run(&mut h, &conv.server(&sealed(APPDATA, 500))).0, fast(1));
    // Two more, each in its own segment; the second arrives first.
    let first = conv.server(&sealed(APPDATA, 500));
    let second = conv.server(&sealed(APPDATA, 500));
    let (walked, _) = run(&mut h, &second);
    assert_eq!(walked, slow(0), "the cursor lies before this segment");
    let (walked, _) = run(&mut h, &first);
    assert_eq!(walked, slow(2), "the slow path takes what it read ahead");
    let end = end_of(&second);
    assert_eq!(place(&h, &conv), (end, end, APPDATA, 500, end, true));
    // The same segment again: before the cursor, walked by neither.
    assert_eq!(run(&mut h, &second).0, NEITHER);
    // A segment that repeats the last 10 bytes walked, then a new record: it starts
    // before what the walker looked at, so the slow path walks it.
    let next = sealed(APPDATA, 30);
    let mut f = conv.server(&next);
    f.seq = f.seq.wrapping_sub(10);
    let mut payload = vec![0xa5; 10];
    payload.extend(&next);
    f.payload = payload;
    let (walked, _) = run(&mut h, &f);
    assert_eq!(walked, slow(1));
    let end = end_of(&f);
    assert_eq!(place(&h, &conv), (end, end, APPDATA, 30, end, true));
    assert_eq!(run(&mut h, &conv.server(&sealed(APPDATA, 30))).0, fast(1));
}

#[test]
fn fin_and_idle_gaps_take_the_slow_path() {
    let (mut h, mut conv) = bulk();
    let mut f = conv.server(&sealed(APPDATA, 19));
    f.flags |= FIN;
    let (walked, _) = run(&mut h, &f);
    assert_eq!(walked, slow(1));
    let (mut h, mut conv) = bulk();
    h.advance(std::time::Duration::from_nanos(
        detector_common::DEFAULT_IDLE_THRESHOLD_NS,
    ));
    let (walked, _) = run(&mut h, &conv.server(&sealed(APPDATA, 100)));
    assert_eq!(walked, slow(1), "a packet after an idle gap");
}

/// The next frame's program clock (the harness moves it 1 ms per frame).
fn next_frame_ns(h: &Harness) -> u64 {
    h.now_ns + 1_000_000
}

fn hold(h: &mut Harness, conv: &Conversation, owner: u32) {
    let mut flow = h.flow(conv.client_addr(), conv.server_addr());
    flow.owner = owner;
    h.set_flow(conv.client_addr(), conv.server_addr(), &flow);
}

fn owner_counts(h: &Harness) -> [u64; 3] {
    [
        Counter::FlowOwnerWaits,
        Counter::FlowOwnerBusy,
        Counter::FlowOwnerStale,
    ]
    .map(|c| h.counter(c))
}

/// One CPU at a time reads a flow (the kernel's owner.rs): on veth a direction's packets
/// are processed on two CPUs at once, which only a live host does, so the flow is put in
/// the state a walk on another CPU leaves it in.
#[test]
fn a_flow_another_cpu_reads_is_waited_for_and_a_stale_owner_taken_over() {
    let (mut h, mut conv) = bulk();
    let held_since = owner_stamp(next_frame_ns(&h));
    hold(&mut h, &conv, held_since);
    let before = place(&h, &conv);
    let f = conv.server(&sealed(APPDATA, 100));
    // Held by a walk that started just now: the fast path does not step it; the slow
    // path waits for the owner, who (here) never finishes, so the packet goes unread and
    // counted, and the flow stays the other CPU's.
    let (walked, events) = run(&mut h, &f);
    assert_eq!(walked, slow(0));
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(owner_counts(&h), [1, 1, 0]);
    assert_eq!(place(&h, &conv), before, "an unread packet moves nothing");
    assert_eq!(
        h.flow(conv.client_addr(), conv.server_addr()).owner,
        held_since
    );

    // Held since longer than any walk takes: taken over. The same bytes again (the
    // sender's retransmission) are walked, and the flow is free afterwards.
    h.advance(std::time::Duration::from_nanos(
        u64::from(OWNER_STALE) << 10,
    ));
    let (walked, events) = run(&mut h, &f);
    assert_eq!(walked, slow(1));
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(owner_counts(&h), [2, 1, 1]);
    let end = end_of(&f);
    assert_eq!(place(&h, &conv), (end, end, APPDATA, 100, end, true));
    assert_eq!(h.flow(conv.client_addr(), conv.server_addr()).owner, 0);

    // Free: the fast path takes it, steps the record and gives it back; nobody waits.
    let (walked, _) = run(&mut h, &conv.server(&sealed(APPDATA, 50)));
    assert_eq!(walked, fast(1));
    assert_eq!(owner_counts(&h), [2, 1, 1]);
    assert_eq!(h.flow(conv.client_addr(), conv.server_addr()).owner, 0);
}
