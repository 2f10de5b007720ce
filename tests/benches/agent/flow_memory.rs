//! The kernel's memory per tracked flow: key and value sizes of every map holding an entry
//! per flow (from detector-common's types), and what the kernel charges for each entry
//! (the `memlock` of the loaded map in `/proc/self/fdinfo`, measured at two table sizes
//! so the per-entry cost is told apart from fixed costs).

use std::fs;

use anyhow::{Context as _, Result, ensure};
use aya::maps::MapInfo;
use detector_common::{FlowKey, FlowState, Sni, names};
use detector_user::kernel::{Kernel, Options};

const BUDGET: u64 = 64 << 20;
/// Flow-table sizes loaded; the difference in memlock between them is per-entry cost.
const SIZES: [u32; 2] = [65_536, 131_072];

/// What the kernel reports of one loaded map.
#[derive(Clone, Copy, Default)]
struct Loaded {
    entries: u64,
    memlock: u64,
}

/// The per-flow maps of this process's loaded program.
fn loaded() -> Result<[(&'static str, Loaded); 3]> {
    let mut found = [
        (names::FLOWS, Loaded::default()),
        (names::SNI, Loaded::default()),
        (names::UNCONFIRMED, Loaded::default()),
    ];
    for entry in fs::read_dir("/proc/self/fdinfo")? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        let (Some(id), Some(entries), Some(memlock)) =
            (field("map_id:"), field("max_entries:"), field("memlock:"))
        else {
            continue;
        };
        let info = MapInfo::from_id(u32::try_from(id)?).context("reading a map's info")?;
        for (name, slot) in &mut found {
            if info.name_as_str() == Some(*name) {
                *slot = Loaded { entries, memlock };
            }
        }
    }
    for (name, l) in &found {
        ensure!(
            l.entries > 0,
            "map {name} not found among this process's fds"
        );
    }
    Ok(found)
}

pub fn run() -> Result<()> {
    let mut at = Vec::new();
    for size in SIZES {
        let kernel = Kernel::load(&Options {
            flow_table_size: size,
            ..Options::default()
        })
        .with_context(|| format!("loading the program with a {size}-entry flow table"))?;
        at.push(loaded()?);
        drop(kernel);
    }
    let (small, large) = (&at[0], &at[1]);
    let key = size_of::<FlowKey>();
    let sizes = [
        (key, size_of::<FlowState>()),
        (key, size_of::<Sni>()),
        (key, size_of::<FlowState>()),
    ];
    println!("kernel memory per tracked flow (memlock as /proc/self/fdinfo reports it)");
    println!(
        "{:<12} {:>5} {:>6} {:>10} {:>12} {:>14} {:>16}",
        "map", "key", "value", "entries", "memlock", "memlock/entry", "kernel per entry"
    );
    let mut data_per_flow = 0;
    let mut kernel_per_flow = 0.0;
    let mut fixed = 0;
    for (i, ((name, s), (_, l))) in small.iter().zip(large.iter()).enumerate() {
        let (k, v) = sizes[i];
        // The cost of one more entry: the memlock difference over the entry difference
        // (the unconfirmed table keeps its size, so it is all fixed cost).
        let per_entry = if l.entries != s.entries {
            (l.memlock - s.memlock) as f64 / (l.entries - s.entries) as f64
        } else {
            s.memlock as f64 / s.entries as f64
        };
        println!(
            "{:<12} {:>5} {:>6} {:>10} {:>12} {:>14.1} {:>16.1}",
            name,
            k,
            v,
            s.entries,
            s.memlock,
            s.memlock as f64 / s.entries as f64,
            per_entry
        );
        if *name == names::UNCONFIRMED {
            fixed += s.memlock;
        } else {
            data_per_flow += k + v;
            kernel_per_flow += per_entry;
            fixed += (s.memlock as f64 - per_entry * s.entries as f64).max(0.0) as u64;
        }
    }
    let flows = (BUDGET.saturating_sub(fixed)) as f64 / kernel_per_flow;
    println!(
        "per tracked flow (FLOWS + SNI): {data_per_flow} bytes of keys and values, \
         {kernel_per_flow:.0} bytes as the kernel charges them; fixed: {:.1} MiB (the \
         {}-entry unconfirmed table and table overhead)",
        fixed as f64 / (1 << 20) as f64,
        small[2].1.entries
    );
    println!(
        "flows in 64 MiB: {:.0} by the kernel's charge ({:.0} by keys and values alone)",
        flows,
        BUDGET as f64 / data_per_flow as f64
    );
    Ok(())
}
