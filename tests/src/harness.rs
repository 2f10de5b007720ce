//! The kernel program under BPF_PROG_TEST_RUN, with its events decoded and correlated the
//! way the agent does it.

use std::{net::SocketAddr, time::Duration};

use aya::maps::HashMap;
use detector_common::{Counter, FlowKey, FlowState, names};
use detector_user::{
    clock::Clock,
    correlate::Correlator,
    diagnosis::Diagnosis,
    event::{KernelEvent, addr},
    kernel::{Kernel, Options},
};

use crate::frames::Frame;

pub const XDP_PASS: u32 = 2;

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
        let kernel = Kernel::load(&opts).expect("loading the kernel program (are you root?)");
        Harness {
            kernel,
            now_ns: 1_700_000_000_000_000_000,
        }
    }

    /// Runs one raw frame; asserts the program let it pass; returns the events it sent.
    pub fn run_raw(&mut self, frame: &[u8]) -> Vec<KernelEvent> {
        self.now_ns += 1_000_000;
        self.kernel
            .set_clock(self.now_ns)
            .expect("setting the clock");
        let verdict = self.kernel.run_xdp(frame).expect("BPF_PROG_TEST_RUN");
        assert_eq!(
            verdict, XDP_PASS,
            "the detector must never drop or redirect"
        );
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

    pub fn counter(&self, c: Counter) -> u64 {
        self.kernel.counters().get(c).expect("reading counters")
    }

    /// The kernel's state for a flow, read from its map.
    pub fn flow(&self, client: SocketAddr, server: SocketAddr) -> FlowState {
        let map: HashMap<_, FlowKey, FlowState> =
            HashMap::try_from(self.kernel.ebpf.map(names::FLOWS).expect("FLOWS map"))
                .expect("FLOWS is a hash map");
        let (key, _) = FlowKey::normalised(
            &addr(client.ip()),
            client.port(),
            &addr(server.ip()),
            server.port(),
        );
        map.get(&key, 0).expect("the flow is in the table")
    }
}

impl Default for Harness {
    fn default() -> Harness {
        Harness::new()
    }
}

/// What the agent would conclude from these events.
pub fn diagnose(events: &[KernelEvent]) -> Vec<Diagnosis> {
    let mut c = Correlator::new(Clock::Capture, Duration::from_secs(2), 1024);
    let mut out: Vec<Diagnosis> = events.iter().flat_map(|e| c.ingest(e, None)).collect();
    out.extend(c.flush());
    out
}
