//! Field case 5's question: after how long does something on the path to a server forget
//! idle flows?

use std::{collections::HashMap, net::SocketAddr};

use crate::output::detail::TimeoutEstimate;

/// Each server endpoint's idle gaps are kept in two sets, gaps that flows survived and
/// gaps after which they died; the timeout lies between the longest survived and the
/// shortest fatal gap, and is estimated as the latter.
#[derive(Default)]
pub struct TimeoutEstimator {
    servers: HashMap<SocketAddr, Gaps>,
}

#[derive(Default, Clone)]
struct Gaps {
    survived: u64,
    survived_max_ns: u64,
    died_min_ns: Option<u64>,
    flows: u64,
}

/// Server endpoints tracked for timeout estimates; beyond this the quietest are dropped.
const MAX_ESTIMATED_SERVERS: usize = 4096;

impl TimeoutEstimator {
    pub(super) fn survived(&mut self, server: SocketAddr, gap_ns: u64) {
        let g = self.entry(server);
        g.survived += 1;
        g.survived_max_ns = g.survived_max_ns.max(gap_ns);
        g.flows += 1;
    }

    pub(super) fn died(&mut self, server: SocketAddr, gap_ns: u64) {
        let g = self.entry(server);
        g.died_min_ns = Some(g.died_min_ns.map_or(gap_ns, |d| d.min(gap_ns)));
        g.flows += 1;
    }

    fn entry(&mut self, server: SocketAddr) -> &mut Gaps {
        if !self.servers.contains_key(&server)
            && self.servers.len() >= MAX_ESTIMATED_SERVERS
            && let Some(k) = self
                .servers
                .iter()
                .min_by_key(|(_, g)| g.flows)
                .map(|(k, _)| *k)
        {
            self.servers.remove(&k);
        }
        self.servers.entry(server).or_default()
    }

    /// The estimate, once flows to the server have both survived idle gaps and died after
    /// a longer one: deaths alone (a server resetting idle clients itself, say) bound
    /// nothing about the path.
    pub fn estimate(&self, server: SocketAddr) -> Option<TimeoutEstimate> {
        let g = self.servers.get(&server)?;
        let died = g.died_min_ns?;
        (g.survived > 0 && died > g.survived_max_ns).then_some(TimeoutEstimate {
            seconds: died as f64 / 1e9,
            flows: g.flows,
        })
    }

    /// The `n` estimates resting on the most flows (metric labels stay bounded).
    pub fn top(&self, n: usize) -> Vec<(SocketAddr, TimeoutEstimate)> {
        let mut all: Vec<(SocketAddr, TimeoutEstimate)> = self
            .servers
            .keys()
            .filter_map(|s| self.estimate(*s).map(|e| (*s, e)))
            .collect();
        all.sort_by(|a, b| b.1.flows.cmp(&a.1.flows).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}
