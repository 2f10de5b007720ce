//! The detector's kernel program. The same parsing and flow logic runs as XDP on ingress and
//! as a TC classifier on egress, over one set of maps, so an endpoint sees both directions
//! of its own sessions. It never alters or drops a packet.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic fetch-and-add for the flow history (see tls/items.rs `history`); the crate builds on nightly.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod fast;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod owner;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod payload;
#[cfg(target_arch = "bpf")]
mod slow;
#[cfg(target_arch = "bpf")]
mod tls;
#[cfg(target_arch = "bpf")]
mod verifier;

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{TC_ACT_UNSPEC, xdp_action},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };
    use detector_common::Counter;

    use crate::{
        fast,
        maps::{config, counters},
        packet::{Packet, Tc, Xdp},
        parse::{self, Skip},
        slow,
    };

    #[inline(always)]
    fn process<P: Packet>(p: &P) {
        counters::inc(Counter::Packets);
        match parse::parse(p) {
            Ok(tcp) => {
                counters::inc(Counter::TcpPackets);
                fast::track(p, &tcp, &config::clock(p));
            }
            Err(Skip::NotTcp) => {}
            Err(Skip::Fragment) => counters::inc(Counter::Fragments),
            Err(Skip::Malformed) => counters::inc(Counter::Truncated),
        }
    }

    #[xdp]
    pub fn detector_xdp(ctx: XdpContext) -> u32 {
        process(&Xdp(ctx));
        xdp_action::XDP_PASS
    }

    #[classifier]
    pub fn detector_tc(ctx: TcContext) -> i32 {
        process(&Tc(ctx));
        // "Not my decision": the packet continues as if we were not there.
        TC_ACT_UNSPEC
    }

    #[xdp]
    pub fn detector_xdp_slow(ctx: XdpContext) -> u32 {
        slow::run(&Xdp(ctx));
        xdp_action::XDP_PASS
    }

    #[classifier]
    pub fn detector_tc_slow(ctx: TcContext) -> i32 {
        slow::run(&Tc(ctx));
        TC_ACT_UNSPEC
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // SAFETY: the verifier rejects any reachable path to here; this only satisfies no_std.
        unsafe { core::hint::unreachable_unchecked() }
    }
}

/// Built for the host only so that `cargo check --workspace` passes; the real program is
/// built for the bpf target by detector-user's build script.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
