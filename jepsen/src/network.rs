//! Every link of the cluster through its own [`LinkProxy`]: coordinator to coordinator, executor to
//! coordinator, executor to executor. Clients reach the coordinators directly, as Jepsen's clients
//! sit next to the nodes they talk to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use raftstream::local_cluster::{free_local_address, ExecutorRoutes};
use tokio_util::sync::CancellationToken;

use crate::proxy::LinkProxy;

/// A process on the network: `node-N` or an executor id.
pub type Endpoint = String;

pub fn node_endpoint(node_id: u64) -> Endpoint {
    format!("node-{node_id}")
}

/// The proxies of one cluster and the addresses they stand for.
pub struct Network {
    links: BTreeMap<(Endpoint, Endpoint), LinkProxy>,
    /// Coordinators' advertised addresses, by node id.
    pub node_addresses: BTreeMap<u64, String>,
    /// Executors' advertised (listen) addresses, by id.
    pub executor_addresses: BTreeMap<String, String>,
    stop: CancellationToken,
}

impl Network {
    /// Chooses addresses for `nodes` coordinators and the executors `executor_ids`, and starts a
    /// proxy for every directed link between them.
    pub async fn start(nodes: u64, executor_ids: &[String]) -> anyhow::Result<Network> {
        let stop = CancellationToken::new();
        let mut node_addresses = BTreeMap::new();
        for node_id in 1..=nodes {
            node_addresses.insert(node_id, free_local_address()?);
        }
        let mut executor_addresses = BTreeMap::new();
        for executor_id in executor_ids {
            executor_addresses.insert(executor_id.clone(), free_local_address()?);
        }
        let mut links = BTreeMap::new();
        let targets: Vec<(Endpoint, String)> = node_addresses
            .iter()
            .map(|(node_id, address)| (node_endpoint(*node_id), address.clone()))
            .chain(
                executor_addresses
                    .iter()
                    .map(|(id, address)| (id.clone(), address.clone())),
            )
            .collect();
        for (from, _) in &targets {
            for (to, address) in &targets {
                // Coordinators never dial executors (executors hold the session), and nobody
                // dials itself.
                let to_executor = executor_addresses.contains_key(to);
                let from_node = from.starts_with("node-") && !executor_addresses.contains_key(from);
                if from == to || (from_node && to_executor) {
                    continue;
                }
                let proxy = LinkProxy::start(address, stop.clone()).await?;
                links.insert((from.clone(), to.clone()), proxy);
            }
        }
        Ok(Network {
            links,
            node_addresses,
            executor_addresses,
            stop,
        })
    }

    fn proxy_address(&self, from: &str, to: &str) -> Option<String> {
        self.links
            .get(&(from.to_owned(), to.to_owned()))
            .map(|proxy| proxy.address.clone())
    }

    /// For each coordinator: the peers' addresses it dials through its proxies.
    pub fn coordinator_dial(&self) -> BTreeMap<u64, BTreeMap<String, String>> {
        self.node_addresses
            .keys()
            .map(|node_id| {
                let from = node_endpoint(*node_id);
                let routes = self
                    .node_addresses
                    .iter()
                    .filter_map(|(peer, address)| {
                        Some((address.clone(), self.proxy_address(&from, &node_endpoint(*peer))?))
                    })
                    .collect();
                (*node_id, routes)
            })
            .collect()
    }

    /// How executor `executor_id` is wired: its listen address, the coordinators through its
    /// proxies, and the other executors through its proxies.
    pub fn executor_routes(&self, executor_id: &str) -> anyhow::Result<ExecutorRoutes> {
        let listen = self
            .executor_addresses
            .get(executor_id)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no address for executor {executor_id}"))?;
        let mut dial = BTreeMap::new();
        let mut coordinators = Vec::new();
        for (node_id, address) in &self.node_addresses {
            if let Some(proxy) = self.proxy_address(executor_id, &node_endpoint(*node_id)) {
                dial.insert(address.clone(), proxy.clone());
                coordinators.push(proxy);
            }
        }
        for (peer, address) in &self.executor_addresses {
            if let Some(proxy) = self.proxy_address(executor_id, peer) {
                dial.insert(address.clone(), proxy);
            }
        }
        Ok(ExecutorRoutes {
            listen,
            coordinators,
            dial,
        })
    }

    /// Cuts every link between a process of `side` and one of `other`, both ways.
    pub fn cut_between(&self, side: &BTreeSet<Endpoint>, other: &BTreeSet<Endpoint>) -> usize {
        let mut cut = 0;
        for ((from, to), proxy) in &self.links {
            if (side.contains(from) && other.contains(to)) || (other.contains(from) && side.contains(to)) {
                proxy.set_cut(true);
                cut += 1;
            }
        }
        cut
    }

    /// Every process.
    pub fn endpoints(&self) -> BTreeSet<Endpoint> {
        self.node_addresses
            .keys()
            .map(|node_id| node_endpoint(*node_id))
            .chain(self.executor_addresses.keys().cloned())
            .collect()
    }

    /// Slows every link by `delay` each way (zero: back to normal).
    pub fn delay_all(&self, delay: Duration) {
        for proxy in self.links.values() {
            proxy.set_delay(delay);
        }
    }

    /// Restores every link: no cut, no delay.
    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.set_cut(false);
            proxy.set_delay(Duration::ZERO);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
