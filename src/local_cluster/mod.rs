//! Coordinator processes on this machine: start, `kill -9`, restart, wipe. Used by `cluster up`,
//! the benchmarks and the cluster tests, so all three exercise the real binary.

mod executors;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use raftstream_api::client::ClusterClient;
use raftstream_api::ids::NodeId;
use raftstream_coordinator::leader::ExecutorSettings;
use raftstream_coordinator::node::{CoordinatorConfig, RaftSettings};

/// Polls `check` every 10 ms until it returns `Some`, failing after `timeout` with `what`.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Picks a port the OS reports free. The socket is closed before the child binds it, so another
/// process could take it in between; `LocalCluster::start` detects that through the child's exit.
pub fn free_local_address() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(listener.local_addr().context("reading the ephemeral port")?.to_string())
}

/// A loopback address whose port the OS chose, held for a process that binds it later, for as
/// long as this value lives.
///
/// A port from [`free_local_address`] is free only until someone else takes it: another test's
/// port-0 bind, or the local port of any outgoing connection. That left a coordinator or a chaos
/// run's executor, whose address is fixed in the cluster's membership or the fault proxies'
/// routes, failing to bind it now and then ("Address already in use"). This holds a socket bound
/// to the port with `SO_REUSEADDR`, not listening: the OS gives the port to no other socket
/// meanwhile, and a process that binds with `SO_REUSEADDR` as well (tokio's listeners do) still
/// binds it and listens, restart after restart.
#[derive(Debug)]
pub struct ReservedAddress {
    address: String,
    _held: socket2::Socket,
}

impl ReservedAddress {
    /// The address, `127.0.0.1:port`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// Reserves a loopback port the OS chooses (see [`ReservedAddress`]).
pub fn reserve_local_address() -> anyhow::Result<ReservedAddress> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .context("making a socket to hold a port")?;
    socket
        .set_reuse_address(true)
        .context("setting SO_REUSEADDR on the port's holder")?;
    let any_port: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    socket.bind(&any_port.into()).context("binding an ephemeral port")?;
    let address = socket
        .local_addr()
        .context("reading the ephemeral port")?
        .as_socket()
        .ok_or_else(|| anyhow!("the held port has no IP address"))?
        .to_string();
    Ok(ReservedAddress { address, _held: socket })
}

/// One coordinator child process and its files.
#[derive(Debug)]
pub struct CoordinatorProcess {
    pub node_id: u64,
    pub address: String,
    /// Where it serves HTTP (`/metrics`, `/healthz`, `/readyz`).
    pub http_address: String,
    pub node_dir: PathBuf,
    child: Option<Child>,
    /// Where the current process's output starts in the (appended) log.
    log_start: u64,
}

impl CoordinatorProcess {
    /// The config file the process was started with.
    pub fn config_path(&self) -> PathBuf {
        self.node_dir.join("config.yaml")
    }

    /// The process's log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.node_dir.join("coordinator.log")
    }

    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A set of coordinator processes started from one binary.
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    directory: PathBuf,
    raft: RaftSettings,
    executor_settings: ExecutorSettings,
    nodes: BTreeMap<u64, CoordinatorProcess>,
    executors: BTreeMap<String, ExecutorProcess>,
    /// `--checkpoint-store` of executors started from now on, and environment they need for it
    /// (S3 endpoint and credentials); `None`: the cluster's shared checkpoint directory.
    executor_checkpoint_store: Option<(String, Vec<(String, String)>)>,
    /// Added to every executor's environment.
    executor_environment: Vec<(String, String)>,
    /// Whether executors started from now on serve HTTP (`/metrics` ...) on their `http_address`.
    executor_http: bool,
    wiring: ClusterWiring,
    /// The coordinators' ports, held while the cluster lives: each is fixed in the membership.
    reserved: Vec<ReservedAddress>,
}

/// Where the processes' links go when something sits between them (the chaos harness).
#[derive(Debug, Clone, Default)]
pub struct ClusterWiring {
    /// Per coordinator: peers' advertised addresses it dials elsewhere (the fault proxy).
    pub coordinator_dial: BTreeMap<u64, BTreeMap<String, String>>,
    /// Per process (`node-N` or an executor id): the Linux network namespace it runs in
    /// (started through `ip netns exec`, which execs, so the child's pid is the process's).
    pub network_namespaces: BTreeMap<String, String>,
    /// Environment every coordinator process starts with (failpoints in tests).
    pub coordinator_environment: Vec<(String, String)>,
}

/// How an executor is wired when its links go through somewhere else (the fault proxy).
#[derive(Debug, Clone, Default)]
pub struct ExecutorRoutes {
    /// Its data-exchange listen (and advertised) address.
    pub listen: String,
    /// The coordinator addresses it is given.
    pub coordinators: Vec<String>,
    /// Advertised addresses (coordinators', other executors') it dials elsewhere.
    pub dial: BTreeMap<String, String>,
}

/// One executor child process.
#[derive(Debug)]
pub struct ExecutorProcess {
    pub executor_id: String,
    pub directory: PathBuf,
    /// `None`: the executor's default (one per core).
    pub slots: Option<u32>,
    /// Where it serves HTTP (`/metrics`, `/healthz`, `/readyz`).
    pub http_address: String,
    routes: Option<ExecutorRoutes>,
    child: Option<Child>,
    /// Where the current process's output starts in the (appended) log.
    log_start: u64,
}

impl ExecutorProcess {
    /// The process's log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.directory.join("executor.log")
    }

    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl LocalCluster {
    /// Writes configs for `node_count` voters under `directory` and starts them. With `addresses`
    /// empty, ports are chosen by the OS.
    pub fn start(
        binary: &Path,
        directory: &Path,
        node_count: u64,
        addresses: Vec<String>,
        raft: RaftSettings,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            binary,
            directory,
            node_count,
            addresses,
            raft,
            ExecutorSettings::default(),
        )
    }

    /// Like [`LocalCluster::start`], with executor heartbeat and lease settings.
    pub fn start_with(
        binary: &Path,
        directory: &Path,
        node_count: u64,
        addresses: Vec<String>,
        raft: RaftSettings,
        executor_settings: ExecutorSettings,
    ) -> anyhow::Result<Self> {
        Self::start_routed(
            binary,
            directory,
            node_count,
            addresses,
            raft,
            executor_settings,
            ClusterWiring::default(),
        )
    }

    /// Like [`LocalCluster::start_with`], with the processes wired as `wiring` says.
    pub fn start_routed(
        binary: &Path,
        directory: &Path,
        node_count: u64,
        addresses: Vec<String>,
        raft: RaftSettings,
        executor_settings: ExecutorSettings,
        wiring: ClusterWiring,
    ) -> anyhow::Result<Self> {
        if node_count == 0 {
            bail!("a cluster needs at least one node");
        }
        let mut reserved = Vec::new();
        let addresses = if addresses.is_empty() {
            reserved = (0..node_count)
                .map(|_| reserve_local_address())
                .collect::<anyhow::Result<Vec<_>>>()?;
            reserved.iter().map(|held| held.address().to_owned()).collect()
        } else {
            addresses
        };
        if addresses.len() as u64 != node_count {
            bail!("{} addresses given for {node_count} nodes", addresses.len());
        }
        let members: BTreeMap<u64, String> = (1..=node_count).zip(addresses).collect();
        let mut cluster = LocalCluster {
            binary: binary.to_owned(),
            directory: directory.to_owned(),
            raft,
            executor_settings,
            nodes: BTreeMap::new(),
            executors: BTreeMap::new(),
            executor_checkpoint_store: None,
            executor_environment: Vec::new(),
            executor_http: true,
            wiring,
            reserved,
        };
        for (node_id, address) in &members {
            cluster.add_process(*node_id, address.clone(), members.clone(), true)?;
        }
        Ok(cluster)
    }

    fn add_process(
        &mut self,
        node_id: u64,
        address: String,
        initial_members: BTreeMap<u64, String>,
        bootstrap: bool,
    ) -> anyhow::Result<()> {
        let node_dir = self.directory.join(format!("node-{node_id}"));
        std::fs::create_dir_all(&node_dir).with_context(|| format!("creating {}", node_dir.display()))?;
        let http_address = free_local_address()?;
        let config = CoordinatorConfig {
            node_id: NodeId(node_id),
            listen_address: address.parse().with_context(|| format!("address {address:?}"))?,
            advertise_address: None,
            data_dir: node_dir.join("data"),
            initial_members: initial_members
                .into_iter()
                .map(|(id, address)| (NodeId(id), address))
                .collect(),
            bootstrap,
            raft: self.raft.clone(),
            executors: self.executor_settings.clone(),
            dial_addresses: self.wiring.coordinator_dial.get(&node_id).cloned().unwrap_or_default(),
            http_listen_address: Some(
                http_address
                    .parse()
                    .with_context(|| format!("address {http_address:?}"))?,
            ),
        };
        let process = CoordinatorProcess {
            node_id,
            address,
            http_address,
            node_dir,
            child: None,
            log_start: 0,
        };
        std::fs::write(process.config_path(), serde_yaml::to_string(&config)?)
            .with_context(|| format!("writing {}", process.config_path().display()))?;
        self.nodes.insert(node_id, process);
        self.spawn(node_id)
    }

    /// A command that runs the binary as `process` (`node-N` or an executor id), in its network
    /// namespace if it has one.
    fn binary_command(&self, process: &str) -> Command {
        match self.wiring.network_namespaces.get(process) {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        }
    }

    fn spawn(&mut self, node_id: u64) -> anyhow::Result<()> {
        let binary = self.binary.clone();
        let mut command = self.binary_command(&format!("node-{node_id}"));
        let process = self
            .nodes
            .get_mut(&node_id)
            .ok_or_else(|| anyhow!("no node {node_id}"))?;
        if process.child.is_some() {
            bail!("node {node_id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(process.log_path())
            .with_context(|| format!("opening {}", process.log_path().display()))?;
        process.log_start = log.metadata().map_or(0, |metadata| metadata.len());
        let child = command
            .arg("coordinator")
            .arg("--config")
            .arg(process.config_path())
            .env(
                "RUST_LOG",
                std::env::var("RAFTSTREAM_CHILD_LOG").unwrap_or_else(|_| "info,openraft=warn".to_owned()),
            )
            .envs(
                self.wiring
                    .coordinator_environment
                    .iter()
                    .map(|(key, value)| (key, value)),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} coordinator", binary.display()))?;
        process.child = Some(child);
        Ok(())
    }

    /// Adds a node that is not yet a member: it starts empty and waits to be added as a learner.
    pub fn start_joining_node(&mut self, node_id: u64) -> anyhow::Result<String> {
        if self.nodes.contains_key(&node_id) {
            bail!("node {node_id} already exists");
        }
        let held = reserve_local_address()?;
        let address = held.address().to_owned();
        self.reserved.push(held);
        self.add_process(node_id, address.clone(), BTreeMap::new(), false)?;
        Ok(address)
    }

    /// Every node's address, in node id order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.values().map(|process| process.address.clone()).collect()
    }

    /// The addresses of the nodes that are running.
    pub fn running_addresses(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter(|process| process.child.is_some())
            .map(|process| process.address.clone())
            .collect()
    }

    /// One node.
    pub fn node(&self, node_id: u64) -> Option<&CoordinatorProcess> {
        self.nodes.get(&node_id)
    }

    /// All nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &CoordinatorProcess> {
        self.nodes.values()
    }

    /// `kill -9` of one node, then reaps it.
    pub fn kill(&mut self, node_id: u64) -> anyhow::Result<()> {
        let process = self
            .nodes
            .get_mut(&node_id)
            .ok_or_else(|| anyhow!("no node {node_id}"))?;
        if let Some(mut child) = process.child.take() {
            // std's Child::kill sends SIGKILL on Unix: no shutdown hook runs, exactly like kill -9.
            child.kill().with_context(|| format!("killing node {node_id}"))?;
            child.wait().with_context(|| format!("reaping node {node_id}"))?;
        }
        Ok(())
    }

    /// Restarts a killed node with its data dir (and without bootstrapping).
    pub fn restart(&mut self, node_id: u64) -> anyhow::Result<()> {
        let process = self
            .nodes
            .get_mut(&node_id)
            .ok_or_else(|| anyhow!("no node {node_id}"))?;
        // Only a pristine cluster bootstraps; a node that lost its data must be caught up by the
        // leader, never start a cluster of its own.
        rewrite_config(&process.config_path(), |config| {
            config.bootstrap = false;
            Ok(())
        })?;
        self.spawn(node_id)
    }

    /// Deletes a stopped node's data dir.
    pub fn wipe(&mut self, node_id: u64) -> anyhow::Result<()> {
        let process = self.nodes.get(&node_id).ok_or_else(|| anyhow!("no node {node_id}"))?;
        if process.child.is_some() {
            bail!("node {node_id} must be stopped before its data is wiped");
        }
        let data_dir = process.node_dir.join("data");
        if data_dir.exists() {
            std::fs::remove_dir_all(&data_dir).with_context(|| format!("removing {}", data_dir.display()))?;
        }
        Ok(())
    }

    /// Fails if a child exited on its own (a crash or its Raft port taken), pointing at its log.
    /// One that found its HTTP port taken (picked like an executor's, see
    /// [`LocalCluster::check_executors_running`]) starts again on a new one: it binds that port
    /// before it touches its Raft state, so nothing else changes.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let checks = self.nodes.values_mut().map(|process| ChildCheck {
            key: process.node_id,
            name: format!("coordinator {}", process.node_id),
            log_path: process.log_path(),
            log_start: process.log_start,
            port_taken: vec![
                format!("binding the HTTP listener on {}", process.http_address),
                "Address already in use".to_owned(),
            ],
            child: &mut process.child,
        });
        for node_id in lost_their_port(checks)? {
            let process = self
                .nodes
                .get_mut(&node_id)
                .ok_or_else(|| anyhow!("no node {node_id}"))?;
            let http_address = free_local_address()?;
            rewrite_config(&process.config_path(), |config| {
                config.http_listen_address = Some(
                    http_address
                        .parse()
                        .with_context(|| format!("address {http_address:?}"))?,
                );
                Ok(())
            })?;
            process.http_address = http_address;
            tracing::warn!(node_id, http_address = %process.http_address, "a coordinator's HTTP port was taken before it bound it; starting it again");
            self.spawn(node_id)?;
        }
        Ok(())
    }

    /// Fails if an executor exited on its own, pointing at its log; one that found its HTTP port
    /// taken (the harness closes the port the OS picked before the child binds it, and another
    /// process can take it in between) starts again on a new port instead. For use while waiting
    /// for executors to connect, not while they are meant to exit (drain, SIGTERM).
    pub fn check_executors_running(&mut self) -> anyhow::Result<()> {
        let checks = self.executors.values_mut().map(|process| ChildCheck {
            key: process.executor_id.clone(),
            name: format!("executor {}", process.executor_id),
            log_path: process.log_path(),
            log_start: process.log_start,
            port_taken: vec!["Address already in use".to_owned()],
            child: &mut process.child,
        });
        for executor_id in lost_their_port(checks)? {
            let process = self
                .executors
                .get_mut(&executor_id)
                .ok_or_else(|| anyhow!("no executor {executor_id}"))?;
            process.http_address = free_local_address()?;
            tracing::warn!(%executor_id, http_address = %process.http_address, "an executor's port was taken before it bound it; starting it again");
            self.spawn_executor(&executor_id)?;
        }
        Ok(())
    }

    /// Polls until some node reports a leader that a majority of running nodes agree on.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        let client = ClusterClient::new(&self.running_addresses(), Duration::from_millis(200))?;
        loop {
            self.check_running()?;
            if let Ok(status) = client.cluster_status().await {
                let leaders: Vec<u64> = status
                    .nodes
                    .iter()
                    .filter(|node| node.state == "Leader")
                    .map(|node| node.node_id)
                    .collect();
                if let [leader] = leaders.as_slice() {
                    if self.nodes.get(leader).is_some_and(|process| process.child.is_some()) {
                        return Ok(*leader);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no leader elected within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every node (SIGKILL) and reaps them.
    pub fn kill_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for node_id in ids {
            if let Err(error) = self.kill(node_id) {
                tracing::warn!(node_id, error = %format!("{error:#}"), "could not stop coordinator");
            }
        }
    }
}

fn stop_or_continue(pid: u32, pause: bool) -> anyhow::Result<()> {
    let signal = if pause { "-STOP" } else { "-CONT" };
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill {signal} {pid} failed with {status}");
    }
    Ok(())
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let executors: Vec<String> = self.executors.keys().cloned().collect();
        for executor_id in executors {
            let _ = self.kill_executor(&executor_id);
        }
        self.kill_all();
    }
}

/// The last `lines` lines of a log.
/// What [`lost_their_port`] reads of one child process of the harness.
struct ChildCheck<'a, K> {
    /// What names it in the cluster's maps (node id, executor id).
    key: K,
    /// How an error names it.
    name: String,
    child: &'a mut Option<Child>,
    log_path: PathBuf,
    /// Where in its log file (appended to across restarts) its current process began.
    log_start: u64,
    /// Lines that, all present in what it logged, say it exited because its HTTP port was taken.
    port_taken: Vec<String>,
}

/// The processes that exited because their HTTP port was taken (the harness closes the port the
/// OS picked before the child binds it, and another process can take it in between), to start
/// again on a new one; fails, with its log tail, on one that exited for any other reason.
fn lost_their_port<'a, K: 'a>(processes: impl Iterator<Item = ChildCheck<'a, K>>) -> anyhow::Result<Vec<K>> {
    let mut lost = Vec::new();
    for process in processes {
        let Some((status, since_start)) = exited(process.child, &process.log_path, process.log_start)? else {
            continue;
        };
        if process
            .port_taken
            .iter()
            .all(|line| since_start.contains(line.as_str()))
        {
            lost.push(process.key);
            continue;
        }
        bail!(
            "{} exited with {status}; log tail:\n{}",
            process.name,
            log_tail(&since_start, 15)
        );
    }
    Ok(lost)
}

/// Whether the process in `child` exited on its own, with its status and what it logged since it
/// started (its log file is appended to across restarts, from byte `log_start` on); the child is
/// then cleared.
fn exited(
    child: &mut Option<std::process::Child>,
    log_path: &Path,
    log_start: u64,
) -> anyhow::Result<Option<(std::process::ExitStatus, String)>> {
    let Some(process) = child.as_mut() else {
        return Ok(None);
    };
    let Some(status) = process.try_wait()? else {
        return Ok(None);
    };
    *child = None;
    let log = std::fs::read(log_path).unwrap_or_default();
    let since_start = String::from_utf8_lossy(log.get(log_start as usize..).unwrap_or_default()).into_owned();
    Ok(Some((status, since_start)))
}

/// Reads a coordinator's config file, changes it and writes it back (for its next start).
fn rewrite_config(path: &Path, edit: impl FnOnce(&mut CoordinatorConfig) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut config: CoordinatorConfig =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    edit(&mut config)?;
    std::fs::write(path, serde_yaml::to_string(&config)?).with_context(|| format!("writing {}", path.display()))
}

fn log_tail(log: &str, lines: usize) -> String {
    let mut tail: Vec<&str> = log.lines().rev().take(lines).collect();
    tail.reverse();
    tail.join("\n")
}

/// Waits up to `patience` for `child` to exit; kills and reaps it if it does not.
async fn wait_for_exit(
    executor_id: &str,
    mut child: std::process::Child,
    patience: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    let exited = poll_until(&format!("executor {executor_id} to exit"), patience, || {
        let exited = child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    match exited {
        Ok(status) => Ok(status),
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(error)
        }
    }
}

/// A child's log text without its terminal colour codes.
pub fn without_ansi_colors(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for code in chars.by_ref() {
                if code.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Copies every `*.log` file under `directory` (a failed test's cluster) to `destination`,
/// keeping relative paths, so its processes' logs outlive the test's temporary directory.
/// Best effort: a test that already failed must not fail differently here.
pub fn keep_logs(directory: &Path, destination: &Path) -> usize {
    let mut kept = 0;
    let mut pending = vec![directory.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "log") {
                let Ok(relative) = path.strip_prefix(directory) else {
                    continue;
                };
                let target = destination.join(relative);
                if let Some(parent) = target.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                if std::fs::copy(&path, &target).is_ok() {
                    kept += 1;
                }
            }
        }
    }
    kept
}
