//! `cargo xtask fuzz --kernel-frames N`: the kernel program on N generated frames through
//! BPF_PROG_TEST_RUN (see `tests::kernel_fuzz`). Prints what ran and what went wrong;
//! exits 1 on any violation. Needs root.
//!
//! Usage: kernel-fuzz [--frames N] [--seed S] [--max-seconds T] [--artifacts DIR]

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use tests::kernel_fuzz::{Config, run};

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kernel-fuzz: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<bool> {
    let mut cfg = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--frames" => cfg.frames = value()?.parse().context("--frames")?,
            "--seed" => cfg.seed = value()?.parse().context("--seed")?,
            "--max-seconds" => {
                cfg.max_time = Some(Duration::from_secs_f64(
                    value()?.parse().context("--max-seconds")?,
                ))
            }
            "--artifacts" => cfg.artifacts = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument {other}"),
        }
    }
    eprintln!(
        "kernel-fuzz: {} frames, seed {}, idle threshold {:?}",
        cfg.frames, cfg.seed, cfg.idle
    );
    let r = run(&cfg)?;
    println!(
        "kernel: {} frames in {:.1} s ({:.0} frames/s), seed {}",
        r.frames,
        r.elapsed.as_secs_f64(),
        r.rate(),
        cfg.seed
    );
    println!("  frames by origin: {:?}", r.by_origin);
    println!(
        "  read as: {} TCP segments, {} not TCP, {} fragments, {} malformed",
        r.tcp, r.not_tcp, r.fragments, r.malformed
    );
    println!("  events: {} {:?}", r.events, r.events_by_kind);
    println!("  counters moved: {:?}", r.counters);
    for v in &r.violations {
        println!("  VIOLATION at frame {}: {}", v.index, v.what);
        println!("    frame: {}", hex(&v.frame));
        if let Some(p) = &v.reproducer {
            println!("    reproducer (the frames up to it): {}", p.display());
        }
    }
    println!(
        "  violations: {}{}",
        r.violations.len(),
        if r.violations.len() >= 10 {
            " (a run stops at 10)"
        } else {
            ""
        }
    );
    Ok(r.violations.is_empty())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
