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
//! until a segment proves a boundary again (see [`recover`]).
//!
//! This module moves the cursor; [`items`] reads what each item says; [`recover`] finds
//! the cursor's place again after reordering or loss.

mod items;
mod recover;

use detector_common::{
    Counter, Direction, FlowState, MAX_TLS_RECORD, PayloadClass, dir_flags, item,
    tls::{content_type, version},
};

use aya_ebpf::{cty::c_void, helpers::generated::bpf_loop};

use crate::{
    emit::{Cx, Found},
    maps::counters,
    packet::{MAX_OFFSET, Packet},
    parse::Segment,
};

pub use items::{handshake_aborted, tls13_close};
pub use recover::sync_at_start;

/// Items read per packet. A ClientHello with a dozen extensions needs about 20; a GSO
/// super-packet on egress holds at most a few 16 KB records. Past it, the side loses sync.
const MAX_ITEMS: usize = 32;
/// How far a side's data may run ahead of its cursor (reordering, loss) before the walker
/// stops waiting for the missing bytes.
const MAX_GAP: u32 = 1 << 20;

/// Bytes of a record header: type, version, length.
const RECORD_HEADER: u32 = 5;

/// `a` comes before `b` in sequence space (modulo 2^32).
#[inline(always)]
pub fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline(always)]
fn item_len(it: u8) -> u32 {
    match it {
        item::RECORD => RECORD_HEADER,
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
    (content_type::CHANGE_CIPHER_SPEC..=content_type::HEARTBEAT).contains(&typ)
        && major == version::MAJOR
        && minor <= version::TLS1_3 as u8
        && len <= MAX_TLS_RECORD
        && (len > 0 || typ == content_type::APPLICATION_DATA)
}

/// [`plausible`] for a header read as a big-endian number.
#[inline(always)]
fn plausible_header(h: u64) -> bool {
    plausible(
        (h >> 32) as u8,
        (h >> 24) as u8,
        (h >> 16) as u8,
        (h & 0xffff) as u32,
    )
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

/// Application-data headers the fast path steps over in one packet: a 64 KB GSO
/// super-packet of 16 KB records holds up to five. More go to the slow path.
const FAST_RECORDS: usize = 5;

/// The bulk case in the fast path: a packet of a side in its application-data phase,
/// walked in order, whose every record header lies whole inside it and is an
/// application-data header TLS allows. For such a packet the slow path would only move
/// the cursor over the records and note the last one (its walk, `record_header`'s
/// application-data arm, then `track_hole`), which this does without the tail call.
/// Anything else (another record type, a header cut by the segment's end, a cursor
/// before the segment, reordering being repaired, more headers than it steps) returns
/// false with the flow untouched, and the slow path walks the packet as before.
#[inline(always)]
pub fn step_bulk<P: Packet>(
    p: &P,
    flow: &mut FlowState,
    side: usize,
    seg: &Segment,
    gap_ns: u64,
) -> bool {
    let seg = Seg {
        start: seg.seq,
        end: seg.end(),
        payload_off: seg.payload_off as usize,
    };
    let d = &flow.dir[side];
    let wanted = dir_flags::SYNCED | dir_flags::APPDATA;
    // AHEAD: a read-ahead chain waits for the cursor, which only the slow path takes.
    if d.flags & (wanted | dir_flags::AHEAD) != wanted || d.item != item::RECORD || d.pend_len != 0
    {
        return false;
    }
    // In order: the cursor lies in this segment, which starts at or past every byte the
    // walker looked at (so none of it was seen before, and no read-ahead applies).
    let cursor = d.cursor;
    if before(cursor, seg.start) || !before(cursor, seg.end) || before(seg.start, d.walked_end) {
        return false;
    }
    let mut at = cursor;
    let mut records = 0u64;
    for _ in 0..FAST_RECORDS {
        if before(seg.end, at.wrapping_add(RECORD_HEADER)) {
            // Cut by the segment's end: the slow path keeps the first bytes.
            return false;
        }
        let off = seg.payload_off + at.wrapping_sub(seg.start) as usize;
        // The verifier takes a packet pointer as bounded only if offset plus size stays
        // within 64 KiB; deeper headers (a GSO super-packet's) are the slow path's.
        if off > MAX_OFFSET - RECORD_HEADER as usize {
            return false;
        }
        let Some(h) = p.read::<[u8; RECORD_HEADER as usize]>(off) else {
            return false;
        };
        let len = u16::from_be_bytes([h[3], h[4]]) as u32;
        if h[0] != content_type::APPLICATION_DATA || !plausible(h[0], h[1], h[2], len) {
            return false;
        }
        records += 1;
        at = at.wrapping_add(RECORD_HEADER + len);
        if !before(at, seg.end) {
            counters::add(Counter::TlsRecords, records);
            counters::inc(Counter::TlsFastPathPackets);
            let d = &mut flow.dir[side];
            d.cursor = at;
            d.rec_end = at;
            d.last_record_type = content_type::APPLICATION_DATA;
            d.last_record_len = len as u16;
            d.last_record_gap_ns = gap_ns;
            track_hole(d, &seg);
            return true;
        }
    }
    false
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
    if flow.dir[side].flags & dir_flags::SYNCED == 0 && !recover::resync(cx, flow, &seg) {
        return;
    }
    // What earlier segments brought, as far as the walker has seen them. Not the highest
    // sequence number the fast path saw: a later segment on another CPU may have raised
    // that already, and it will still be walked.
    let prior_walked = flow.dir[side].walked_end;
    if before(flow.dir[side].cursor, seg.start) {
        // The next header lies before this segment: a segment that came early may have
        // read it ahead (see `read_ahead`).
        recover::take_read_ahead(flow, side);
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
        // (not in the hole that is still filling): unless that packet read it ahead, or a
        // chain read ahead past them stands where one-size records put it, they went by
        // unread, so the boundary after them is unknown.
        Outcome::Done if seen_before(&flow.dir[side], prior_walked) => {
            recover::take_read_ahead(flow, side);
            if seen_before(&flow.dir[side], prior_walked) {
                recover::bridge_to_chain(flow, side);
            }
            if seen_before(&flow.dir[side], prior_walked) {
                lose(flow, side, Loss::PassedUnread);
            }
        }
        Outcome::TooFar => {
            // A segment with no whole header to check says nothing: the next may.
            if recover::bridge_by_length(cx, flow, &w.seg) == recover::Bridge::Refuted {
                lose(flow, side, Loss::GapTooLong);
            }
        }
        Outcome::Waiting => {
            // The verifier refuses a BPF-to-BPF call that returns with a stack address in
            // R0, which a function whose result is unused may leave there (the compiler
            // drops the result): black_box keeps it, so R0 holds a plain bool.
            core::hint::black_box(recover::read_ahead(cx, flow, &w.seg));
        }
        _ => {}
    }
    track_hole(&mut flow.dir[side], &w.seg);
}

/// Keeps the walker's view of what arrived: the highest end it has looked at, and the
/// hole below it that reordering opened (one at a time: a second hole while one fills is
/// taken as seen, so a cursor landing there loses its place rather than wait on a guess,
/// unless the read-ahead crossed it by record lengths).
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

/// Whether the next byte the walker needs stands in bytes an earlier segment already
/// brought: below what the walker had looked at before this segment, and not in the hole
/// still filling. That byte is the cursor's, or past the first bytes of a header kept
/// from a segment end (a read-ahead chain can end in one).
#[inline(always)]
fn seen_before(d: &Direction, prior_walked: u32) -> bool {
    let next = d.cursor.wrapping_add(d.pend_len as u32);
    let in_hole = !before(next, d.hole_start) && before(next, d.hole_end);
    before(next, prior_walked) && !in_hole
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
    if items::step(cx, flow, seg, value, found) {
        Outcome::Running
    } else {
        Outcome::Stopped
    }
}

/// Why the walker lost its place (kept in the flow and counted by reason, for whoever has
/// to find out why).
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
    counters::inc(match why {
        Loss::Implausible => Counter::SyncLostImplausible,
        Loss::TooManyItems => Counter::SyncLostTooManyItems,
        Loss::PassedUnread => Counter::SyncLostPassedUnread,
        Loss::GapTooLong => Counter::SyncLostGapTooLong,
        Loss::Unreadable => Counter::SyncLostUnreadable,
    });
}

/// Moves the cursor to `at`, expecting `it` there.
#[inline(always)]
fn expect(flow: &mut FlowState, side: usize, it: u8, at: u32) {
    let d = &mut flow.dir[side];
    d.item = it;
    d.cursor = at;
}
