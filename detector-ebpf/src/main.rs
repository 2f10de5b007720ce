//! The detector's kernel program. The same parsing and flow logic runs as XDP on ingress and
//! as a TC classifier on egress, over one set of maps, so an endpoint sees both directions
//! of its own sessions. It never alters or drops a packet.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic fetch-and-add for the flow history (see tls.rs); the crate builds on nightly.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod payload;
#[cfg(target_arch = "bpf")]
mod tls;

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{TC_ACT_UNSPEC, xdp_action},
        helpers::bpf_ktime_get_boot_ns,
        macros::{classifier, map, xdp},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
        programs::{TcContext, XdpContext},
    };
    use detector_common::{
        Config, Counter, DEFAULT_FLOW_TABLE_SIZE, DEFAULT_UNCONFIRMED_TABLE_SIZE, EVENT_RING_BYTES,
        FlowKey, FlowState, MAX_TLS_PORTS, Sni,
    };

    use crate::{
        emit, flow,
        packet::{Packet, Tc, Xdp},
        parse::{self, Skip},
    };

    /// The flow table; the agent sets its size at load time.
    #[map]
    pub static FLOWS: LruHashMap<FlowKey, FlowState> =
        LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

    /// Flows seen from one side only so far (see flow.rs `create`); sized by the agent.
    #[map]
    pub static UNCONFIRMED: LruHashMap<FlowKey, FlowState> =
        LruHashMap::with_max_entries(DEFAULT_UNCONFIRMED_TABLE_SIZE, 0);

    /// SNI host names of flows, kept out of the per-packet state; sized like FLOWS.
    #[map]
    pub static SNI: LruHashMap<FlowKey, Sni> =
        LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

    /// Per-CPU room to build values too large for the BPF stack.
    #[map]
    pub static SCRATCH: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);
    #[map]
    pub static SNI_SCRATCH: PerCpuArray<Sni> = PerCpuArray::with_max_entries(1, 0);

    /// The slow-path programs, reached by tail call (see flow.rs); one array per program
    /// type, as the kernel requires.
    #[map]
    pub static XDP_SLOW: ProgramArray = ProgramArray::with_max_entries(1, 0);
    #[map]
    pub static TC_SLOW: ProgramArray = ProgramArray::with_max_entries(1, 0);
    #[map]
    pub static SLOW_ARGS: PerCpuArray<flow::SlowArgs> = PerCpuArray::with_max_entries(1, 0);
    #[map]
    pub static FOUND: PerCpuArray<emit::Found> = PerCpuArray::with_max_entries(1, 0);

    #[map]
    pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

    #[map]
    pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

    #[map]
    pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

    /// Server ports where TLS is expected (the value is unused).
    #[map]
    pub static TLS_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_TLS_PORTS, 0);

    #[inline(always)]
    pub fn count(c: Counter) {
        count_by(c, 1);
    }

    #[inline(always)]
    pub fn count_by(c: Counter, n: u64) {
        if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
            // SAFETY: per-CPU slot, so no other writer runs concurrently.
            unsafe { *v += n };
        }
    }

    /// The program's clock: capture time in replay, boot time live.
    #[inline(always)]
    fn clock() -> flow::Clock {
        let (override_ns, idle_ns, started_ns) = match CONFIG.get(0) {
            Some(c) => (c.clock_override_ns, c.idle_threshold_ns, c.started_ns),
            None => (0, detector_common::DEFAULT_IDLE_THRESHOLD_NS, 0),
        };
        let now = if override_ns != 0 {
            override_ns
        } else {
            // SAFETY: helper without preconditions.
            unsafe { bpf_ktime_get_boot_ns() }
        };
        flow::Clock {
            now,
            idle_ns,
            started_ns,
        }
    }

    #[inline(always)]
    fn process<P: Packet>(p: &P) {
        count(Counter::Packets);
        match parse::parse(p) {
            Ok(tcp) => {
                count(Counter::TcpPackets);
                flow::track(p, &tcp, &clock());
            }
            Err(Skip::NotTcp) => {}
            Err(Skip::Fragment) => count(Counter::Fragments),
            Err(Skip::Malformed) => count(Counter::Truncated),
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
        flow::slow_path(&Xdp(ctx));
        xdp_action::XDP_PASS
    }

    #[classifier]
    pub fn detector_tc_slow(ctx: TcContext) -> i32 {
        flow::slow_path(&Tc(ctx));
        TC_ACT_UNSPEC
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // SAFETY: the verifier rejects any reachable path to here; this only satisfies no_std.
        unsafe { core::hint::unreachable_unchecked() }
    }
}

#[cfg(target_arch = "bpf")]
pub use program::{
    EVENTS, FLOWS, FOUND, SCRATCH, SLOW_ARGS, SNI, SNI_SCRATCH, TC_SLOW, TLS_PORTS, UNCONFIRMED,
    XDP_SLOW, count, count_by,
};

/// Built for the host only so that `cargo check --workspace` passes; the real program is
/// built for the bpf target by detector-user's build script.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
