//! Finding the cursor's place: at a stream's start, mid-stream from the evidence of a
//! header chain, and across reordering or loss in a bulk transfer of one-size records.

use detector_common::{
    Counter, Direction, FlowState, dir_flags, flow_flags, item,
    tls::{content_type, version},
};

use super::{RECORD_HEADER, Seg, before, plausible_header};
use crate::{emit::Cx, maps::counters, packet::Packet};

/// Records checked when looking for evidence of a boundary.
const RESYNC_RECORDS: usize = 4;
/// Headers read ahead of a gap: a 64 KB super-packet of 16 KB records holds five.
const AHEAD_RECORDS: usize = 6;

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
pub(super) fn resync<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, seg: &Seg) -> bool {
    let len = seg.end.wrapping_sub(seg.start);
    let mut off = 0u32;
    let mut aligned = false;
    for _ in 0..RESYNC_RECORDS {
        let Some(h) = seg.read(cx.p, seg.start.wrapping_add(off), RECORD_HEADER) else {
            return false;
        };
        if !plausible_header(h) {
            return false;
        }
        off += RECORD_HEADER + (h & 0xffff) as u32;
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

/// Whether the side waits for a record header in a bulk transfer (application data seen),
/// where records have one size and the lengths say where headers are.
#[inline(always)]
fn in_bulk(d: &Direction) -> bool {
    d.item == item::RECORD && d.flags & dir_flags::APPDATA != 0
}

/// Where one-size records put the first header at or after the segment's start, counting
/// from the cursor.
#[inline(always)]
fn one_size_header(d: &Direction, seg: &Seg) -> u32 {
    let step = RECORD_HEADER + d.last_record_len as u32;
    let records_to_seg = seg.start.wrapping_sub(d.cursor).div_ceil(step);
    d.cursor.wrapping_add(records_to_seg * step)
}

/// A chain of application-data headers read from the segment: where it ends, and the
/// first bytes of a header the segment's end cut.
struct Chain {
    /// Where the next header (or the cut one) starts.
    at: u32,
    records: u16,
    last_len: u16,
    header: u64,
    have: u32,
}

enum ChainEnd {
    /// The chain runs to the segment's end (or through a header it cuts).
    Reaches(Chain),
    /// A header in it is no application-data header, or there are more headers than the
    /// chain reads: the records were not where it looked.
    Refuted,
    /// The packet did not hold bytes its headers promised.
    Unreadable,
}

/// Reads application-data headers from `at` (whose first `have` bytes, `header`, an
/// earlier segment brought) to the segment's end. The shared loop of `read_ahead` and
/// `bridge_by_length`, inlined into each.
#[inline(always)]
fn appdata_chain<P: Packet>(
    p: &P,
    seg: &Seg,
    mut at: u32,
    mut header: u64,
    mut have: u32,
) -> ChainEnd {
    let mut records = 0u16;
    let mut last_len = 0u16;
    for _ in 0..AHEAD_RECORDS {
        let from = at.wrapping_add(have);
        if !before(from, seg.end) {
            break;
        }
        let left = seg.end.wrapping_sub(from);
        let take = if RECORD_HEADER - have < left {
            RECORD_HEADER - have
        } else {
            left
        };
        let Some(part) = seg.read(p, from, take) else {
            return ChainEnd::Unreadable;
        };
        header = (header << (8 * take)) | part;
        have += take;
        if have < RECORD_HEADER {
            // Cut by the segment's end: kept for the segment that brings the rest.
            break;
        }
        if (header >> 32) as u8 != content_type::APPLICATION_DATA || !plausible_header(header) {
            return ChainEnd::Refuted;
        }
        let len = (header & 0xffff) as u32;
        records += 1;
        last_len = len as u16;
        at = at.wrapping_add(RECORD_HEADER + len);
        header = 0;
        have = 0;
    }
    if have == 0 && before(at, seg.end) {
        // More headers in this segment than the chain reads: it does not reach the end.
        return ChainEnd::Refuted;
    }
    ChainEnd::Reaches(Chain {
        at,
        records,
        last_len,
        header,
        have,
    })
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
/// the walker's own count of lengths arrives, so nothing is guessed. A second gap (an
/// early segment past where the chain stopped) is crossed by length on the same evidence
/// as `bridge_by_length`, also when the chain stopped in a header the segment end cut (a
/// super-packet split at the MTU): that header is then the first of the records crossed,
/// if its first bytes agree with a one-size application-data header. A segment between
/// the cursor and the chain (a hole of several segments, filled out of order) puts its
/// headers in front of the chain when their lengths end exactly where the chain starts.
#[inline(never)]
pub(super) fn read_ahead<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, seg: &Seg) -> bool {
    let side = cx.sender as usize;
    let d = &flow.dir[side];
    if !in_bulk(d) {
        return false;
    }
    let extending = d.flags & dir_flags::AHEAD != 0 && !before(d.ahead_at, d.cursor);
    // A second early segment past a second gap (two segments overtaken at once): the
    // chain goes on over the gap where one-size records put the next header, counted by
    // length, if headers stand exactly there (the evidence `bridge_by_length` asks for).
    let over_gap = extending
        && d.ahead_records > 0
        && before(
            d.ahead_next.wrapping_add(d.ahead_pend_len as u32),
            seg.start,
        )
        && (d.ahead_pend_len == 0
            || cut_header_agrees(d.ahead_pend, d.ahead_pend_len as u32, d.ahead_last_len));
    // A segment inside the hole, before the chain (the hole spans several segments and
    // a later one of them came first): the walker will find these bytes gone by when its
    // count gets here. Its headers, read where one-size records put them, go in front of
    // the chain if their lengths lead exactly to where the chain starts.
    let before_chain = extending && before(d.cursor, seg.start) && !before(d.ahead_at, seg.end);
    // Where the next header starts, its first bytes if an earlier segment cut it, and the
    // records the gap before it holds.
    let (start, header, have, gap_records) = if over_gap {
        let step = RECORD_HEADER + d.ahead_last_len as u32;
        let records = seg.start.wrapping_sub(d.ahead_next).div_ceil(step);
        (d.ahead_next.wrapping_add(records * step), 0, 0, records)
    } else if before_chain {
        (one_size_header(d, seg), 0, 0, 0)
    } else if extending {
        (d.ahead_next, d.ahead_pend, d.ahead_pend_len as u32, 0)
    } else {
        (one_size_header(d, seg), 0, 0, 0)
    };
    let from = start.wrapping_add(have);
    if over_gap && !before(from, seg.end) {
        // No header where the lengths put one in this segment: all of it is the body of
        // the record before (a segment holding a record's tail, past the gap holding its
        // header). Carried over by length: the header where the chain now ends, which
        // the walker reads when its own count gets there, bears the lengths out, or is
        // none and the walker loses its place there, counted.
        let d = &mut flow.dir[side];
        let total = d.ahead_records as u32 + gap_records;
        if total > u16::MAX as u32 {
            return false;
        }
        d.ahead_next = start;
        d.ahead_pend = 0;
        d.ahead_pend_len = 0;
        d.ahead_records = total as u16;
        return true;
    }
    // The chain must go on in this very segment: its next byte is here.
    if before(from, seg.start) || !before(from, seg.end) || (have > 0 && from != seg.start) {
        return false;
    }
    let ChainEnd::Reaches(chain) = appdata_chain(cx.p, seg, start, header, have) else {
        return false;
    };
    // Over a gap, at least one whole header must bear the prediction out.
    if over_gap && chain.records == 0 {
        return false;
    }
    let d = &mut flow.dir[side];
    if before_chain {
        if chain.records == 0 {
            return false;
        }
        let total = d.ahead_records as u32 + chain.records as u32;
        if chain.have == 0 && chain.at == d.ahead_at && total <= u16::MAX as u32 {
            // Its headers end exactly where the chain starts: they join it.
            d.ahead_at = start;
            d.ahead_records = total as u16;
            return true;
        }
        // A piece of the hole (a super-packet split into segments) with a header where
        // one-size records put one: its headers go by unread, and the walker's count is
        // likely to land in them. The hole now ends here, so that the walker sees bytes
        // from here on as gone by when it gets there and crosses to the chain by length
        // (`bridge_to_chain`), or loses its place, counted, instead of waiting for bytes
        // that already came.
        let open = d.hole_start != d.hole_end;
        if open && before(d.hole_start, seg.start) && before(seg.start, d.hole_end) {
            d.hole_end = seg.start;
        }
        return false;
    }
    let kept = if extending { d.ahead_records as u32 } else { 0 };
    let total = kept + gap_records + chain.records as u32;
    if total > u16::MAX as u32 {
        return false;
    }
    if !extending {
        d.ahead_at = start;
        d.flags |= dir_flags::AHEAD;
    }
    d.ahead_next = chain.at;
    d.ahead_pend = chain.header;
    d.ahead_pend_len = chain.have as u8;
    d.ahead_records = total as u16;
    if chain.records > 0 {
        d.ahead_last_len = chain.last_len;
    }
    true
}

/// Whether the first `have` (1..=4) bytes of a header, `pend`, agree with an
/// application-data header of `len` bytes (the rest filled in from one).
#[inline(always)]
fn cut_header_agrees(pend: u64, have: u32, len: u16) -> bool {
    let one_size = ((content_type::APPLICATION_DATA as u64) << 32)
        | ((version::TLS1_2 as u64) << 16)
        | len as u64;
    let unknown = 8 * (RECORD_HEADER - have);
    let header = (pend << unknown) | (one_size & ((1u64 << unknown) - 1));
    (header >> 32) as u8 == content_type::APPLICATION_DATA
        && plausible_header(header)
        && header & 0xffff == len as u64
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
pub(super) fn bridge_by_length<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, seg: &Seg) -> Bridge {
    let side = cx.sender as usize;
    let d = &flow.dir[side];
    if !in_bulk(d) {
        return Bridge::Refuted;
    }
    let chain = match appdata_chain(cx.p, seg, one_size_header(d, seg), 0, 0) {
        ChainEnd::Reaches(chain) => chain,
        ChainEnd::Refuted => return Bridge::Refuted,
        ChainEnd::Unreadable => return Bridge::NoEvidence,
    };
    if chain.records == 0 || chain.have > 0 {
        // No whole header to check, or the last one runs past the segment's end.
        return Bridge::NoEvidence;
    }
    counters::inc(Counter::TlsBridgedByLength);
    counters::add(Counter::TlsRecords, chain.records as u64);
    let d = &mut flow.dir[side];
    d.cursor = chain.at;
    d.rec_end = chain.at;
    d.pend_len = 0;
    d.flags &= !dir_flags::AHEAD;
    d.last_record_type = content_type::APPLICATION_DATA;
    Bridge::Bridged
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Bridge {
    Bridged,
    /// No whole header where one-size records put one in this segment.
    NoEvidence,
    /// The bytes there are no such header: the records were not all of one size.
    Refuted,
}

/// The walker's count landed in bytes that went by unread, before the chain `read_ahead`
/// kept: in a bulk transfer of one-size records, where the chain starts a whole number of
/// `last_record_len` records on from the cursor, the records in between were all of that
/// size (the evidence `bridge_by_length` asks for: whole application-data headers exactly
/// where the lengths put them, up to a segment's end), and the walker takes the chain
/// there, counted as a bridge by length.
#[inline(always)]
pub(super) fn bridge_to_chain(flow: &mut FlowState, side: usize) {
    let d = &mut flow.dir[side];
    if d.flags & dir_flags::AHEAD == 0
        || !in_bulk(d)
        || d.ahead_records == 0
        || !before(d.cursor, d.ahead_at)
    {
        return;
    }
    let step = RECORD_HEADER + d.last_record_len as u32;
    if !d.ahead_at.wrapping_sub(d.cursor).is_multiple_of(step) {
        return;
    }
    counters::inc(Counter::TlsBridgedByLength);
    take_chain(d);
}

/// Takes the chain `read_ahead` kept, if the cursor stands exactly where it starts.
#[inline(always)]
pub(super) fn take_read_ahead(flow: &mut FlowState, side: usize) {
    let d = &mut flow.dir[side];
    if d.flags & dir_flags::AHEAD == 0 || d.item != item::RECORD || d.cursor != d.ahead_at {
        return;
    }
    counters::inc(Counter::TlsReadAhead);
    take_chain(d);
}

/// Moves the cursor to the chain's end, counting its records.
#[inline(always)]
fn take_chain(d: &mut Direction) {
    d.flags &= !dir_flags::AHEAD;
    counters::add(Counter::TlsRecords, d.ahead_records as u64);
    d.cursor = d.ahead_next;
    // A header the chain's last segment cut: the walker completes it from what follows.
    d.pend = d.ahead_pend;
    d.pend_len = d.ahead_pend_len;
    if d.ahead_records > 0 {
        d.rec_end = d.ahead_next;
        d.last_record_type = content_type::APPLICATION_DATA;
        d.last_record_len = d.ahead_last_len;
    }
}
