//! The kernel's TLS record walker keeping its place in a stream, through
//! BPF_PROG_TEST_RUN: retransmission, reordering (body segments, header segments, bulk
//! transfer reordered across CPUs), mid-stream pickup, bytes that went by unseen, and gaps
//! bridged by record lengths only where the header chain proves them.

use detector_common::{
    Counter, EventKind, Side,
    tls::{
        alert::{FATAL, HANDSHAKE_FAILURE},
        content_type::{ALERT, APPLICATION_DATA as APPDATA, HANDSHAKE},
        extension::SUPPORTED_VERSIONS,
        version::TLS1_3,
    },
};
use detector_user::kernel::event::KernelEvent;
use tests::{
    frames::{self, ACK, Conversation, FIN, Hello, RST, record, record_header, versions_ext},
    harness::{Harness, MAX_LINEAR_FRAME},
    sessions::{sealed, tls12_session},
};

#[test]
fn retransmissions_change_nothing() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let syn_ack = conv.syn_ack();
    let hello = conv.client(&frames::client_hello("a.example"));
    let answer = conv.server(&frames::alert(FATAL, HANDSHAKE_FAILURE));
    let events = h.run_all(&[
        syn_ack,
        hello.clone(),
        hello.clone(),
        answer.clone(),
        answer,
        hello,
    ]);
    assert_eq!(events.len(), 2, "one alert, one abort: {events:?}");
    let flow = h.flow(conv.client_addr(), conv.server_addr());
    assert_eq!(flow.tls.history_len, 2, "no letter twice");
}

#[test]
fn reordered_body_segments_keep_sync() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    // A 3000-byte record in three segments, then an encrypted alert in its own segment;
    // the record's middle segment arrives last.
    let mut segs = conv.server_segments(&sealed(APPDATA, 3000), &[1000, 1000]);
    let alert = conv.server(&sealed(ALERT, 26));
    segs.swap(1, 2);
    f.extend(segs);
    f.push(alert);
    let events = h.run_all(&f);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::EncryptedAlert);
    assert_eq!(events[0].sender, Side::Server);
    assert_eq!(events[0].record_len, 26);
    assert_eq!(h.counter(Counter::TlsSyncLost), 0);
}

#[test]
fn reordered_header_segment_loses_sync_instead_of_guessing() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    // Record A ends inside segment 2, where record B (an encrypted alert) starts; segment
    // 2 arrives before segment 1, so B's header goes by before the walker knows where it is.
    let mut data = sealed(APPDATA, 1600);
    data.extend(sealed(ALERT, 26));
    let mut segs = conv.server_segments(&data, &[1000]);
    segs.swap(0, 1);
    f.extend(segs);
    let events = h.run_all(&f);
    assert!(events.is_empty(), "nothing may be guessed: {events:?}");
    assert_eq!(h.counter(Counter::TlsSyncLost), 1);
    assert_eq!(
        h.counter(Counter::SyncLostPassedUnread),
        1,
        "why it was lost"
    );
}

#[test]
fn mid_stream_pickup_resyncs_only_on_evidence() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    // No handshake seen. Ciphertext that happens to start like a header is not enough...
    let mut noise = record_header(APPDATA, 256);
    noise.extend(vec![0x5a; 700]);
    assert!(h.run(&conv.server(&noise)).is_empty());
    assert_eq!(h.counter(Counter::TlsResynced), 0);
    // ...two whole records filling a segment exactly are.
    let mut two = sealed(APPDATA, 100);
    two.extend(sealed(APPDATA, 50));
    assert!(h.run(&conv.server(&two)).is_empty());
    assert_eq!(h.counter(Counter::TlsResynced), 1);
    let events = h.run(&conv.server(&sealed(ALERT, 26)));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::EncryptedAlert);
    assert!(events[0].midstream_tls);
}

/// Records counted by the walker for the `tls12_session` alone.
fn session_records() -> u64 {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    h.run_all(&tls12_session(
        &mut conv,
        &Hello::client("a"),
        &Hello::server(),
    ));
    h.counter(Counter::TlsRecords)
}

/// A TLS 1.2 session, then the server's bulk data: one record that sets the size the
/// read-ahead expects (1,000 bytes), records of `lens` and an encrypted alert, cut into
/// segments of `sizes` and delivered in `order`. Returns the harness and the events.
fn reordered(lens: &[usize], sizes: &[usize], order: &[usize]) -> (Harness, Vec<KernelEvent>) {
    reordered_typed(lens, &[], sizes, order)
}

/// [`reordered`] where the records at the indices in `types` are of the type given there.
fn reordered_typed(
    lens: &[usize],
    types: &[(usize, u8)],
    sizes: &[usize],
    order: &[usize],
) -> (Harness, Vec<KernelEvent>) {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    f.push(conv.server(&sealed(APPDATA, 1_000)));
    let mut data = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        let typ = types
            .iter()
            .find(|(at, _)| *at == i)
            .map_or(APPDATA, |t| t.1);
        data.extend(sealed(typ, len));
    }
    data.extend(sealed(ALERT, 26));
    let segs = conv.server_segments(&data, sizes);
    assert_eq!(segs.len(), order.len());
    f.extend(order.iter().map(|&i| segs[i].clone()));
    let events = h.run_all(&f);
    (h, events)
}

/// Twelve 1,000-byte records, reordered.
fn reordered_bulk(sizes: &[usize], order: &[usize]) -> (Harness, Vec<KernelEvent>) {
    reordered(&[1_000; 12], sizes, order)
}

/// What the reordering cases must end with: no place lost, one read-ahead taken, every
/// header counted once (the session's, the size-setting record, `records` more and the
/// alert), the alert reported.
fn assert_bridged(h: &Harness, events: &[KernelEvent], records: u64) {
    assert_eq!(h.counter(Counter::TlsSyncLost), 0);
    assert_eq!(h.counter(Counter::TlsReadAhead), 1);
    assert_eq!(
        h.counter(Counter::TlsRecords),
        session_records() + 1 + records + 1
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::EncryptedAlert);
}

/// Bulk transfer reordered across CPUs (a veth's per-CPU backlogs, or two CPUs sending):
/// a later segment arrives before the one holding the header it continues from. Its
/// headers are read ahead where one-size records put them, and taken when the walker's
/// own count of lengths gets there.
#[test]
fn reordered_bulk_records_keep_sync_by_reading_ahead() {
    // Headers at 0, 1005, 2010, ...: segment 1 holds 3015..5025, segment 2 6030..8040.
    let (h, events) = reordered_bulk(&[3_000, 3_000, 3_000, 3_000], &[0, 2, 1, 3, 4]);
    assert_bridged(&h, &events, 12);
}

/// The same when both the hole and the early block are super-packets split into MTU-sized
/// segments (as replay and native XDP see them): the chain read ahead goes on from segment
/// to segment, through a header cut by a segment end, and a cursor that lands in the part
/// of the hole still to come waits for it.
#[test]
fn reordered_super_packet_split_into_segments_keeps_sync() {
    // Headers at 0, 1005, ...: the segment ending at 7037 cuts the header at 7035. The
    // hole (3000..6000, two segments) is filled after the four of the early block.
    let (h, events) = reordered_bulk(
        &[3_000, 1_500, 1_500, 1_037, 700, 700, 563, 3_000],
        &[0, 3, 4, 5, 6, 1, 2, 7, 8],
    );
    assert_bridged(&h, &events, 12);
}

/// The early block ends in a header its end cuts, and the hole fills before the rest
/// comes (a swap of two super-packets, the second ending two bytes into a header: seen
/// live in the soak). Taking the chain leaves the cursor on that header with its first
/// bytes in hand: the walker still has every byte it needs, and must not count the cut
/// header's start as bytes that went by unread.
#[test]
fn an_early_block_ending_in_a_cut_header_keeps_sync_when_the_hole_fills_first() {
    // Headers at 0, 1005, ...: [0, 3000) leaves the cursor at 3015; [6000, 7037) comes
    // early, with the header at 6030 whole and the one at 7035 cut after two bytes; then
    // the hole [3000, 6000), then the rest.
    let (h, events) = reordered_bulk(&[3_000, 3_000, 1_037, 3_000, 2_054], &[0, 2, 1, 3, 4]);
    assert_bridged(&h, &events, 12);
}

/// A hole of two segments filled out of order: the block past it comes first, then the
/// hole's second segment, then its first (seen on a router capture: two super-packets
/// overtaken, the later of them arriving first). Headers at 0, 1,005, ... 11,055, the
/// alert at 12,060; [9000, 12000) starts the chain at 9,045, [6000, 9000)'s headers end
/// exactly there and go in front of it, and when [3000, 6000) brings the cursor to 6,030
/// the walker takes the whole chain.
#[test]
fn a_hole_of_two_segments_filled_last_first_keeps_sync() {
    let (h, events) = reordered_bulk(&[3_000, 3_000, 3_000, 3_000, 91], &[0, 3, 2, 1, 4]);
    assert_bridged(&h, &events, 12);
}

/// The same when the hole's pieces are MTU-sized segments (as replay and native XDP see a
/// super-packet): [6000, 7000) and [7000, 8000) each hold one header whose length does not
/// reach the chain at 9,045, and go by unread; the hole then ends at 6,000. [8000, 9000)'s
/// header ends at the chain and joins it. When [3000, 6000) brings the cursor to 6,030,
/// in bytes gone by, the chain stands exactly two one-size records on, and the walker
/// crosses to it by length, counted.
#[test]
fn a_hole_split_into_segments_filled_last_first_is_crossed_by_length() {
    let (h, events) = reordered_bulk(
        &[3_000, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000, 3_000, 91],
        &[0, 7, 4, 5, 6, 1, 2, 3, 8],
    );
    assert_eq!(h.counter(Counter::TlsSyncLost), 0, "{events:?}");
    assert_eq!(h.counter(Counter::TlsBridgedByLength), 1);
    assert_eq!(h.counter(Counter::TlsReadAhead), 0);
    // Every header but the two crossed by length is counted, once.
    assert_eq!(
        h.counter(Counter::TlsRecords),
        session_records() + 1 + 12 - 2 + 1
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::EncryptedAlert);
}

/// The same where the hole's pieces have no header where one-size records put one
/// (record 5, from 5,025, is 1,300 bytes and record 6 700, which brings the headers back
/// in step at 7,035): nothing joins the chain, the hole keeps its end, and the walker,
/// whose count lands at 6,330 in bytes that went by, crosses nothing and reads nothing
/// past them.
#[test]
fn a_segment_in_a_hole_joins_the_chain_only_where_lengths_put_headers() {
    let mut lens = [1_000; 12];
    lens[5] = 1_300;
    lens[6] = 700;
    let (h, events) = reordered(&lens, &[3_000, 3_000, 3_000, 3_000, 91], &[0, 3, 2, 1, 4]);
    assert_eq!(h.counter(Counter::TlsReadAhead), 0, "{events:?}");
    assert_eq!(h.counter(Counter::TlsBridgedByLength), 0);
    assert!(events.is_empty(), "nothing read past the gap: {events:?}");
}

/// The same reordering where the headers are not where one-size records would put them:
/// nothing was read ahead there, so the walker loses its place rather than guess.
#[test]
fn reordered_records_of_other_sizes_still_lose_sync() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    f.push(conv.server(&sealed(APPDATA, 1_000)));
    let mut data = Vec::new();
    for len in [1_000, 1_000, 1_000, 700, 1_000, 1_000, 1_000, 1_000, 1_000] {
        data.extend(sealed(APPDATA, len));
    }
    let mut segs = conv.server_segments(&data, &[3_000, 3_000]);
    segs.swap(1, 2);
    f.extend(segs);
    assert!(h.run_all(&f).is_empty());
    assert_eq!(h.counter(Counter::TlsSyncLost), 1);
    assert_eq!(
        h.counter(Counter::SyncLostPassedUnread),
        1,
        "why it was lost"
    );
}

/// A handshake's end judged on a capture that lost packets: the client's Finished and
/// first data never reached the detector, and its FIN (which follows them) would look like
/// a handshake cut short. The FIN's sequence number shows bytes went by unseen: abstain.
#[test]
fn an_end_after_unseen_bytes_is_not_judged() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let client = Hello::client("a").with(SUPPORTED_VERSIONS, versions_ext(&[TLS1_3]));
    let server = Hello::server().with(SUPPORTED_VERSIONS, TLS1_3.to_be_bytes().to_vec());
    let mut flight = record(HANDSHAKE, &server.server_hello());
    flight.extend(sealed(APPDATA, 900));
    let f = vec![
        conv.syn_ack(),
        conv.client(&record(HANDSHAKE, &client.client_hello())),
        conv.server(&flight),
    ];
    assert!(h.run_all(&f).is_empty());
    // Lost on the way to the detector: the client's Finished and request.
    let _unseen = conv.client(&sealed(APPDATA, 53));
    let events = h.run(&conv.client_flags(ACK | FIN));
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(h.counter(Counter::UnseenBytes), 1);

    // The same from the other side: the server's answer went unseen, and the client's
    // RST acknowledges it.
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let f = vec![conv.syn_ack(), conv.client(&frames::client_hello("a"))];
    assert!(h.run_all(&f).is_empty());
    let _unseen = conv.server(&record(HANDSHAKE, &Hello::server().server_hello()));
    let events = h.run(&conv.client_flags(ACK | RST));
    assert!(
        events.is_empty(),
        "no ServerHello seen is not no ServerHello: {events:?}"
    );
    assert_eq!(h.counter(Counter::UnseenBytes), 1);
}

/// A bulk stream whose segment `[3000, 6000)` never reaches the walker, then more than the
/// walker waits for (1 MiB), ending with an encrypted alert; the records are one size,
/// except `odd` (its index) when given.
fn bulk_with_unseen_segment(odd: Option<usize>) -> (Harness, Vec<KernelEvent>) {
    const LEN: usize = 1_000;
    const RECORDS: usize = 1_200;
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    f.push(conv.server(&sealed(APPDATA, LEN)));
    let mut data = Vec::new();
    for i in 0..RECORDS {
        data.extend(sealed(APPDATA, if odd == Some(i) { 700 } else { LEN }));
    }
    data.extend(sealed(ALERT, 26));
    let segs = conv.server_segments(&data, &vec![3_000; data.len() / 3_000]);
    f.extend(
        segs.iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, s)| s.clone()),
    );
    let events = h.run_all(&f);
    (h, events)
}

/// Bytes the walker waited for went by unread (or never came): once the stream is far
/// past, the next header where one-size records put it, with a chain to the segment's end,
/// gives the walker its place back.
#[test]
fn a_walker_stranded_in_a_bulk_stream_finds_its_place_by_record_lengths() {
    let (h, events) = bulk_with_unseen_segment(None);
    assert_eq!(h.counter(Counter::TlsSyncLost), 0);
    assert_eq!(h.counter(Counter::TlsBridgedByLength), 1);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::EncryptedAlert);
}

/// The same with one record of another size among the unseen ones: every header after
/// it moved, the lengths refute the bridge, and the walker loses its place.
#[test]
fn records_of_another_size_refute_the_bridge() {
    let (h, _) = bulk_with_unseen_segment(Some(4));
    assert_eq!(h.counter(Counter::TlsBridgedByLength), 0);
    assert_eq!(h.counter(Counter::TlsSyncLost), 1);
    assert_eq!(h.counter(Counter::SyncLostGapTooLong), 1, "why it was lost");
}

/// Sixteen one-size records and an encrypted alert in 3,000-byte segments, of which the
/// second and the fourth arrive late: two holes open at once, as when two segments of a
/// bulk transfer are overtaken (seen live on a router). `odd` makes one record in the
/// second hole another size.
fn two_holes(odd: bool) -> (Harness, Vec<KernelEvent>) {
    let mut lens = [1_000; 16];
    if odd {
        // Record 9 starts at 9,045, inside the second hole [9000, 12000).
        lens[9] = 700;
    }
    reordered(&lens, &[3_000; 5], &[0, 2, 4, 1, 3, 5])
}

/// The read-ahead crosses the second hole by record lengths, where the headers of the
/// segment past it stand exactly where one-size records put them: when the first hole
/// fills, the walker takes the whole chain and every header is counted once.
#[test]
fn two_holes_at_once_keep_sync_by_reading_ahead_over_both() {
    let (h, events) = two_holes(false);
    assert_eq!(h.counter(Counter::TlsSyncLost), 0);
    assert_eq!(h.counter(Counter::TlsReadAhead), 1);
    assert_eq!(
        h.counter(Counter::TlsRecords),
        session_records() + 1 + 16 + 1
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::EncryptedAlert);
}

/// Two holes at once where the segment past the second holds no header at all (the tail
/// of a record whose header is in the hole: seen live on a router, a 7,788-byte segment
/// overtaking the 65,160-byte one before it). Headers at 0, 1,005, ... 12,060 (the alert);
/// [6000, 9000) and [12000, 12060) come before the holes [3000, 6000) and [9000, 12000).
/// The chain is carried over the second hole by length; the header where it ends, read
/// when the walker gets there, bears the lengths out.
#[test]
fn two_holes_the_second_followed_by_record_body_only_keep_sync() {
    let (h, events) = reordered_bulk(&[3_000, 3_000, 3_000, 3_000, 60, 31], &[0, 2, 4, 1, 3, 5]);
    assert_bridged(&h, &events, 12);
}

/// The same where a record in the second hole is of another size: the header where the
/// lengths end the chain is not one, and the walker loses its place there, counted.
#[test]
fn record_body_past_a_second_hole_carries_no_wrong_length() {
    let mut lens = [1_000; 12];
    // Record 10 (at 10,050, in the second hole [9000, 11000)) is 300 bytes shorter: the
    // lengths put a header at 11,055, past [11000, 11055), where record 11 has ciphertext.
    lens[10] = 700;
    let (h, events) = reordered(
        &lens,
        &[3_000, 3_000, 3_000, 2_000, 55, 736],
        &[0, 2, 4, 1, 3, 5],
    );
    assert_eq!(h.counter(Counter::TlsSyncLost), 1, "{events:?}");
    // Lost where the lengths put a header and ciphertext stands, not on a guess earlier.
    assert_eq!(
        h.counter(Counter::SyncLostImplausible),
        1,
        "why it was lost"
    );
    assert!(
        events.is_empty(),
        "nothing read past a wrong length: {events:?}"
    );
}

/// The same with a record of another size in the second hole: the headers past it are not
/// where the lengths put them, nothing is crossed, and the walker loses its place.
#[test]
fn a_record_of_another_size_in_the_second_hole_is_not_crossed() {
    let (h, events) = two_holes(true);
    assert_eq!(h.counter(Counter::TlsSyncLost), 1, "{events:?}");
    assert_eq!(
        h.counter(Counter::SyncLostPassedUnread),
        1,
        "why it was lost"
    );
}

/// Two holes at once where the segment after the first ends inside a header (seen as a
/// GSO super-packet split at the MTU): headers at 0, 1,005, ... 7,035; the segment
/// [6000, 7037) cuts the one at 7,035 after two bytes, [7037, 9000) and [3000, 6000) come
/// after [9000, 12000). The read-ahead crosses the second hole from the cut header's start
/// as from any header's, where the segment past it bears the lengths out.
#[test]
fn two_holes_after_a_cut_header_keep_sync_by_reading_ahead_over_both() {
    let (h, events) = reordered(
        &[1_000; 16],
        &[3_000, 3_000, 1_037, 1_963, 3_000, 3_000],
        &[0, 2, 4, 1, 3, 5, 6],
    );
    assert_bridged(&h, &events, 16);
}

/// The same where the cut header's first bytes are not those of an application-data
/// record: the chain is not carried over the second hole, and the walker loses its place.
#[test]
fn a_cut_header_of_another_type_is_not_carried_over_a_second_hole() {
    let mut lens = [1_000; 16];
    // The record at 7,035 (cut after two bytes) becomes a 26-byte alert, so every later
    // header moves too.
    lens[7] = 26;
    let (h, events) = reordered_typed(
        &lens,
        &[(7, ALERT)],
        &[3_000, 3_000, 1_037, 1_963, 3_000, 3_000],
        &[0, 2, 4, 1, 3, 5, 6],
    );
    assert_eq!(h.counter(Counter::TlsSyncLost), 1, "{events:?}");
}

/// A record header that ends on the last byte of the largest frame a test run hands the
/// program whole is read: the harness's frame limit is where the program's view ends.
#[test]
fn a_header_at_the_end_of_the_largest_test_frame_is_read() {
    let mut h = Harness::new();
    let mut conv = Conversation::v4(443);
    let mut f = tls12_session(&mut conv, &Hello::client("a"), &Hello::server());
    // Ethernet, IPv4 and TCP headers: 14 + 20 + 20.
    let payload = MAX_LINEAR_FRAME - 54;
    let mut data = sealed(APPDATA, payload - 2 * 5 - 26);
    data.extend(sealed(ALERT, 26));
    assert_eq!(data.len(), payload);
    f.push(conv.server(&data));
    assert_eq!(f.last().unwrap().build().len(), MAX_LINEAR_FRAME);
    let events = h.run_all(&f);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::EncryptedAlert);
}
