//! Handles on the kernel program's maps that outlive the loader's borrow: the SNI map the
//! event reader consults, the flow tables and counters the metrics endpoint reads.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow};
use aya::maps::{HashMap, MapData, PerCpuArray};
use detector_common::{Counter, FlowKey, FlowState, Sni};

/// The kernel's SNI map: host names of flows, read when an event needs one.
pub struct SniMap(pub(super) HashMap<MapData, FlowKey, Sni>);

impl SniMap {
    /// The flow's host name, escaped for display (a ClientHello may carry any bytes in it).
    pub fn lookup(&self, client: SocketAddr, server: SocketAddr) -> Option<String> {
        let key = super::event::flow_key(client, server);
        let sni = self.0.get(&key, 0).ok()?;
        let name = &sni.name[..usize::from(sni.len).min(sni.name.len())];
        Some(crate::output::escape::escape(name))
    }
}

/// A second handle on one of the kernel's flow tables (confirmed or unconfirmed), for the
/// eviction metrics: counting what is present tells, against what was created, what the
/// LRU evicted.
#[derive(Clone)]
pub struct FlowTable(pub(super) Arc<Mutex<HashMap<MapData, FlowKey, FlowState>>>);

impl FlowTable {
    /// Entries present now. One syscall per entry, so it is counted on a thread of its
    /// own (`output::occupancy`), never per scrape or on the event loop.
    pub fn count(&self) -> anyhow::Result<u64> {
        let map = self
            .0
            .lock()
            .map_err(|_| anyhow!("flow table lock poisoned"))?;
        Ok(map.keys().filter(|k| k.is_ok()).count() as u64)
    }
}

/// Shared handle on the per-CPU counters, so the metrics endpoint can read them while the
/// event loop owns the rest of the program.
#[derive(Clone)]
pub struct Counters(pub(super) Arc<Mutex<PerCpuArray<MapData, u64>>>);

impl Counters {
    /// Every counter summed over CPUs, in [`Counter::ALL`] order.
    pub fn read(&self) -> anyhow::Result<[u64; Counter::COUNT as usize]> {
        let map = self
            .0
            .lock()
            .map_err(|_| anyhow!("counter map lock poisoned"))?;
        let mut out = [0u64; Counter::COUNT as usize];
        for c in Counter::ALL {
            let per_cpu = map
                .get(&(c as u32), 0)
                .with_context(|| format!("reading kernel counter {}", c.metric_name()))?;
            out[c as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    pub fn get(&self, c: Counter) -> anyhow::Result<u64> {
        Ok(self.read()?[c as usize])
    }
}
