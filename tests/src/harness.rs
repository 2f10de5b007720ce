//! The kernel program under BPF_PROG_TEST_RUN, with its events decoded and correlated the
//! way the agent does it.

use std::{net::SocketAddr, time::Duration};

use aya::maps::HashMap;
use detector_common::{Counter, FlowKey, FlowState, names};
use detector_user::{
    correlate::Correlator,
    kernel::{
        Kernel, Options,
        clock::Clock,
        event::{KernelEvent, flow_key},
    },
    output::diagnosis::Diagnosis,
};

use crate::frames::Frame;

pub const XDP_PASS: u32 = 2;
/// The largest frame BPF_PROG_TEST_RUN hands an XDP program whole: a page less the XDP
/// headroom (256) and the room kept for `skb_shared_info` (320 on x86_64).
pub const MAX_LINEAR_FRAME: usize = 4096 - 256 - 320;

pub struct Harness {
    pub kernel: Kernel,
    /// Program clock for the next frame; advanced by 1 ms per frame so events are ordered.
    pub now_ns: u64,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with(Options::default())
    }

    pub fn with(opts: Options) -> Harness {
        let mut kernel = Kernel::load(&opts).expect("loading the kernel program (are you root?)");
        let now_ns = 1_700_000_000_000_000_000;
        // The detector "starts" at the harness's clock, as replay does at the first packet.
        kernel.set_started(now_ns).expect("setting the start time");
        Harness { kernel, now_ns }
    }

    /// Runs one raw frame; asserts the program let it pass; returns the events it sent.
    pub fn run_raw(&mut self, frame: &[u8]) -> Vec<KernelEvent> {
        self.run_undrained(frame);
        self.drain()
    }

    /// Runs one raw frame and leaves its events in the ring, as a reader that has fallen
    /// behind would.
    pub fn run_undrained(&mut self, frame: &[u8]) {
        // BPF_PROG_TEST_RUN puts the bytes of a larger frame past the first page's linear
        // part in fragments, which the program (not loaded for multi-buffer XDP, as live
        // frames never have them) does not see: a test would silently walk less than it
        // built. Replay splits super-packets into MTU frames for the same reason.
        assert!(
            frame.len() <= MAX_LINEAR_FRAME,
            "a {}-byte frame is more than the {MAX_LINEAR_FRAME} bytes the program sees in a \
             test run: split its payload into more segments",
            frame.len()
        );
        self.now_ns += 1_000_000;
        self.kernel
            .set_clock(self.now_ns)
            .expect("setting the clock");
        let verdict = self.kernel.run_xdp(frame).expect("BPF_PROG_TEST_RUN");
        assert_eq!(
            verdict, XDP_PASS,
            "the detector must never drop or redirect"
        );
    }

    /// Every event waiting in the ring, decoded.
    pub fn drain(&mut self) -> Vec<KernelEvent> {
        self.kernel
            .drain_events()
            .iter()
            .map(|r| KernelEvent::decode(r).expect("decodable event"))
            .collect()
    }

    pub fn run(&mut self, frame: &Frame) -> Vec<KernelEvent> {
        self.run_raw(&frame.build())
    }

    /// Runs frames in order; returns all events.
    pub fn run_all(&mut self, frames: &[Frame]) -> Vec<KernelEvent> {
        frames.iter().flat_map(|f| self.run(f)).collect()
    }

    /// Lets `d` pass on the program's clock before the next frame.
    pub fn advance(&mut self, d: Duration) {
        self.now_ns += d.as_nanos() as u64;
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.kernel.counters().get(c).expect("reading counters")
    }

    /// The kernel's state for a flow, read from the confirmed table, or else from the
    /// unconfirmed one.
    pub fn flow(&self, client: SocketAddr, server: SocketAddr) -> FlowState {
        let key = flow_key(client, server);
        [names::FLOWS, names::UNCONFIRMED]
            .iter()
            .find_map(|name| {
                let map: HashMap<_, FlowKey, FlowState> =
                    HashMap::try_from(self.kernel.ebpf.map(name).expect("flow map"))
                        .expect("a flow table is a hash map");
                map.get(&key, 0).ok()
            })
            .expect("the flow is in a table")
    }

    /// Overwrites the kernel's state for a flow in the table that holds it: how a test
    /// puts a flow in a state only concurrency reaches (held by another CPU's walk).
    pub fn set_flow(&mut self, client: SocketAddr, server: SocketAddr, state: &FlowState) {
        let key = flow_key(client, server);
        for name in [names::FLOWS, names::UNCONFIRMED] {
            let mut map: HashMap<_, FlowKey, FlowState> =
                HashMap::try_from(self.kernel.ebpf.map_mut(name).expect("flow map"))
                    .expect("a flow table is a hash map");
            if map.get(&key, 0).is_ok() {
                map.insert(key, state, 0).expect("updating the flow");
                return;
            }
        }
        panic!("the flow is in no table");
    }
}

impl Default for Harness {
    fn default() -> Harness {
        Harness::new()
    }
}

/// What the agent would conclude from these events.
pub fn diagnose(events: &[KernelEvent]) -> Vec<Diagnosis> {
    diagnose_idle(
        events,
        Duration::from_nanos(detector_common::DEFAULT_IDLE_THRESHOLD_NS),
    )
}

/// The same, with the agent's idle threshold set.
pub fn diagnose_idle(events: &[KernelEvent], idle: Duration) -> Vec<Diagnosis> {
    let mut c =
        Correlator::new(Clock::Capture, Duration::from_secs(2), 1024).with_idle_threshold(idle);
    let mut out: Vec<Diagnosis> = events.iter().flat_map(|e| c.ingest(e, None)).collect();
    out.extend(c.flush());
    out
}
