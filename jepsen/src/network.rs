//! Every link of the cluster, where faults can cut or slow it. By default through its own
//! [`LinkProxy`] per directed link (coordinator to coordinator, executor to coordinator, executor to
//! executor), which needs no privileges; with `--net netns`, through the kernel: a network namespace
//! per process (see [`crate::netns`]). Clients reach the coordinators directly, as Jepsen's clients
//! sit next to the nodes they talk to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use raftstream::local_cluster::{reserve_local_address, ClusterWiring, ExecutorRoutes, ReservedAddress};
use tokio_util::sync::CancellationToken;

use crate::endpoint::{node_endpoint, Endpoint};
use crate::netns::Namespaces;
use crate::proxy::LinkProxy;

/// How faults reach the links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetMode {
    /// A TCP proxy on every link, in the harness; works without root.
    Proxy,
    /// A network namespace per process, partitions by iptables, delays by netem; needs root.
    Netns,
}

enum Fabric {
    Proxies {
        links: BTreeMap<(Endpoint, Endpoint), LinkProxy>,
        stop: CancellationToken,
    },
    Namespaces(Namespaces),
}

/// The links of one cluster and the addresses of its processes.
pub struct Network {
    fabric: Fabric,
    /// Coordinators' advertised addresses, by node id.
    pub node_addresses: BTreeMap<u64, String>,
    /// Executors' advertised (listen) addresses, by id.
    pub executor_addresses: BTreeMap<String, String>,
    /// The loopback ports behind those addresses (proxy mode), held while the run lasts.
    _reserved: Vec<ReservedAddress>,
}

impl Network {
    /// Chooses addresses for `nodes` coordinators and the executors `executor_ids`, and sets up
    /// every link between them the way `mode` says.
    pub async fn start(mode: NetMode, nodes: u64, executor_ids: &[String]) -> anyhow::Result<Network> {
        match mode {
            NetMode::Proxy => Self::start_proxies(nodes, executor_ids).await,
            NetMode::Netns => Self::start_namespaces(nodes, executor_ids),
        }
    }

    fn start_namespaces(nodes: u64, executor_ids: &[String]) -> anyhow::Result<Network> {
        let endpoints: Vec<Endpoint> = (1..=nodes)
            .map(node_endpoint)
            .chain(executor_ids.iter().cloned())
            .collect();
        let namespaces = Namespaces::create(&endpoints)?;
        let mut node_addresses = BTreeMap::new();
        for node_id in 1..=nodes {
            node_addresses.insert(node_id, namespaces.address(&node_endpoint(node_id))?);
        }
        let mut executor_addresses = BTreeMap::new();
        for executor_id in executor_ids {
            executor_addresses.insert(executor_id.clone(), namespaces.address(executor_id)?);
        }
        Ok(Network {
            fabric: Fabric::Namespaces(namespaces),
            node_addresses,
            executor_addresses,
            _reserved: Vec::new(),
        })
    }

    async fn start_proxies(nodes: u64, executor_ids: &[String]) -> anyhow::Result<Network> {
        let stop = CancellationToken::new();
        // Every process's address is fixed in the proxies' routes: held until the run ends.
        let mut reserved = Vec::new();
        let mut node_addresses = BTreeMap::new();
        for node_id in 1..=nodes {
            let held = reserve_local_address()?;
            node_addresses.insert(node_id, held.address().to_owned());
            reserved.push(held);
        }
        let mut executor_addresses = BTreeMap::new();
        for executor_id in executor_ids {
            let held = reserve_local_address()?;
            executor_addresses.insert(executor_id.clone(), held.address().to_owned());
            reserved.push(held);
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
            fabric: Fabric::Proxies { links, stop },
            node_addresses,
            executor_addresses,
            _reserved: reserved,
        })
    }

    /// Whether links can be slowed (netns mode needs the kernel's netem for it).
    pub fn supports_delay(&self) -> bool {
        match &self.fabric {
            Fabric::Proxies { .. } => true,
            Fabric::Namespaces(namespaces) => namespaces.supports_delay,
        }
    }

    /// How the cluster's processes must be started on this network.
    pub fn wiring(&self) -> anyhow::Result<ClusterWiring> {
        let mut wiring = ClusterWiring {
            coordinator_dial: self.coordinator_dial(),
            ..ClusterWiring::default()
        };
        if let Fabric::Namespaces(namespaces) = &self.fabric {
            for endpoint in self.endpoints() {
                wiring
                    .network_namespaces
                    .insert(endpoint.clone(), namespaces.namespace(&endpoint)?);
            }
        }
        Ok(wiring)
    }

    /// The proxy `from` dials to reach `to`; `None` when it dials `to` directly.
    fn proxy_address(&self, from: &str, to: &str) -> Option<String> {
        match &self.fabric {
            Fabric::Proxies { links, .. } => links
                .get(&(from.to_owned(), to.to_owned()))
                .map(|proxy| proxy.address.clone()),
            Fabric::Namespaces(_) => None,
        }
    }

    /// For each coordinator: the peers' addresses it dials through its proxies.
    fn coordinator_dial(&self) -> BTreeMap<u64, BTreeMap<String, String>> {
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
            match self.proxy_address(executor_id, &node_endpoint(*node_id)) {
                Some(proxy) => {
                    dial.insert(address.clone(), proxy.clone());
                    coordinators.push(proxy);
                }
                None => coordinators.push(address.clone()),
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
    pub fn cut_between(&self, side: &BTreeSet<Endpoint>, other: &BTreeSet<Endpoint>) -> anyhow::Result<()> {
        match &self.fabric {
            Fabric::Proxies { links, .. } => {
                for ((from, to), proxy) in links {
                    if (side.contains(from) && other.contains(to)) || (other.contains(from) && side.contains(to)) {
                        proxy.set_cut(true);
                    }
                }
            }
            Fabric::Namespaces(namespaces) => {
                for one in side {
                    for peer in other.iter().filter(|peer| !side.contains(*peer)) {
                        namespaces.cut(one, peer)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every process.
    pub fn endpoints(&self) -> BTreeSet<Endpoint> {
        self.node_addresses
            .keys()
            .map(|node_id| node_endpoint(*node_id))
            .chain(self.executor_addresses.keys().cloned())
            .collect()
    }

    /// Slows every link by `delay` each way.
    pub fn delay_all(&self, delay: Duration) -> anyhow::Result<()> {
        match &self.fabric {
            Fabric::Proxies { links, .. } => {
                for proxy in links.values() {
                    proxy.set_delay(delay);
                }
                Ok(())
            }
            Fabric::Namespaces(namespaces) => namespaces.delay_all(delay),
        }
    }

    /// Restores every link: no cut, no delay.
    pub fn heal(&self) -> anyhow::Result<()> {
        match &self.fabric {
            Fabric::Proxies { links, .. } => {
                for proxy in links.values() {
                    proxy.set_cut(false);
                    proxy.set_delay(Duration::ZERO);
                }
                Ok(())
            }
            Fabric::Namespaces(namespaces) => namespaces.heal(),
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Fabric::Proxies { stop, .. } = &self.fabric {
            stop.cancel();
        }
    }
}
