//! A short, deterministic fuzz run of the compiled kernel program (the smoke of
//! `cargo xtask fuzz --kernel-frames N`): seeded valid, mutated and random frames through
//! BPF_PROG_TEST_RUN, every event checked against an independent reading of its frame,
//! every counter move against what that reading predicts.

use tests::kernel_fuzz::{Config, run};

const FRAMES: u64 = 30_000;

#[test]
fn kernel_program_survives_mutated_and_random_frames() {
    let artifacts = std::env::temp_dir().join(format!("kernel-fuzz-{}", std::process::id()));
    let r = run(&Config {
        seed: 0x5eed,
        frames: FRAMES,
        artifacts: Some(artifacts.clone()),
        ..Config::default()
    })
    .expect("running the fuzzer");
    let report: Vec<String> = r
        .violations
        .iter()
        .map(|v| format!("frame {}: {} ({:?})", v.index, v.what, v.reproducer))
        .collect();
    assert!(report.is_empty(), "violations:\n{}", report.join("\n"));
    let _ = std::fs::remove_dir_all(&artifacts);
    assert_eq!(r.frames, FRAMES);
    // The generator must reach every class of frame and the program's event paths, or
    // the run above proves little.
    for (what, n) in [
        ("TCP segments", r.tcp),
        ("non-TCP frames", r.not_tcp),
        ("fragments", r.fragments),
        ("malformed frames", r.malformed),
    ] {
        assert!(n >= FRAMES / 200, "only {n} {what} in {FRAMES} frames");
    }
    for kind in [
        "ProtocolMismatch",
        "PlaintextAlert",
        "HelloRequest",
        "HandshakeAborted",
        "IdleRst",
        "IdleRetransmit",
        "Tls13CloseHeuristic",
    ] {
        assert!(
            r.events_by_kind.get(kind).is_some_and(|&n| n > 0),
            "no {kind} event in {FRAMES} frames: {:?}",
            r.events_by_kind
        );
    }
}
