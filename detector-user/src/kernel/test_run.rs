//! One BPF_PROG_TEST_RUN per replayed frame, clock included.
//!
//! The frame's capture time travels in front of it as XDP metadata: the input buffer
//! holds the time ([`REPLAY_META_LEN`] bytes) and then the frame, and the context
//! (`struct xdp_md`) says where the frame starts (`data`). The kernel
//! (`bpf_prog_test_run_xdp`, Linux 5.14 and later) puts the buffer in a page with the
//! time just before the frame, as `data_meta`, so the program reads the clock from there
//! (when the agent turned `Config::clock_in_meta` on) instead of from a map the agent
//! would have to update first: one system call per frame instead of two. No output
//! buffer is given, so nothing is copied back.

use detector_common::REPLAY_META_LEN;

/// `struct xdp_md` of the kernel's UAPI (`include/uapi/linux/bpf.h`), as a test run takes
/// it: offsets into the input buffer, and interface fields that must stay zero here (an
/// ingress interface would have to exist; an egress one is refused).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    /// The kernel requires 0: nothing may precede the metadata.
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// The test-run context for an input of `len` bytes whose first [`REPLAY_META_LEN`] are
/// metadata.
pub(super) fn meta_context(len: usize) -> [u8; size_of::<XdpMd>()] {
    let md = XdpMd {
        data: REPLAY_META_LEN as u32,
        data_end: len as u32,
        ..XdpMd::default()
    };
    let mut out = [0u8; size_of::<XdpMd>()];
    for (chunk, v) in out.chunks_exact_mut(4).zip([
        md.data,
        md.data_end,
        md.data_meta,
        md.ingress_ifindex,
        md.rx_queue_index,
        md.egress_ifindex,
    ]) {
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    out
}

/// Appends a replayed frame as the program takes it: capture time, then the frame.
pub fn push_frame(buf: &mut Vec<u8>, ts_ns: u64, frame: &[u8]) {
    buf.extend_from_slice(&ts_ns.to_ne_bytes());
    buf.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_points_past_the_time() {
        let ctx = meta_context(REPLAY_META_LEN + 60);
        let word = |i: usize| u32::from_ne_bytes(ctx[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(word(0), REPLAY_META_LEN as u32, "data");
        assert_eq!(word(1), (REPLAY_META_LEN + 60) as u32, "data_end");
        assert!((2..6).all(|i| word(i) == 0), "meta and interfaces zero");
        let mut buf = Vec::new();
        push_frame(&mut buf, 0x0102_0304_0506_0708, &[0xaa; 3]);
        assert_eq!(&buf[..8], &0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(&buf[8..], &[0xaa; 3]);
    }
}
