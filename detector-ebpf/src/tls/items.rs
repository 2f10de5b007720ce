//! What each item says: record headers, handshake messages and the hello fields the
//! detector keeps, alert bodies; and where the next item is.

use detector_common::{
    Counter, EventKind, FlowState, SNI_MAX, Side, abort, dir_flags, flow_flags, item,
    tls::{alert, content_type, extension as ext, handshake as hs, version},
    tls_flags,
};

use super::{Loss, RECORD_HEADER, Seg, before, expect, item_len, lose, plausible_header};
use crate::{
    emit::{Cx, Extra, Found},
    maps::{counters, sni},
    packet::Packet,
};

/// Bytes of a handshake message header: type, 24-bit length.
const HANDSHAKE_HEADER: u32 = 4;

/// Handles one complete item, `value` its bytes as a big-endian number; returns false if
/// the side lost sync.
#[inline(always)]
pub(super) fn step<P: Packet>(
    cx: &Cx<P>,
    flow: &mut FlowState,
    seg: &Seg,
    value: u64,
    found: &mut Found,
) -> bool {
    let side = cx.sender as usize;
    match flow.dir[side].item {
        item::RECORD => return record_header(cx, flow, value, found),
        item::HANDSHAKE => handshake_header(cx, flow, value, found),
        item::HELLO_VERSION => hello_version(cx, flow, value),
        item::HELLO_SESSION_ID => session_id(cx, flow, seg, value),
        item::HELLO_CIPHER_SUITES => cipher_suites(flow, side, value),
        item::HELLO_COMPRESSION => compression(flow, side, value),
        item::HELLO_EXTENSIONS => extensions(flow, side, value),
        item::EXTENSION => extension(cx, flow, seg, value),
        item::ALERT_BODY => alert_body(flow, side, value, found),
        _ => {
            lose(flow, side, Loss::Implausible);
            return false;
        }
    }
    true
}

/// A record header: what its type says, and where the next item is.
#[inline(always)]
fn record_header<P: Packet>(
    cx: &Cx<P>,
    flow: &mut FlowState,
    value: u64,
    found: &mut Found,
) -> bool {
    let sender = cx.sender;
    let side = sender as usize;
    // As the side was before this header (the flags below are set on `flow`).
    let d = flow.dir[side];
    let cursor = d.cursor;
    if !plausible_header(value) {
        lose(flow, side, Loss::Implausible);
        return false;
    }
    let typ = (value >> 32) as u8;
    let len = (value & 0xffff) as u32;
    counters::inc(Counter::TlsRecords);
    let rec_end = cursor.wrapping_add(RECORD_HEADER + len);
    {
        let d = &mut flow.dir[side];
        d.rec_end = rec_end;
        d.last_record_type = typ;
        d.last_record_len = len as u16;
        d.last_record_gap_ns = cx.gap_ns;
    }
    let encrypted = d.flags & dir_flags::CCS != 0;
    match typ {
        content_type::CHANGE_CIPHER_SPEC => {
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
        content_type::ALERT => {
            history(flow, sender, content_type::history_letter(typ));
            if !encrypted && len == 2 {
                expect(
                    flow,
                    side,
                    item::ALERT_BODY,
                    cursor.wrapping_add(RECORD_HEADER),
                );
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
        content_type::HANDSHAKE if encrypted => {
            if d.flags & dir_flags::FINISHED == 0 {
                history(flow, sender, hs::history_letter(hs::FINISHED));
                flow.dir[side].flags |= dir_flags::FINISHED;
                check_done(flow);
            } else if (flow.dir[0].flags | flow.dir[1].flags) & dir_flags::APPDATA != 0
                && !version::is_tls13_family(flow.tls.negotiated_version)
                && d.flags & dir_flags::RENEGOTIATED == 0
            {
                // Reported once per side: the whole renegotiation handshake that follows
                // is more of the same.
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
        content_type::HANDSHAKE => {
            if d.flags & dir_flags::MSG_CONTINUES != 0 {
                // The message runs on past this record's header.
                let msg_end = d.msg_end.wrapping_add(RECORD_HEADER);
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
                expect(
                    flow,
                    side,
                    item::HANDSHAKE,
                    cursor.wrapping_add(RECORD_HEADER),
                );
            }
        }
        content_type::APPLICATION_DATA => {
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
    true
}

/// A handshake message header: its letter in the history, the hellos' start, the
/// HelloRequest and renegotiating ClientHello events.
#[inline(always)]
fn handshake_header<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, value: u64, found: &mut Found) {
    let sender = cx.sender;
    let side = sender as usize;
    // As the side was before this header (the flags below are set on `flow`).
    let flags = flow.dir[side].flags;
    let cursor = flow.dir[side].cursor;
    let htype = (value >> 24) as u8;
    let msg_end = cursor.wrapping_add(HANDSHAKE_HEADER + (value & 0x00ff_ffff) as u32);
    flow.dir[side].msg_end = msg_end;
    history(flow, sender, hs::history_letter(htype));
    match (htype, sender) {
        (hs::HELLO_REQUEST, Side::Server) => {
            // Marks the server as the one that started renegotiating, so that the client's
            // answer is told as one (see the agent's attribution).
            flow.dir[side].flags |= dir_flags::RENEGOTIATED;
            found.push(EventKind::HelloRequest, Extra::default());
            after_message(flow, side);
        }
        (hs::CLIENT_HELLO, Side::Client) | (hs::SERVER_HELLO, Side::Server) => {
            if htype == hs::CLIENT_HELLO && flags & dir_flags::HELLO == 0 {
                counters::inc(Counter::HandshakesStarted);
            }
            if htype == hs::CLIENT_HELLO
                && flags & (dir_flags::HELLO | dir_flags::RENEGOTIATED) == dir_flags::HELLO
                && (flow.dir[0].flags | flow.dir[1].flags) & dir_flags::APPDATA != 0
            {
                flow.dir[side].flags |= dir_flags::RENEGOTIATED;
                found.push(EventKind::Renegotiation, Extra::default());
            }
            flow.dir[side].flags |= dir_flags::HELLO | dir_flags::IN_HELLO;
            let version = cursor.wrapping_add(HANDSHAKE_HEADER);
            expect_hello_field(flow, side, item::HELLO_VERSION, version);
        }
        _ => {
            if htype == hs::CERTIFICATE {
                flow.dir[side].flags |= dir_flags::CERTIFICATE;
            }
            after_message(flow, side);
        }
    }
}

/// A hello's legacy version field: offered by the client, chosen by the server (unless
/// supported_versions says otherwise later).
#[inline(always)]
fn hello_version<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, value: u64) {
    let side = cx.sender as usize;
    let v = value as u16;
    match cx.sender {
        Side::Client => flow.tls.offered_versions |= version::offered_bit(v),
        Side::Server => flow.tls.negotiated_version = v,
    }
    // Version, then 32 bytes of random.
    let session_id = flow.dir[side].cursor.wrapping_add(2 + 32);
    expect_hello_field(flow, side, item::HELLO_SESSION_ID, session_id);
}

/// The session ID's length and first bytes: a server that echoes the client's accepts
/// its resumption.
#[inline(always)]
fn session_id<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, seg: &Seg, value: u64) {
    let side = cx.sender as usize;
    let n = value as u8;
    if n > 32 {
        after_message(flow, side);
        return;
    }
    let id = flow.dir[side].cursor.wrapping_add(1);
    let prefix_len = if n < 8 { n as u32 } else { 8 };
    let prefix = if prefix_len > 0 {
        seg.read(cx.p, id, prefix_len).unwrap_or(0)
    } else {
        0
    };
    let after_id = id.wrapping_add(n as u32);
    match cx.sender {
        Side::Client => {
            flow.tls.session_id_len = n;
            flow.tls.session_id_prefix = prefix;
            expect_hello_field(flow, side, item::HELLO_CIPHER_SUITES, after_id);
        }
        Side::Server => {
            if n > 0 && n == flow.tls.session_id_len && prefix == flow.tls.session_id_prefix {
                flow.tls.flags |= tls_flags::SESSION_ID_ECHOED;
            }
            // Chosen cipher suite (2) and compression method (1).
            let extensions = after_id.wrapping_add(2 + 1);
            expect_hello_field(flow, side, item::HELLO_EXTENSIONS, extensions);
        }
    }
}

/// The ClientHello's cipher suites: skipped by their length.
#[inline(always)]
fn cipher_suites(flow: &mut FlowState, side: usize, value: u64) {
    let at = flow.dir[side]
        .cursor
        .wrapping_add(2 + (value as u16) as u32);
    expect_hello_field(flow, side, item::HELLO_COMPRESSION, at);
}

/// The ClientHello's compression methods: skipped by their length.
#[inline(always)]
fn compression(flow: &mut FlowState, side: usize, value: u64) {
    let at = flow.dir[side].cursor.wrapping_add(1 + (value as u8) as u32);
    expect_hello_field(flow, side, item::HELLO_EXTENSIONS, at);
}

/// The extensions' total length: where they end (no further than the message).
#[inline(always)]
fn extensions(flow: &mut FlowState, side: usize, value: u64) {
    let d = &flow.dir[side];
    let first = d.cursor.wrapping_add(2);
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

/// An extension's header: the facts its data holds, then the next extension.
#[inline(always)]
fn extension<P: Packet>(cx: &Cx<P>, flow: &mut FlowState, seg: &Seg, value: u64) {
    let side = cx.sender as usize;
    let etype = (value >> 16) as u16;
    let elen = (value & 0xffff) as u32;
    let data = flow.dir[side].cursor.wrapping_add(4);
    extension_facts(cx, flow, seg, etype, elen, data);
    let next = data.wrapping_add(elen);
    if before(next, flow.dir[side].ext_end) {
        expect_hello_field(flow, side, item::EXTENSION, next);
    } else {
        after_message(flow, side);
    }
}

/// A plaintext alert's level and description: reported, and a fatal one ends the
/// handshake.
#[inline(always)]
fn alert_body(flow: &mut FlowState, side: usize, value: u64, found: &mut Found) {
    let (level, description) = ((value >> 8) as u8, value as u8);
    let extra = Extra {
        alert: Some((level, description)),
        record_len: 2,
        ..Extra::default()
    };
    found.push(EventKind::PlaintextAlert, extra);
    if level == alert::FATAL
        && let Some(extra) = handshake_aborted(flow, abort::ALERT, Some((level, description)))
    {
        found.push(EventKind::HandshakeAborted, extra);
    }
    let rec_end = flow.dir[side].rec_end;
    expect(flow, side, item::RECORD, rec_end);
}

/// Facts from one hello extension. Values are read only when the segment holds them
/// (they follow their header, so they nearly always do).
#[inline(always)]
fn extension_facts<P: Packet>(
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
        // Counted once, and only for handshakes whose start was seen (as started ones are).
        if flow.tls.flags & tls_flags::HANDSHAKE_DONE == 0 && c & dir_flags::HELLO != 0 {
            counters::inc(Counter::HandshakesCompleted);
        }
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
    counters::inc(Counter::HandshakesFailed);
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
        && d.last_record_type == content_type::APPLICATION_DATA
        && d.last_record_len == CLOSE_NOTIFY_LEN
}
