//! The TLS record walker: follows each side's byte stream by TCP sequence number, one
//! header ("item") at a time, across segment boundaries and with several records per
//! segment, and turns what it reads into handshake state and events.
//!
//! Each side keeps a cursor: the sequence number of the next item (a record header, a
//! handshake message header, a hello field). A segment that ends before the cursor holds
//! only record bodies or retransmitted bytes and costs one comparison. A header cut by a
//! segment end is kept in `pend` until the rest arrives. The walker never guesses: when
//! it cannot know where the next header is (a gap it cannot bridge, an implausible
//! header, more items in one packet than it walks) it stops reading that side, counted,
//! until a segment proves a boundary again (see [`resync`]).

use detector_common::{
    Counter, Direction, EventKind, FlowState, MAX_TLS_RECORD, PayloadClass, SNI_MAX, Side, abort,
    dir_flags, flow_flags, item,
    tls::{
        alert, content_type,
        content_type::{ALERT, APPLICATION_DATA, CHANGE_CIPHER_SPEC, HANDSHAKE, HEARTBEAT},
        extension as ext, handshake as hs, version,
    },
    tls_flags,
};

use aya_ebpf::{cty::c_void, helpers::generated::bpf_loop};

use crate::{
    emit::{Cx, Extra, Found},
    maps::{counters, sni},
    packet::Packet,
};

/// Items read per packet. A ClientHello with a dozen extensions needs about 20; a GSO
/// super-packet on egress holds at most a few 16 KB records. Past it, the side loses sync.
const MAX_ITEMS: usize = 32;
/// How far a side's data may run ahead of its cursor (reordering, loss) before the walker
/// stops waiting for the missing bytes.
const MAX_GAP: u32 = 1 << 20;
/// Records checked when looking for evidence of a boundary.
const RESYNC_RECORDS: usize = 4;
/// Headers read ahead of a gap: a 64 KB super-packet of 16 KB records holds five.
const AHEAD_RECORDS: usize = 6;

/// `a` comes before `b` in sequence space (modulo 2^32).
#[inline(always)]
pub fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline(always)]
fn item_len(it: u8) -> u32 {
    match it {
        item::RECORD => 5,
        item::HANDSHAKE | item::EXTENSION => 4,
        item::HELLO_VERSION
        | item::HELLO_CIPHER_SUITES
        | item::HELLO_EXTENSIONS
        | item::ALERT_BODY => 2,
        _ => 1,
    }
}

/// A plausible record header: known type, version 3.0 to 1.3, a length TLS allows.
#[inline(always)]
pub fn plausible(typ: u8, major: u8, minor: u8, len: u32) -> bool {
    (CHANGE_CIPHER_SPEC..=HEARTBEAT).contains(&typ)
        && major == version::MAJOR
        && minor <= version::TLS1_3 as u8
        && len <= MAX_TLS_RECORD
        && (len > 0 || typ == APPLICATION_DATA)
}

/// The current segment of one side's stream.
struct Seg {
    start: u32,
    end: u32,
    payload_off: usize,
}

impl Seg {
    /// Reads `n` (1..=8) bytes at sequence number `at` as a big-endian number, if the
    /// segment holds them all.
    #[inline(always)]
    fn read<P: Packet>(&self, p: &P, at: u32, n: u32) -> Option<u64> {
        if before(at, self.start) || before(self.end, at.wrapping_add(n)) {
            return None;
        }
        read_be(
            p,
            self.payload_off + at.wrapping_sub(self.start) as usize,
            n,
        )
    }
}

#[inline(always)]
fn read_be<P: Packet>(p: &P, off: usize, n: u32) -> Option<u64> {
    let mut buf = [0u8; 8];
    if !p.load_into(off, n as usize, &mut buf) {
        return None;
    }
    Some(u64::from_be_bytes(buf) >> (8 * (8 - n.min(8))))
}

/// Whether a packet ending at `seg_end` needs the walker: a synced side whose next item
/// lies in it, or a side that may be TLS and is not synced (a chance to resync).
#[inline(always)]
pub fn wants_walk(flow: &FlowState, side: usize, seg_end: u32) -> bool {
    let d = &flow.dir[side];
    let synced = d.flags & dir_flags::SYNCED != 0;
    if synced {
        return before(d.cursor, seg_end);
    }
    // Plain HTTP and other non-TLS streams are never walked.
    let class = d.first_class;
    class == PayloadClass::NotAtStart as u8
        || class == PayloadClass::ClientHello as u8
        || class == PayloadClass::TlsRecord as u8
}

/// Walks the records in the sender's segment.
///
/// Stack: BPF allows 512 bytes for the deepest call chain, here the program, the bpf_loop
/// callback and `emit`. So this is inlined (a frame of its own would sit in that chain)
/// and `resync`, which runs before the loop, is not (its frame is gone by then).
#[inline(always)]
pub fn walk<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, found: &mut Found) {
    let side = cx.sender as usize;
    let seg = Seg {
        start: cx.seg.seq,
        end: cx.seg.end(),
        payload_off: cx.seg.payload_off as usize,
    };
    if flow.dir[side].flags & dir_flags::SYNCED == 0 && !resync(cx, flow, &seg) {
        return;
    }
    // What earlier segments brought, as far as the walker has seen them. Not the highest
    // sequence number the fast path saw: a later segment on another CPU may have raised
    // that already, and it will still be walked.
    let prior_walked = flow.dir[side].walked_end;
    if before(flow.dir[side].cursor, seg.start) {
        // The next header lies before this segment: a segment that came early may have
        // read it ahead (see `read_ahead`).
        take_read_ahead(flow, side);
    }
    if !before(flow.dir[side].cursor, seg.end) {
        // Only record bodies, or bytes walked already.
        track_hole(&mut flow.dir[side], &seg);
        return;
    }

    // One item per iteration of bpf_loop: the verifier checks the step once instead of
    // once per unrolled iteration and branch combination.
    let mut w = Walk {
        cx: cx as *const Cx<P>,
        flow: flow as *mut FlowState,
        seg,
        outcome: Outcome::Running,
        found: found as *mut Found,
    };
    // SAFETY: `walk_step::<P>` has the callback signature bpf_loop expects, and `w` lives
    // on this frame for the whole call.
    unsafe {
        bpf_loop(
            MAX_ITEMS as u32,
            walk_step::<P> as *mut c_void,
            (&mut w as *mut Walk<P>).cast(),
            0,
        );
    }
    match w.outcome {
        // More items in this packet than the walker reads: the rest went by unread.
        Outcome::Running => lose(flow, side, Loss::TooManyItems),
        // The next item lies in bytes an earlier, out-of-order packet already carried
        // (not in the hole that is still filling): unless that packet read it ahead, they
        // went by unread, so the boundary after them is unknown.
        Outcome::Done if seen_before(&flow.dir[side], prior_walked) => {
            take_read_ahead(flow, side);
            if seen_before(&flow.dir[side], prior_walked) {
                lose(flow, side, Loss::PassedUnread);
            }
        }
        Outcome::TooFar => {
            // A segment with no whole header to check says nothing: the next may.
            if bridge_by_length(cx, flow, &w.seg) == Bridge::Refuted {
                lose(flow, side, Loss::GapTooLong);
            }
        }
        Outcome::Waiting => {
            // The verifier refuses a BPF-to-BPF call that returns with a stack address in
            // R0, which a function whose result is unused may leave there (the compiler
            // drops the result): black_box keeps it, so R0 holds a plain bool.
            core::hint::black_box(read_ahead(cx, flow, &w.seg));
        }
        _ => {}
    }
    track_hole(&mut flow.dir[side], &w.seg);
}

/// Keeps the walker's view of what arrived: the highest end it has looked at, and the
/// hole below it that reordering opened (one at a time: a second hole while one fills is
/// taken as seen, so a cursor landing there loses its place rather than wait on a guess).
#[inline(always)]
fn track_hole(d: &mut Direction, seg: &Seg) {
    if !before(d.cursor, d.hole_end) {
        // The walker is past it: what it lacked no longer matters.
        d.hole_start = d.hole_end;
    }
    let open = d.hole_start != d.hole_end;
    if before(d.walked_end, seg.start) {
        if !open {
            d.hole_start = d.walked_end;
            d.hole_end = seg.start;
        }
    } else if open && !before(d.hole_start, seg.start) && before(d.hole_start, seg.end) {
        // Filled from its start, as the missing segments arrive in order.
        d.hole_start = if before(seg.end, d.hole_end) {
            seg.end
        } else {
            d.hole_end
        };
    }
    if before(d.walked_end, seg.end) {
        d.walked_end = seg.end;
    }
}

/// Whether the cursor stands in bytes an earlier segment already brought: below what the
/// walker had looked at before this segment, and not in the hole still filling.
#[inline(always)]
fn seen_before(d: &Direction, prior_walked: u32) -> bool {
    let in_hole = !before(d.cursor, d.hole_start) && before(d.cursor, d.hole_end);
    before(d.cursor, prior_walked) && !in_hole
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Running,
    /// The cursor is past this segment.
    Done,
    /// The next item starts before this segment, in bytes not seen yet (reordering).
    Waiting,
    /// The same, but the stream ran further ahead than the walker waits.
    TooFar,
    /// A header cut by the segment end is kept for the next one, or sync was lost.
    Stopped,
}

/// The walker's state across bpf_loop iterations (raw pointers: it crosses the helper).
struct Walk<'a, P: Packet> {
    cx: *const Cx<'a, P>,
    flow: *mut FlowState,
    seg: Seg,
    outcome: Outcome,
    found: *mut Found,
}

extern "C" fn walk_step<P: Packet>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `walk` passed, to a live `Walk<P>`, whose
    // pointers are valid for the duration of the loop.
    let w = unsafe { &mut *ctx.cast::<Walk<P>>() };
    let (cx, flow, found) = unsafe { (&*w.cx, &mut *w.flow, &mut *w.found) };
    w.outcome = next_item(cx, flow, &w.seg, found);
    (w.outcome != Outcome::Running) as i64
}

/// Reads and handles the item at the cursor, if this segment completes it.
#[inline(always)]
fn next_item<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, seg: &Seg, found: &mut Found) -> Outcome {
    let side = cx.sender as usize;
    let d = &mut flow.dir[side];
    let cursor = d.cursor;
    if !before(cursor, seg.end) {
        return Outcome::Done;
    }
    let need = item_len(d.item);
    // Bytes of the item that precede this segment must be the ones kept in `pend`.
    let early = if before(cursor, seg.start) {
        seg.start.wrapping_sub(cursor)
    } else {
        0
    };
    if early > d.pend_len as u32 || early >= need {
        if seg.start.wrapping_sub(cursor) > MAX_GAP {
            return Outcome::TooFar;
        }
        // Otherwise wait: the missing bytes may still arrive (reordering).
        return Outcome::Waiting;
    }
    let first = if early > 0 {
        d.pend >> (8 * (d.pend_len as u32 - early))
    } else {
        0
    };
    let at = cursor.wrapping_add(early);
    let avail = seg.end.wrapping_sub(at);
    let take = if need - early < avail {
        need - early
    } else {
        avail
    };
    let Some(v) = read_be(
        cx.p,
        seg.payload_off + at.wrapping_sub(seg.start) as usize,
        take,
    ) else {
        lose(flow, side, Loss::Unreadable);
        return Outcome::Stopped;
    };
    let value = (first << (8 * take)) | v;
    if early + take < need {
        // Cut by the segment end: keep what we have for the next segment.
        d.pend = value;
        d.pend_len = (early + take) as u8;
        return Outcome::Stopped;
    }
    d.pend_len = 0;
    if step(cx, flow, seg, value, found) {
        Outcome::Running
    } else {
        Outcome::Stopped
    }
}

/// Why the walker lost its place (logged with the loss, for whoever has to find out why).
#[derive(Clone, Copy)]
#[repr(u8)]
pub enum Loss {
    /// A record header that TLS does not allow.
    Implausible = 1,
    /// More items in one packet than the walker reads.
    TooManyItems = 2,
    /// The next header was in bytes an out-of-order segment carried before, unread.
    PassedUnread = 3,
    /// The stream ran further ahead of the cursor than the walker waits.
    GapTooLong = 4,
    /// The packet did not hold bytes its headers promised.
    Unreadable = 5,
}

#[inline(always)]
fn lose(flow: &mut FlowState, side: usize, why: Loss) {
    let d = &mut flow.dir[side];
    d.flags &= !(dir_flags::SYNCED | dir_flags::IN_HELLO);
    d.pend_len = 0;
    d.flags &= !dir_flags::AHEAD;
    d.lost_why = why as u8;
    counters::inc(Counter::TlsSyncLost);
}

/// Reordering: a segment arrived while the next header still lies in bytes before it.
/// Those bytes will come, but the headers in this segment will then have gone by. In a
/// bulk transfer records have one size, so the first header in this segment is most
/// likely a whole number of `last_record_len` records on from the cursor: read the chain
/// of application-data headers from there to the segment's end and keep it. Later early
/// segments extend the chain where it stopped (a reordered 64 KB super-packet, split into
/// MTU segments, is many of them), including a header cut by a segment end. When the
/// cursor later arrives at exactly the chain's start it takes the chain instead of losing
/// its place. The prediction only chooses which bytes to keep: they are taken only where
/// the walker's own count of lengths arrives, so nothing is guessed.
#[inline(never)]
fn read_ahead<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, seg: &Seg) -> bool {
    let side = cx.sender as usize;
    let d = &flow.dir[side];
    if d.item != item::RECORD || d.flags & dir_flags::APPDATA == 0 {
        return false;
    }
    let extending = d.flags & dir_flags::AHEAD != 0 && !before(d.ahead_at, d.cursor);
    // Where the next header starts, and its first bytes if an earlier segment cut it.
    let (start, mut header, mut have) = if extending {
        (d.ahead_next, d.ahead_pend, d.ahead_pend_len as u32)
    } else {
        let step = 5 + d.last_record_len as u32;
        let records_to_seg = seg.start.wrapping_sub(d.cursor).div_ceil(step);
        (d.cursor.wrapping_add(records_to_seg * step), 0, 0)
    };
    // The chain must go on in this very segment: its next byte is here.
    let from = start.wrapping_add(have);
    if before(from, seg.start) || !before(from, seg.end) || (have > 0 && from != seg.start) {
        return false;
    }
    let mut at = start;
    let mut records = 0u16;
    let mut last_len = 0u16;
    for _ in 0..AHEAD_RECORDS {
        let from = at.wrapping_add(have);
        if !before(from, seg.end) {
            break;
        }
        let left = seg.end.wrapping_sub(from);
        let take = if 5 - have < left { 5 - have } else { left };
        let Some(part) = seg.read(cx.p, from, take) else {
            return false;
        };
        header = (header << (8 * take)) | part;
        have += take;
        if have < 5 {
            // Cut by the segment's end: kept for the segment that brings the rest.
            break;
        }
        let len = (header & 0xffff) as u32;
        let typ = (header >> 32) as u8;
        if typ != APPLICATION_DATA
            || !plausible(typ, (header >> 24) as u8, (header >> 16) as u8, len)
        {
            return false;
        }
        records += 1;
        last_len = len as u16;
        at = at.wrapping_add(5 + len);
        header = 0;
        have = 0;
    }
    if have == 0 && before(at, seg.end) {
        // More headers in this segment than the chain reads: it does not reach the end.
        return false;
    }
    let d = &mut flow.dir[side];
    if !extending {
        d.ahead_at = start;
        d.ahead_records = 0;
        d.flags |= dir_flags::AHEAD;
    }
    d.ahead_next = at;
    d.ahead_pend = header;
    d.ahead_pend_len = have as u8;
    d.ahead_records += records;
    if records > 0 {
        d.ahead_last_len = last_len;
    }
    true
}

/// The stream ran far past a cursor that still waits: the bytes it waits for went by
/// unread (a reordering the read-ahead could not bridge, packets handled on two CPUs at
/// once). In a bulk transfer of one-size records the next header in this segment is a
/// whole number of `last_record_len` records on: if a chain of application-data headers
/// starts exactly there and runs to the segment's end, the records in between were all of
/// that size (one of any other size would shift every later header, and ciphertext passes
/// for a header chain at one given spot about once in 2^26 segments, per header), so the
/// walker goes on from there, counted. Otherwise it has lost its place.
#[inline(never)]
fn bridge_by_length<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, seg: &Seg) -> Bridge {
    let side = cx.sender as usize;
    let d = &flow.dir[side];
    if d.item != item::RECORD || d.flags & dir_flags::APPDATA == 0 {
        return Bridge::Refuted;
    }
    let step = 5 + d.last_record_len as u32;
    let records_to_seg = seg.start.wrapping_sub(d.cursor).div_ceil(step);
    let start = d.cursor.wrapping_add(records_to_seg * step);
    let mut at = start;
    let mut records = 0u32;
    for _ in 0..AHEAD_RECORDS {
        if !before(at, seg.end) {
            break;
        }
        // Fails when the header runs past the segment's end.
        let Some(h) = seg.read(cx.p, at, 5) else {
            return Bridge::NoEvidence;
        };
        let len = (h & 0xffff) as u32;
        let typ = (h >> 32) as u8;
        if typ != APPLICATION_DATA || !plausible(typ, (h >> 24) as u8, (h >> 16) as u8, len) {
            return Bridge::Refuted;
        }
        records += 1;
        at = at.wrapping_add(5 + len);
    }
    if records == 0 {
        return Bridge::NoEvidence;
    }
    if before(at, seg.end) {
        // More headers than the chain reads: it does not reach the end.
        return Bridge::Refuted;
    }
    counters::inc(Counter::TlsBridgedByLength);
    counters::add(Counter::TlsRecords, records as u64);
    let d = &mut flow.dir[side];
    d.cursor = at;
    d.rec_end = at;
    d.pend_len = 0;
    d.flags &= !dir_flags::AHEAD;
    d.last_record_type = APPLICATION_DATA;
    Bridge::Bridged
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Bridge {
    Bridged,
    /// No whole header where one-size records put one in this segment.
    NoEvidence,
    /// The bytes there are no such header: the records were not all of one size.
    Refuted,
}

/// Takes the chain `read_ahead` kept, if the cursor stands exactly where it starts.
#[inline(always)]
fn take_read_ahead(flow: &mut FlowState, side: usize) {
    let d = &mut flow.dir[side];
    if d.flags & dir_flags::AHEAD == 0 || d.item != item::RECORD || d.cursor != d.ahead_at {
        return;
    }
    d.flags &= !dir_flags::AHEAD;
    counters::inc(Counter::TlsReadAhead);
    counters::add(Counter::TlsRecords, d.ahead_records as u64);
    d.cursor = d.ahead_next;
    // A header the chain's last segment cut: the walker completes it from what follows.
    d.pend = d.ahead_pend;
    d.pend_len = d.ahead_pend_len;
    if d.ahead_records > 0 {
        d.rec_end = d.ahead_next;
        d.last_record_type = APPLICATION_DATA;
        d.last_record_len = d.ahead_last_len;
    }
}

/// Starts walking a side at the first byte of its stream (the caller saw a TLS record
/// there).
#[inline(always)]
pub fn sync_at_start(flow: &mut FlowState, side: usize, seq: u32) {
    let d = &mut flow.dir[side];
    d.flags |= dir_flags::SYNCED;
    d.cursor = seq;
    d.walked_end = seq;
    d.hole_start = seq;
    d.hole_end = seq;
    d.item = item::RECORD;
    d.pend_len = 0;
    d.flags &= !dir_flags::AHEAD;
}

/// Evidence of a record boundary mid-stream: the segment starts with a plausible header,
/// and a chain of plausible headers ends exactly where the segment ends. Ciphertext
/// passes that test by chance about once in 2^40 segments.
#[inline(never)]
fn resync<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, seg: &Seg) -> bool {
    let len = seg.end.wrapping_sub(seg.start);
    let mut off = 0u32;
    let mut aligned = false;
    for _ in 0..RESYNC_RECORDS {
        let Some(h) = seg.read(cx.p, seg.start.wrapping_add(off), 5) else {
            return false;
        };
        let rec_len = (h & 0xffff) as u32;
        if !plausible((h >> 32) as u8, (h >> 24) as u8, (h >> 16) as u8, rec_len) {
            return false;
        }
        off += 5 + rec_len;
        if off >= len {
            aligned = off == len;
            break;
        }
    }
    if !aligned {
        return false;
    }
    let side = cx.sender as usize;
    let hellos = flow.dir[0].flags | flow.dir[1].flags;
    if hellos & dir_flags::HELLO == 0 {
        // Picked up after the handshake: this side is past its ChangeCipherSpec.
        flow.flags |= flow_flags::MIDSTREAM_TLS;
        flow.dir[side].flags |= dir_flags::CCS;
    }
    sync_at_start(flow, side, seg.start);
    counters::inc(Counter::TlsResynced);
    true
}

/// Appends a history letter: upper case for the client, lower case for the server.
/// Both directions can append at once from two CPUs, so the slot is taken atomically.
#[inline(always)]
fn history(flow: &mut FlowState, sender: Side, upper: u8) {
    let letter = match sender {
        Side::Client => upper,
        Side::Server => upper | 0x20,
    };
    // SAFETY: history_len is a properly aligned u64 inside a map value we hold. core's
    // AtomicU64 has no fetch_add on BPF, but the instruction (BPF_ATOMIC | BPF_FETCH) exists.
    // SeqCst, not Relaxed: LLVM 22 lowers a relaxed fetch-add to the non-fetching XADD and
    // then reads the old value from the addend register (seen in the disassembly). BPF
    // atomics are full barriers anyway.
    let i = unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::SeqCst }>(
            &mut flow.tls.history_len,
            1,
        )
    } as usize;
    if i < flow.tls.history.len() {
        flow.tls.history[i] = letter;
    }
}

/// Moves the cursor to `at`, expecting `it` there.
#[inline(always)]
fn expect(flow: &mut FlowState, side: usize, it: u8, at: u32) {
    let d = &mut flow.dir[side];
    d.item = it;
    d.cursor = at;
}

/// Expects a hello field at `at`, unless it would run past the record (a hello spanning
/// records is not parsed further).
#[inline(always)]
fn expect_hello_field(flow: &mut FlowState, side: usize, it: u8, at: u32) {
    let d = &flow.dir[side];
    let end = if before(d.msg_end, d.rec_end) {
        d.msg_end
    } else {
        d.rec_end
    };
    if before(end, at.wrapping_add(item_len(it))) {
        after_message(flow, side);
    } else {
        expect(flow, side, it, at);
    }
}

/// After a handshake message: the next message in the same record, or the next record
/// (remembering when the message itself continues there).
#[inline(always)]
fn after_message(flow: &mut FlowState, side: usize) {
    let d = &mut flow.dir[side];
    d.flags &= !dir_flags::IN_HELLO;
    let (msg_end, rec_end) = (d.msg_end, d.rec_end);
    if before(msg_end, rec_end) {
        expect(flow, side, item::HANDSHAKE, msg_end);
    } else {
        if before(rec_end, msg_end) {
            d.flags |= dir_flags::MSG_CONTINUES;
        }
        expect(flow, side, item::RECORD, rec_end);
    }
}

/// Handles one complete item; returns false if the side lost sync.
#[inline(always)]
fn step<P: Packet>(
    cx: &Cx<P>,
    flow: &mut FlowState,
    seg: &Seg,
    value: u64,
    found: &mut Found,
) -> bool {
    let sender = cx.sender;
    let side = sender as usize;
    let d = flow.dir[side];
    let cursor = d.cursor;
    match d.item {
        item::RECORD => {
            let typ = (value >> 32) as u8;
            let len = (value & 0xffff) as u32;
            if !plausible(typ, (value >> 24) as u8, (value >> 16) as u8, len) {
                lose(flow, side, Loss::Implausible);
                return false;
            }
            counters::inc(Counter::TlsRecords);
            let rec_end = cursor.wrapping_add(5 + len);
            {
                let d = &mut flow.dir[side];
                d.rec_end = rec_end;
                d.last_record_type = typ;
                d.last_record_len = len as u16;
                d.last_record_gap_ns = cx.gap_ns;
            }
            let encrypted = d.flags & dir_flags::CCS != 0;
            match typ {
                CHANGE_CIPHER_SPEC => {
                    history(flow, sender, content_type::history_letter(typ));
                    flow.dir[side].flags |= dir_flags::CCS;
                    if sender == Side::Server
                        && d.flags & (dir_flags::HELLO | dir_flags::CERTIFICATE) == dir_flags::HELLO
                        && !version::is_tls13_family(flow.tls.negotiated_version)
                    {
                        flow.tls.flags |= tls_flags::ABBREVIATED;
                    }
                    expect(flow, side, item::RECORD, rec_end);
                }
                ALERT => {
                    history(flow, sender, content_type::history_letter(typ));
                    if !encrypted && len == 2 {
                        expect(flow, side, item::ALERT_BODY, cursor.wrapping_add(5));
                    } else {
                        if encrypted {
                            let extra = Extra {
                                record_len: len as u16,
                                ..Extra::default()
                            };
                            found.push(EventKind::EncryptedAlert, extra);
                        }
                        expect(flow, side, item::RECORD, rec_end);
                    }
                }
                HANDSHAKE if encrypted => {
                    if d.flags & dir_flags::FINISHED == 0 {
                        history(flow, sender, hs::history_letter(hs::FINISHED));
                        flow.dir[side].flags |= dir_flags::FINISHED;
                        check_done(flow);
                    } else if (flow.dir[0].flags | flow.dir[1].flags) & dir_flags::APPDATA != 0
                        && !version::is_tls13_family(flow.tls.negotiated_version)
                        && d.flags & dir_flags::RENEGOTIATED == 0
                    {
                        // Reported once per side: the whole renegotiation handshake that
                        // follows is more of the same.
                        flow.dir[side].flags |= dir_flags::RENEGOTIATED;
                        // Encrypted: a server's is most likely a HelloRequest, a client's a
                        // ClientHello.
                        let likely = match sender {
                            Side::Server => hs::HELLO_REQUEST,
                            Side::Client => hs::CLIENT_HELLO,
                        };
                        history(flow, sender, hs::history_letter(likely));
                        let extra = Extra {
                            record_len: len as u16,
                            ..Extra::default()
                        };
                        found.push(EventKind::Renegotiation, extra);
                    }
                    expect(flow, side, item::RECORD, rec_end);
                }
                HANDSHAKE => {
                    if d.flags & dir_flags::MSG_CONTINUES != 0 {
                        // The message runs on past this record's header.
                        let msg_end = d.msg_end.wrapping_add(5);
                        flow.dir[side].msg_end = msg_end;
                        if !before(rec_end, msg_end) {
                            flow.dir[side].flags &= !dir_flags::MSG_CONTINUES;
                        }
                        if before(msg_end, rec_end) {
                            expect(flow, side, item::HANDSHAKE, msg_end);
                        } else {
                            expect(flow, side, item::RECORD, rec_end);
                        }
                    } else {
                        expect(flow, side, item::HANDSHAKE, cursor.wrapping_add(5));
                    }
                }
                APPLICATION_DATA => {
                    if d.flags & dir_flags::APPDATA == 0 {
                        history(flow, sender, content_type::history_letter(typ));
                        flow.dir[side].flags |= dir_flags::APPDATA;
                        check_done(flow);
                    }
                    expect(flow, side, item::RECORD, rec_end);
                }
                _ => {
                    history(flow, sender, content_type::history_letter(typ));
                    expect(flow, side, item::RECORD, rec_end);
                }
            }
        }
        item::HANDSHAKE => {
            let htype = (value >> 24) as u8;
            let msg_end = cursor.wrapping_add(4 + (value & 0x00ff_ffff) as u32);
            flow.dir[side].msg_end = msg_end;
            history(flow, sender, hs::history_letter(htype));
            match (htype, sender) {
                (hs::HELLO_REQUEST, Side::Server) => {
                    // Marks the server as the one that started renegotiating, so that
                    // the client's answer is told as one (see the agent's attribution).
                    flow.dir[side].flags |= dir_flags::RENEGOTIATED;
                    found.push(EventKind::HelloRequest, Extra::default());
                    after_message(flow, side);
                }
                (hs::CLIENT_HELLO, Side::Client) | (hs::SERVER_HELLO, Side::Server) => {
                    if htype == hs::CLIENT_HELLO
                        && d.flags & (dir_flags::HELLO | dir_flags::RENEGOTIATED)
                            == dir_flags::HELLO
                        && (flow.dir[0].flags | flow.dir[1].flags) & dir_flags::APPDATA != 0
                    {
                        flow.dir[side].flags |= dir_flags::RENEGOTIATED;
                        found.push(EventKind::Renegotiation, Extra::default());
                    }
                    flow.dir[side].flags |= dir_flags::HELLO | dir_flags::IN_HELLO;
                    expect_hello_field(flow, side, item::HELLO_VERSION, cursor.wrapping_add(4));
                }
                _ => {
                    if htype == hs::CERTIFICATE {
                        flow.dir[side].flags |= dir_flags::CERTIFICATE;
                    }
                    after_message(flow, side);
                }
            }
        }
        item::HELLO_VERSION => {
            let v = value as u16;
            match sender {
                Side::Client => flow.tls.offered_versions |= version::offered_bit(v),
                Side::Server => flow.tls.negotiated_version = v,
            }
            // Version, then 32 bytes of random.
            expect_hello_field(flow, side, item::HELLO_SESSION_ID, cursor.wrapping_add(34));
        }
        item::HELLO_SESSION_ID => {
            let n = value as u8;
            if n > 32 {
                after_message(flow, side);
                return true;
            }
            let id = cursor.wrapping_add(1);
            let prefix_len = if n < 8 { n as u32 } else { 8 };
            let prefix = if prefix_len > 0 {
                seg.read(cx.p, id, prefix_len).unwrap_or(0)
            } else {
                0
            };
            let after_id = id.wrapping_add(n as u32);
            match sender {
                Side::Client => {
                    flow.tls.session_id_len = n;
                    flow.tls.session_id_prefix = prefix;
                    expect_hello_field(flow, side, item::HELLO_CIPHER_SUITES, after_id);
                }
                Side::Server => {
                    if n > 0 && n == flow.tls.session_id_len && prefix == flow.tls.session_id_prefix
                    {
                        flow.tls.flags |= tls_flags::SESSION_ID_ECHOED;
                    }
                    // Chosen cipher suite (2) and compression method (1).
                    expect_hello_field(
                        flow,
                        side,
                        item::HELLO_EXTENSIONS,
                        after_id.wrapping_add(3),
                    );
                }
            }
        }
        item::HELLO_CIPHER_SUITES => {
            let at = cursor.wrapping_add(2 + (value as u16) as u32);
            expect_hello_field(flow, side, item::HELLO_COMPRESSION, at);
        }
        item::HELLO_COMPRESSION => {
            let at = cursor.wrapping_add(1 + (value as u8) as u32);
            expect_hello_field(flow, side, item::HELLO_EXTENSIONS, at);
        }
        item::HELLO_EXTENSIONS => {
            let first = cursor.wrapping_add(2);
            let mut end = first.wrapping_add((value as u16) as u32);
            if before(d.msg_end, end) {
                end = d.msg_end;
            }
            flow.dir[side].ext_end = end;
            if before(first, end) {
                expect_hello_field(flow, side, item::EXTENSION, first);
            } else {
                after_message(flow, side);
            }
        }
        item::EXTENSION => {
            let etype = (value >> 16) as u16;
            let elen = (value & 0xffff) as u32;
            let data = cursor.wrapping_add(4);
            extension(cx, flow, seg, etype, elen, data);
            let next = data.wrapping_add(elen);
            if before(next, flow.dir[side].ext_end) {
                expect_hello_field(flow, side, item::EXTENSION, next);
            } else {
                after_message(flow, side);
            }
        }
        item::ALERT_BODY => {
            let (level, description) = ((value >> 8) as u8, value as u8);
            let extra = Extra {
                alert: Some((level, description)),
                record_len: 2,
                ..Extra::default()
            };
            found.push(EventKind::PlaintextAlert, extra);
            if level == alert::FATAL
                && let Some(extra) =
                    handshake_aborted(flow, abort::ALERT, Some((level, description)))
            {
                found.push(EventKind::HandshakeAborted, extra);
            }
            let rec_end = flow.dir[side].rec_end;
            expect(flow, side, item::RECORD, rec_end);
        }
        _ => {
            lose(flow, side, Loss::Implausible);
            return false;
        }
    }
    true
}

/// Facts from one hello extension. Values are read only when the segment holds them
/// (they follow their header, so they nearly always do).
#[inline(always)]
fn extension<P: Packet>(
    cx: &Cx<P>,
    flow: &mut FlowState,
    seg: &Seg,
    etype: u16,
    elen: u32,
    data: u32,
) {
    match (cx.sender, etype) {
        (Side::Client, ext::SERVER_NAME) => store_sni(cx, flow, seg, data),
        (Side::Client, ext::SESSION_TICKET) => flow.tls.session_ticket_len = elen as u16,
        (Side::Client, ext::PRE_SHARED_KEY) => flow.tls.flags |= tls_flags::PSK_OFFERED,
        (Side::Client, ext::PSK_KEY_EXCHANGE_MODES) => flow.tls.flags |= tls_flags::PSK_MODES,
        (Side::Client, ext::SUPPORTED_VERSIONS) => {
            // A 1-byte list length, then 2-byte versions; the first four are enough to
            // see which versions are offered (GREASE values contribute nothing).
            let n = if elen < 9 { elen } else { 9 };
            if n >= 3
                && let Some(list) = seg.read(cx.p, data, n.min(8))
            {
                let bytes = n.min(8);
                let mut i = 1;
                while i + 2 <= bytes {
                    let shift = 8 * (bytes - i - 2);
                    flow.tls.offered_versions |= version::offered_bit((list >> shift) as u16);
                    i += 2;
                }
            }
        }
        (Side::Server, ext::SUPPORTED_VERSIONS) => {
            if let Some(v) = seg.read(cx.p, data, 2) {
                flow.tls.negotiated_version = v as u16;
            }
        }
        (Side::Server, ext::PRE_SHARED_KEY) => flow.tls.flags |= tls_flags::PSK_ACCEPTED,
        _ => {}
    }
}

/// server_name: list length (2), name type (1), name length (2), name.
#[inline(always)]
fn store_sni<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, seg: &Seg, data: u32) {
    let Some(name_len) = seg.read(cx.p, data.wrapping_add(3), 2) else {
        return;
    };
    let name = data.wrapping_add(5);
    let n = if (name_len as usize) < SNI_MAX {
        name_len as u32
    } else {
        SNI_MAX as u32
    };
    if n == 0 || before(seg.end, name.wrapping_add(n)) || before(name, seg.start) {
        return;
    }
    let off = seg.payload_off + name.wrapping_sub(seg.start) as usize;
    if sni::store(cx.key, n as u8, |buf| cx.p.load_into(off, n as usize, buf)) {
        flow.tls.flags |= tls_flags::SNI;
    }
}

/// Both sides sent Finished (TLS 1.2 and older), or both sent application-data records
/// (TLS 1.3, whose encrypted flights are type 23 records; and any version at all, since
/// application data both ways means the session was established whatever its version
/// code said).
#[inline(always)]
fn check_done(flow: &mut FlowState) {
    let (c, s) = (
        flow.dir[Side::Client as usize].flags,
        flow.dir[Side::Server as usize].flags,
    );
    let both = c & s;
    let done = both & dir_flags::APPDATA != 0
        || (both & dir_flags::FINISHED != 0
            && !version::is_tls13_family(flow.tls.negotiated_version));
    if done {
        flow.tls.flags |= tls_flags::HANDSHAKE_DONE;
    }
}

/// A handshake that a client started and that ended (fatal alert, RST or FIN) before it
/// finished: the event's fields, once per flow.
#[inline(always)]
pub fn handshake_aborted(flow: &mut FlowState, how: u8, alert: Option<(u8, u8)>) -> Option<Extra> {
    let started = flow.dir[Side::Client as usize].flags & dir_flags::HELLO != 0;
    if !started
        || flow.tls.flags & tls_flags::HANDSHAKE_DONE != 0
        || flow.flags & flow_flags::ABORT_REPORTED != 0
    {
        return None;
    }
    flow.flags |= flow_flags::ABORT_REPORTED;
    Some(Extra {
        alert,
        detail: how,
        ..Extra::default()
    })
}

/// TLS 1.3 close heuristic: the side's last record was a close_notify-sized application
/// data record (2 alert bytes + 1 inner type + 16 tag) and now it sends FIN.
#[inline(always)]
pub fn tls13_close<P: Packet>(cx: &Cx<P>, flow: &FlowState) -> bool {
    const CLOSE_NOTIFY_LEN: u16 = 19;
    let d = &flow.dir[cx.sender as usize];
    version::is_tls13_family(flow.tls.negotiated_version)
        && d.last_record_type == APPLICATION_DATA
        && d.last_record_len == CLOSE_NOTIFY_LEN
}
