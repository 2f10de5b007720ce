//! `cargo xtask bench`: the detector's XDP program against an empty XDP program and a
//! minimal flow tracker, all loaded in one run and driven by BPF_PROG_TEST_RUN on the same
//! frames. Reports nanoseconds per packet and the ratios the targets are stated in; then
//! the cost of a `/metrics` scrape with a full flow table (see `kernel/scrape.rs`).
//!
//! Stateless paths (no per-flow change from one run to the next) run once with the
//! kernel's own repeat loop. Paths that change flow state (a record header moves the
//! walker's cursor; a ClientHello is a first payload) are restored from a snapshot before
//! every run and run with repeat 1, so each run takes the path being measured. Restoring
//! replaces the flow's map entry, whose memory is then cold for the run; the trackers'
//! entries are replaced the same way before each of their runs, so that the ratios
//! compare the programs' work and not what the restore leaves in the caches.

use std::{env, time::Duration};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::HashMap,
    programs::{TestRun, TestRunOptions, Xdp},
};
use detector_common::{
    Counter, FlowKey, FlowState, names,
    tls::{
        content_type::{APPLICATION_DATA, CHANGE_CIPHER_SPEC, HANDSHAKE},
        extension::{SESSION_TICKET, SUPPORTED_VERSIONS},
        version::{TLS1_2, TLS1_3},
    },
};
use detector_user::kernel::{BENCH_OBJECT, event::flow_key};
use tests::{
    frames::{self, Conversation, Frame, Hello, record},
    harness::Harness,
};

#[path = "kernel/scrape.rs"]
mod scrape;

/// TLS data mid-record against the tracker with the detector's key size, and above the
/// empty program (10 GbE minimum-size line rate).
const TLS_DATA_TARGET: f64 = 1.10;
const TLS_DATA_TARGET_NS: f64 = 67.0;
/// A packet starting an application-data record (the bulk case) against the tracker.
const RECORD_HEADER_TARGET: f64 = 1.5;
const NON_TCP_TARGET_NS: f64 = 15.0;

fn repeat() -> u32 {
    env::var("BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn stateful_runs() -> u32 {
    env::var("BENCH_STATEFUL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn run_repeat(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<Duration> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok(r.duration)
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    /// The flow to restore before each run, for stateful paths.
    restore: Option<(FlowKey, FlowState)>,
}

/// The reference trackers' flow tables (their keys as detector-bench.rs builds them).
#[derive(Clone, Copy)]
enum Tracker {
    Narrow,
    Wide,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct NarrowKey {
    src: u32,
    dst: u32,
    ports: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct WideKey {
    a: [u64; 2],
    b: [u64; 2],
    ports: u32,
    pad: u32,
}

// SAFETY: plain data with no padding, as the programs' keys.
unsafe impl aya::Pod for NarrowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for WideKey {}

impl Tracker {
    /// Replaces the frame's entry in the tracker's table, as restoring the detector's
    /// flow replaces its entry.
    fn restore(self, bench: &mut Ebpf, frame: &[u8]) -> Result<()> {
        // Ethernet/IPv4 without options: addresses at 26 and 30, ports at 34.
        let word = |at: usize| u32::from_ne_bytes(frame[at..at + 4].try_into().expect("4 bytes"));
        let (src, dst, ports) = (word(26), word(30), word(34));
        match self {
            Tracker::Narrow => {
                let mut m: HashMap<_, NarrowKey, u64> =
                    HashMap::try_from(bench.map_mut("BENCH_FLOWS").context("BENCH_FLOWS")?)?;
                m.insert(NarrowKey { src, dst, ports }, 0, 0)?;
            }
            Tracker::Wide => {
                let mut m: HashMap<_, WideKey, u64> = HashMap::try_from(
                    bench
                        .map_mut("BENCH_FLOWS_WIDE")
                        .context("BENCH_FLOWS_WIDE")?,
                )?;
                let key = WideKey {
                    a: [0, 0xffff_0000 | u64::from(src) << 32],
                    b: [0, 0xffff_0000 | u64::from(dst) << 32],
                    ports,
                    pad: 0,
                };
                m.insert(key, 0, 0)?;
            }
        }
        Ok(())
    }
}

fn key_of(conv: &Conversation) -> FlowKey {
    let (c, s) = (conv.client_addr(), conv.server_addr());
    flow_key(c, s)
}

fn main() -> Result<()> {
    let mut h = Harness::new();
    let mut bench = EbpfLoader::new()
        .load(BENCH_OBJECT)
        .context("loading the reference programs")?;
    for name in ["bench_empty", "bench_tracker", "bench_tracker_wide"] {
        let p: &mut Xdp = bench.program_mut(name).context(name)?.try_into()?;
        p.load()?;
    }

    // A tracked TLS 1.2 session, walked up to a 16 KB application-data record.
    let mut conv = Conversation::v4(443);
    let mut setup = vec![
        conv.syn_ack(),
        conv.client(&frames::client_hello("bench.example")),
    ];
    setup.push(conv.server(&record(HANDSHAKE, &Hello::server().server_hello())));
    let mut ccs = record(CHANGE_CIPHER_SPEC, &[1]);
    ccs.extend(record(HANDSHAKE, &[0xa5; 40]));
    setup.push(conv.client(&ccs));
    setup.push(conv.server(&ccs));
    let big = record(APPLICATION_DATA, &vec![0x5a; 16_000]);
    let segs = conv.server_segments(&big, &[1448; 11]);
    setup.push(segs[0].clone());
    h.run_all(&setup);
    let mid_record = segs[1].build();
    let ack = conv.client_flags(frames::ACK).build();
    let tracked_key = key_of(&conv);

    // A record header starting a segment: snapshot the flow just before it.
    h.run_all(&segs[2..]);
    let header_frame = conv
        .server(&record(APPLICATION_DATA, &[0x5a; 1000]))
        .build();
    let before_header = h.flow(conv.client_addr(), conv.server_addr());

    // A ClientHello as the first payload of a fresh flow.
    let mut fresh = Conversation::new(("10.1.0.7".parse()?, 41_000), ("10.2.0.1".parse()?, 443));
    h.run(&fresh.syn_ack());
    let before_hello = h.flow(fresh.client_addr(), fresh.server_addr());
    let hello = fresh
        .client(&record(
            HANDSHAKE,
            &Hello::client("bench.example")
                .with(SUPPORTED_VERSIONS, frames::versions_ext(&[TLS1_3, TLS1_2]))
                .with(SESSION_TICKET, vec![0; 160])
                .client_hello(),
        ))
        .build();

    let mut udp = Frame::tcp("10.1.0.1".parse()?, 5353, "10.2.0.1".parse()?, 53);
    udp.protocol = 17;
    udp.payload = vec![0; 60];

    let cases = [
        Case {
            name: "non-TCP (UDP)",
            frame: udp.build(),
            restore: None,
        },
        Case {
            name: "TCP ACK, no payload",
            frame: ack,
            restore: None,
        },
        Case {
            name: "TLS data, mid-record",
            frame: mid_record,
            restore: None,
        },
        Case {
            name: "TLS record header",
            frame: header_frame,
            restore: Some((tracked_key, before_header)),
        },
        Case {
            name: "ClientHello",
            frame: hello,
            restore: Some((key_of(&fresh), before_hello)),
        },
    ];

    let repeat = repeat();
    let stateful = stateful_runs();
    println!(
        "BPF_PROG_TEST_RUN, ns/packet (stateless: repeat {repeat}; stateful: {stateful} runs, \
         flow restored before each)"
    );
    println!(
        "{:<22} {:>9} {:>9} {:>11} {:>7} {:>12} {:>11} {:>13}",
        "frame",
        "detector",
        "tracker",
        "tracker-40B",
        "empty",
        "det/tracker",
        "det/trk-40B",
        "det-empty ns"
    );
    let (mut tls_data_ratio, mut tls_data_over) = (0.0, 0.0);
    let mut header_ratio = 0.0;
    let mut non_tcp_over = 0.0;
    // Which path the detector's runs of each case took.
    let mut paths = Vec::new();
    for case in &cases {
        // Warm the trackers' tables so their lookups hit, as the detector's does.
        let tracker: &Xdp = bench
            .program("bench_tracker")
            .context("tracker")?
            .try_into()?;
        run_repeat(tracker, &case.frame, 1)?;
        let wide: &Xdp = bench
            .program("bench_tracker_wide")
            .context("wide tracker")?
            .try_into()?;
        run_repeat(wide, &case.frame, 1)?;
        let measure = |bench: &mut Ebpf, name: &str, table: Option<Tracker>| -> Result<f64> {
            match &case.restore {
                None => {
                    let p: &Xdp = bench.program(name).context("program")?.try_into()?;
                    Ok(run_repeat(p, &case.frame, repeat)?.as_nanos() as f64)
                }
                Some(_) => {
                    let mut total = 0u128;
                    for _ in 0..stateful {
                        if let Some(table) = table {
                            table.restore(bench, &case.frame)?;
                        }
                        let p: &Xdp = bench.program(name).context("program")?.try_into()?;
                        total += run_repeat(p, &case.frame, 1)?.as_nanos();
                    }
                    Ok(total as f64 / stateful as f64)
                }
            }
        };
        let empty = measure(&mut bench, "bench_empty", None)?;
        let tracker = measure(&mut bench, "bench_tracker", Some(Tracker::Narrow))?;
        let wide = measure(&mut bench, "bench_tracker_wide", Some(Tracker::Wide))?;
        let path_counts = |h: &Harness| {
            (
                h.counter(Counter::TlsFastPathPackets),
                h.counter(Counter::SlowPathPackets),
            )
        };
        let before = path_counts(&h);
        let detector = match &case.restore {
            None => {
                h.kernel.set_clock(0)?;
                run_repeat(h.kernel.xdp()?, &case.frame, repeat)?.as_nanos() as f64
            }
            Some((key, state)) => {
                let mut total = 0u128;
                for _ in 0..stateful {
                    let mut flows: HashMap<_, FlowKey, FlowState> =
                        HashMap::try_from(h.kernel.ebpf.map_mut(names::FLOWS).context("FLOWS")?)?;
                    flows.insert(key, state, 0)?;
                    total += run_repeat(h.kernel.xdp()?, &case.frame, 1)?.as_nanos();
                }
                total as f64 / stateful as f64
            }
        };
        let after = path_counts(&h);
        paths.push((case.name, after.0 - before.0, after.1 - before.1));
        let ratio = detector / tracker;
        println!(
            "{:<22} {:>9.1} {:>9.1} {:>11.1} {:>7.1} {:>11.2}x {:>10.2}x {:>13.1}",
            case.name,
            detector,
            tracker,
            wide,
            empty,
            ratio,
            detector / wide,
            detector - empty
        );
        match case.name {
            "TLS data, mid-record" => {
                (tls_data_ratio, tls_data_over) = (detector / wide, detector - empty);
            }
            "TLS record header" => header_ratio = ratio,
            "non-TCP (UDP)" => non_tcp_over = detector - empty,
            _ => {}
        }
    }
    println!("detector runs per path (fast path stepped the record headers / slow path):");
    for (name, fast, slow) in &paths {
        println!("  {name:<22} {fast:>9} / {slow}");
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "target: TLS data mid-record <= {TLS_DATA_TARGET}x the tracker with the same key: \
         {tls_data_ratio:.2}x ({}); <= {TLS_DATA_TARGET_NS} ns above the empty program: \
         {tls_data_over:.1} ns ({})",
        verdict(tls_data_ratio <= TLS_DATA_TARGET),
        verdict(tls_data_over <= TLS_DATA_TARGET_NS)
    );
    println!(
        "target: a packet starting an application-data record <= {RECORD_HEADER_TARGET}x the \
         tracker: {header_ratio:.2}x ({})",
        verdict(header_ratio <= RECORD_HEADER_TARGET)
    );
    println!(
        "target: non-TCP <= {NON_TCP_TARGET_NS} ns above the empty program: {non_tcp_over:.1} ns ({})",
        verdict(non_tcp_over <= NON_TCP_TARGET_NS)
    );
    scrape::run()
}
