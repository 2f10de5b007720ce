//! The kernel stage: loading the program and talking to its maps (configuration in,
//! counters and events out), attaching it to interfaces, decoding its events. Live
//! attachment and replay both start here.

pub mod attach;
pub mod clock;
mod clsact;
pub mod event;
pub mod features;
pub mod link_events;
pub mod maps;
pub mod reader;
pub mod test_run;

use std::{
    io,
    os::fd::AsFd as _,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    util::KernelVersion,
};
use detector_common::{Config, names};
pub use maps::{Counters, FlowTable, SniMap};

/// The compiled kernel program, built by this crate's build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector-ebpf"));

/// Reference programs (an empty one, a minimal flow tracker) for benchmarks.
#[cfg(feature = "bench")]
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector-bench"));

#[derive(Clone, Debug)]
pub struct Options {
    /// Confirmed flows (both sides seen) the kernel tracks.
    pub flow_table_size: u32,
    /// Flows seen from one side only so far, kept apart so that one-sided floods cannot
    /// evict confirmed flows.
    pub unconfirmed_table_size: u32,
    pub tls_ports: Vec<u16>,
    /// Quiet time after which a flow counts as idle.
    pub idle_threshold: std::time::Duration,
    /// Bytes of the kernel → agent event ring: a power of two, a whole number of pages.
    pub ring_size: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            flow_table_size: detector_common::DEFAULT_FLOW_TABLE_SIZE,
            unconfirmed_table_size: detector_common::DEFAULT_UNCONFIRMED_TABLE_SIZE,
            tls_ports: detector_common::DEFAULT_TLS_PORTS.to_vec(),
            idle_threshold: std::time::Duration::from_nanos(
                detector_common::DEFAULT_IDLE_THRESHOLD_NS,
            ),
            ring_size: detector_common::EVENT_RING_BYTES,
        }
    }
}

/// The loaded program and its maps. Programs are loaded (verified) but not attached.
pub struct Kernel {
    pub ebpf: Ebpf,
    config_map: Array<MapData, Config>,
    config: Config,
    counters: Counters,
    events: RingBuf<MapData>,
    sni: Option<SniMap>,
    /// What the running kernel offers, probed before loading.
    pub features: features::Features,
}

impl Kernel {
    /// Loads the XDP and TC programs, as a live agent attaches them.
    pub fn load(opts: &Options) -> anyhow::Result<Kernel> {
        Kernel::load_with(opts, true)
    }

    /// Loads the XDP program (and its slow path) alone: replay runs nothing else, and
    /// verifying the TC programs would double its loading time for nothing.
    pub fn load_xdp(opts: &Options) -> anyhow::Result<Kernel> {
        Kernel::load_with(opts, false)
    }

    fn load_with(opts: &Options, with_tc: bool) -> anyhow::Result<Kernel> {
        crate::privilege::check()?;
        // Before anything is loaded, so a kernel that lacks something fails in one line.
        let features = features::Features::probe();
        let release = KernelVersion::current()
            .map(|v| v.to_string())
            .unwrap_or_else(|_| "of unknown version".into());
        features.check(&release)?;
        log::debug!("kernel {release}: {}", features.describe());
        if opts.flow_table_size == 0 {
            bail!("the flow table needs at least one entry (--flow-table-size)");
        }
        if opts.unconfirmed_table_size == 0 {
            bail!("the unconfirmed flow table needs at least one entry (--unconfirmed-table-size)");
        }
        if opts.tls_ports.len() > detector_common::MAX_TLS_PORTS as usize {
            bail!(
                "{} TLS ports given; the kernel's port set holds at most {}",
                opts.tls_ports.len(),
                detector_common::MAX_TLS_PORTS
            );
        }
        check_ring_size(opts.ring_size)?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::EVENTS, opts.ring_size)
            .map_max_entries(names::FLOWS, opts.flow_table_size)
            .map_max_entries(names::UNCONFIRMED, opts.unconfirmed_table_size)
            .map_max_entries(names::SNI, opts.flow_table_size)
            .load(OBJECT)
            .map_err(anyhow::Error::from)
            .map_err(explain_privileges)
            .context("loading the kernel program")?;

        let xdp: &mut Xdp = program(&mut ebpf, names::XDP_PROGRAM)?.try_into()?;
        xdp.load()
            .context("verifying the XDP program")
            .map_err(explain_privileges)?;
        // The slow paths, which the programs reach by tail call.
        let xdp_slow: &mut Xdp = program(&mut ebpf, names::XDP_SLOW_PATH)?.try_into()?;
        xdp_slow.load().context("verifying the XDP slow path")?;
        let xdp_slow = xdp_slow.fd()?.try_clone()?;
        ProgramArray::try_from(map(&mut ebpf, names::XDP_SLOW_ARRAY)?)?
            .set(0, &xdp_slow, 0)
            .context("installing the XDP slow path")?;
        if with_tc {
            let tc: &mut SchedClassifier = program(&mut ebpf, names::TC_PROGRAM)?.try_into()?;
            tc.load()
                .context("verifying the TC program")
                .map_err(explain_privileges)?;
            let tc_slow: &mut SchedClassifier =
                program(&mut ebpf, names::TC_SLOW_PATH)?.try_into()?;
            tc_slow.load().context("verifying the TC slow path")?;
            let tc_slow = tc_slow.fd()?.try_clone()?;
            ProgramArray::try_from(map(&mut ebpf, names::TC_SLOW_ARRAY)?)?
                .set(0, &tc_slow, 0)
                .context("installing the TC slow path")?;
        }

        let mut ports: HashMap<_, u16, u8> = HashMap::try_from(map(&mut ebpf, names::TLS_PORTS)?)?;
        for &p in &opts.tls_ports {
            ports
                .insert(p, 1, 0)
                .with_context(|| format!("adding TLS port {p} to the kernel's port set"))?;
        }
        let config_map = Array::try_from(take_map(&mut ebpf, names::CONFIG)?)?;
        let counters = Counters(Arc::new(Mutex::new(PerCpuArray::try_from(take_map(
            &mut ebpf,
            names::COUNTERS,
        )?)?)));
        let events = RingBuf::try_from(take_map(&mut ebpf, names::EVENTS)?)?;
        let sni = Some(SniMap(HashMap::try_from(take_map(&mut ebpf, names::SNI)?)?));
        let mut k = Kernel {
            ebpf,
            config_map,
            config: Config::default(),
            counters,
            events,
            sni,
            features,
        };
        k.config = Config {
            clock_override_ns: 0,
            idle_threshold_ns: opts.idle_threshold.as_nanos().min(u64::MAX as u128) as u64,
            started_ns: clock::boottime_ns(),
            clock_in_meta: 0,
        };
        k.write_config()?;
        Ok(k)
    }

    pub fn xdp(&mut self) -> anyhow::Result<&mut Xdp> {
        Ok(program(&mut self.ebpf, names::XDP_PROGRAM)?.try_into()?)
    }

    pub fn tc(&mut self) -> anyhow::Result<&mut SchedClassifier> {
        Ok(program(&mut self.ebpf, names::TC_PROGRAM)?.try_into()?)
    }

    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// A handle on the confirmed flow table that can live beside this one (its own fd).
    pub fn flow_table(&self) -> anyhow::Result<FlowTable> {
        self.lru_table(names::FLOWS)
    }

    /// A handle on the table of flows seen from one side only, likewise.
    pub fn unconfirmed_table(&self) -> anyhow::Result<FlowTable> {
        self.lru_table(names::UNCONFIRMED)
    }

    fn lru_table(&self, name: &str) -> anyhow::Result<FlowTable> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the compiled object"))?;
        let aya::maps::Map::LruHashMap(data) = map else {
            bail!("map {name} is not an LRU hash map");
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating the fd of map {name}"))?;
        let data = MapData::from_fd(fd).with_context(|| format!("opening map {name}"))?;
        Ok(FlowTable(Arc::new(Mutex::new(
            HashMap::try_from(aya::maps::Map::LruHashMap(data))
                .with_context(|| format!("map {name} as a flow table"))?,
        ))))
    }

    pub fn events(&mut self) -> &mut RingBuf<MapData> {
        &mut self.events
    }

    /// Hands the SNI map to whoever correlates events (once).
    pub fn take_sni(&mut self) -> Option<SniMap> {
        self.sni.take()
    }

    fn write_config(&mut self) -> anyhow::Result<()> {
        self.config_map
            .set(0, self.config, 0)
            .context("writing the kernel program's configuration")
    }

    /// Makes the program's clock read `ns` (replay); zero returns it to kernel time.
    pub fn set_clock(&mut self, ns: u64) -> anyhow::Result<()> {
        self.config.clock_override_ns = ns;
        self.write_config()
    }

    /// Declares when the detector started on the program's clock (replay: the first
    /// packet's capture time).
    pub fn set_started(&mut self, ns: u64) -> anyhow::Result<()> {
        self.config.started_ns = ns;
        self.write_config()
    }

    /// Replay: from now on the XDP program takes its clock from the capture time each
    /// frame carries in its metadata ([`Kernel::run_xdp_replayed`]).
    pub fn set_clock_in_meta(&mut self, on: bool) -> anyhow::Result<()> {
        self.config.clock_in_meta = u64::from(on);
        self.write_config()
    }

    /// Runs the XDP program once on `input`, a frame behind its capture time as
    /// [`test_run::push_frame`] writes them: one BPF_PROG_TEST_RUN, nothing copied back.
    /// Returns the verdict.
    pub fn run_xdp_replayed(&mut self, input: &[u8]) -> anyhow::Result<u32> {
        let ctx = test_run::meta_context(input.len());
        let opts = TestRunOptions {
            data_in: Some(input),
            ctx_in: Some(&ctx),
            ..Default::default()
        };
        let r = self.xdp()?.test_run(opts).with_context(|| {
            format!(
                "BPF_PROG_TEST_RUN on a {}-byte frame with its capture time as metadata",
                input.len().saturating_sub(detector_common::REPLAY_META_LEN)
            )
        })?;
        Ok(r.return_value)
    }

    /// Runs the XDP program once on `frame` with BPF_PROG_TEST_RUN; returns its verdict.
    pub fn run_xdp(&mut self, frame: &[u8]) -> anyhow::Result<u32> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        };
        let r = self
            .xdp()?
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN on a {}-byte frame", frame.len()))?;
        Ok(r.return_value)
    }

    /// Takes every event waiting in the ring buffer.
    pub fn drain_events(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(item.to_vec());
        }
        out
    }

    /// Instructions of each program after verification (translated size / 8 bytes).
    pub fn instruction_counts(&self) -> anyhow::Result<Vec<(&'static str, u32, u32)>> {
        [
            names::XDP_PROGRAM,
            names::XDP_SLOW_PATH,
            names::TC_PROGRAM,
            names::TC_SLOW_PATH,
        ]
        .into_iter()
        .map(|name| {
            let p = self
                .ebpf
                .program(name)
                .ok_or_else(|| anyhow!("program {name} missing"))?;
            let info = p.info()?;
            Ok((
                name,
                info.size_translated().unwrap_or(0) / 8,
                info.verified_instruction_count().unwrap_or(0),
            ))
        })
        .collect()
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the compiled object"))
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the compiled object"))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the compiled object"))
}

/// Turns a bare EPERM/EACCES somewhere in the chain into the advice a user needs.
pub fn explain_privileges(e: anyhow::Error) -> anyhow::Error {
    let denied = e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)))
    });
    if denied {
        e.context(
            "permission denied: run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
             (e.g. `sudo setcap cap_bpf,cap_net_admin,cap_perfmon+ep target/release/detector`; \
             see the README's section on privileges)",
        )
    } else {
        e
    }
}

fn page_size() -> anyhow::Result<u32> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| anyhow!("reading the page size (sysconf returned {n})"))
}

/// The kernel takes a ring of a power-of-two number of pages and nothing else; say so
/// before it answers EINVAL.
pub fn check_ring_size(bytes: u32) -> anyhow::Result<()> {
    ring_size_for_page(bytes, page_size()?)
}

fn ring_size_for_page(bytes: u32, page: u32) -> anyhow::Result<()> {
    if bytes < page || !bytes.is_power_of_two() || !bytes.is_multiple_of(page) {
        bail!(
            "--ring-size {bytes}: the event ring must be a power of two and a multiple of the \
             page size ({page} bytes), e.g. {page}, {} or the default {}",
            page * 16,
            detector_common::EVENT_RING_BYTES
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_the_kernel_takes() {
        for ok in [4096, 8192, 1 << 20, 1 << 30] {
            ring_size_for_page(ok, 4096).unwrap();
        }
        for bad in [0, 1, 2048, 4095, 6144, 4096 * 3, (1 << 20) + 4096] {
            let e = ring_size_for_page(bad, 4096).expect_err("an impossible ring size passed");
            let msg = format!("{e:#}");
            assert!(msg.contains("--ring-size") && msg.contains("4096"), "{msg}");
        }
        // A 64 KiB-page kernel refuses 4 KiB rings.
        assert!(ring_size_for_page(4096, 65536).is_err());
    }

    #[test]
    fn impossible_ring_is_refused_before_loading() {
        let opts = Options {
            ring_size: 5000,
            ..Options::default()
        };
        let Err(e) = Kernel::load(&opts) else {
            panic!("a ring of 5000 bytes was accepted");
        };
        assert!(format!("{e:#}").contains("--ring-size"), "{e:#}");
    }

    #[test]
    fn empty_tables_are_refused_before_loading() {
        for (opts, flag) in [
            (
                Options {
                    flow_table_size: 0,
                    ..Options::default()
                },
                "--flow-table-size",
            ),
            (
                Options {
                    unconfirmed_table_size: 0,
                    ..Options::default()
                },
                "--unconfirmed-table-size",
            ),
        ] {
            let Err(e) = Kernel::load(&opts) else {
                panic!("a table of 0 entries was accepted");
            };
            assert!(format!("{e:#}").contains(flag), "{e:#}");
        }
    }
}
