//! The executors of a local cluster: start (optionally routed through proxies), kill -9,
//! SIGTERM and wait for the exit, pause and continue, restart, and what their logs say.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::{
    free_local_address, stop_or_continue, wait_for_exit, without_ansi_colors, ExecutorProcess, ExecutorRoutes,
    LocalCluster,
};

impl LocalCluster {
    /// Starts an executor process with `slots` slots (`None`: its default, one per core),
    /// connected to every coordinator.
    pub fn start_executor(&mut self, executor_id: &str, slots: impl Into<Option<u32>>) -> anyhow::Result<()> {
        self.start_executor_routed(executor_id, slots.into(), None)
    }

    /// Starts an executor whose links go where `routes` says.
    pub fn start_executor_routed(
        &mut self,
        executor_id: &str,
        slots: Option<u32>,
        routes: Option<ExecutorRoutes>,
    ) -> anyhow::Result<()> {
        let http_address = free_local_address()?;
        self.start_executor_serving_on(executor_id, slots, routes, http_address)
    }

    /// Starts an executor serving HTTP on `http_address`, which the caller chose.
    pub fn start_executor_serving_on(
        &mut self,
        executor_id: &str,
        slots: Option<u32>,
        routes: Option<ExecutorRoutes>,
        http_address: String,
    ) -> anyhow::Result<()> {
        let directory = self.directory.join(executor_id);
        std::fs::create_dir_all(&directory).with_context(|| format!("creating {}", directory.display()))?;
        let process = ExecutorProcess {
            executor_id: executor_id.to_owned(),
            directory,
            slots,
            http_address,
            routes,
            child: None,
            log_start: 0,
        };
        self.executors.insert(executor_id.to_owned(), process);
        self.spawn_executor(executor_id)
    }

    /// The checkpoint directory all executors of this cluster share, unless
    /// [`LocalCluster::use_checkpoint_store`] chose another store.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.directory.join("checkpoints")
    }

    /// Whether executors started (or restarted) from now on serve HTTP (on by default; the
    /// metrics-cost benchmark compares executors without it).
    pub fn set_executor_http(&mut self, enabled: bool) {
        self.executor_http = enabled;
    }

    /// Executors started (or restarted) from now on get `environment` added to theirs.
    pub fn set_executor_environment(&mut self, environment: Vec<(String, String)>) {
        self.executor_environment = environment;
    }

    /// Executors started (or restarted) from now on write checkpoints to `url`, with `environment`
    /// added to theirs (for S3: `AWS_ENDPOINT`, credentials, `AWS_ALLOW_HTTP`).
    pub fn use_checkpoint_store(&mut self, url: &str, environment: Vec<(String, String)>) {
        self.executor_checkpoint_store = Some((url.to_owned(), environment));
    }

    pub(super) fn spawn_executor(&mut self, executor_id: &str) -> anyhow::Result<()> {
        let coordinators = self.addresses().join(",");
        let (checkpoint_store, store_environment) = match &self.executor_checkpoint_store {
            Some((url, environment)) => (url.clone(), environment.clone()),
            None => (self.checkpoint_dir().display().to_string(), Vec::new()),
        };
        let mut command = self.binary_command(executor_id);
        let environment = self.executor_environment.clone();
        let process = self
            .executors
            .get_mut(executor_id)
            .ok_or_else(|| anyhow!("no executor {executor_id}"))?;
        if process.child.is_some() {
            bail!("executor {executor_id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(process.log_path())?;
        process.log_start = log.metadata().map_or(0, |metadata| metadata.len());
        let mut routing = Vec::new();
        if self.executor_http {
            routing.extend(["--http-listen".to_owned(), process.http_address.clone()]);
        }
        let coordinators = match &process.routes {
            Some(routes) => {
                routing.extend(["--listen".to_owned(), routes.listen.clone()]);
                for (advertised, dialled) in &routes.dial {
                    routing.extend(["--dial".to_owned(), format!("{advertised}={dialled}")]);
                }
                routes.coordinators.join(",")
            }
            None => coordinators,
        };
        let child = command
            .args(["executor", "--coordinators", &coordinators, "--id", executor_id])
            .args(
                process
                    .slots
                    .iter()
                    .flat_map(|slots| ["--slots".to_owned(), slots.to_string()]),
            )
            .args(&routing)
            .arg("--data-dir")
            .arg(&process.directory)
            .arg("--checkpoint-store")
            .arg(&checkpoint_store)
            .envs(store_environment)
            .envs(environment)
            .env(
                "RUST_LOG",
                std::env::var("RAFTSTREAM_CHILD_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting executor {executor_id}"))?;
        process.child = Some(child);
        Ok(())
    }

    /// `kill -9` of an executor, then reaps it.
    pub fn kill_executor(&mut self, executor_id: &str) -> anyhow::Result<()> {
        let process = self
            .executors
            .get_mut(executor_id)
            .ok_or_else(|| anyhow!("no executor {executor_id}"))?;
        if let Some(mut child) = process.child.take() {
            child
                .kill()
                .with_context(|| format!("killing executor {executor_id}"))?;
            child
                .wait()
                .with_context(|| format!("reaping executor {executor_id}"))?;
        }
        Ok(())
    }

    /// The running process of an executor, taken out of the cluster's hands to be waited for.
    fn take_executor_child(&mut self, executor_id: &str) -> anyhow::Result<std::process::Child> {
        let process = self
            .executors
            .get_mut(executor_id)
            .ok_or_else(|| anyhow!("no executor {executor_id}"))?;
        process
            .child
            .take()
            .ok_or_else(|| anyhow!("executor {executor_id} is not running"))
    }

    /// SIGTERM to an executor, then waits up to `patience` for it to exit; its exit status.
    pub async fn terminate_executor(
        &mut self,
        executor_id: &str,
        patience: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let child = self.take_executor_child(executor_id)?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -TERM of executor {executor_id} failed with {status}");
        }
        wait_for_exit(executor_id, child, patience).await
    }

    /// Waits up to `patience` for an executor to exit by itself (drained); its exit status.
    pub async fn wait_executor_exit(
        &mut self,
        executor_id: &str,
        patience: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let child = self.take_executor_child(executor_id)?;
        wait_for_exit(executor_id, child, patience).await
    }

    /// SIGSTOP (`pause`) or SIGCONT (resume) of an executor: a process that stops answering without
    /// dying, the classic zombie.
    pub fn signal_executor(&mut self, executor_id: &str, pause: bool) -> anyhow::Result<()> {
        let process = self
            .executors
            .get(executor_id)
            .ok_or_else(|| anyhow!("no executor {executor_id}"))?;
        let pid = process
            .pid()
            .ok_or_else(|| anyhow!("executor {executor_id} is not running"))?;
        stop_or_continue(pid, pause)
    }

    /// SIGSTOP (`pause`) or SIGCONT (resume) of a coordinator.
    pub fn signal_node(&mut self, node_id: u64, pause: bool) -> anyhow::Result<()> {
        let process = self.nodes.get(&node_id).ok_or_else(|| anyhow!("no node {node_id}"))?;
        let pid = process
            .pid()
            .ok_or_else(|| anyhow!("coordinator {node_id} is not running"))?;
        stop_or_continue(pid, pause)
    }

    /// The ids of the executors started so far.
    pub fn executor_ids(&self) -> Vec<String> {
        self.executors.keys().cloned().collect()
    }

    /// For each source subtask whose log (in any executor's log) says it was cancelled right
    /// after checkpoint `checkpoint_id`, the records it had produced after that barrier: what a
    /// restart from that checkpoint replays.
    pub fn records_replayed_from(&self, checkpoint_id: u64) -> Vec<u64> {
        let field = |line: &str, name: &str| -> Option<u64> {
            let (_, rest) = line.split_once(&format!("{name}="))?;
            rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        };
        let mut replayed = Vec::new();
        for executor in self.executors.values() {
            let Ok(log) = std::fs::read_to_string(executor.log_path()) else {
                continue;
            };
            for line in without_ansi_colors(&log)
                .lines()
                .filter(|line| line.contains("source cancelled"))
            {
                if field(line, "last_barrier") == Some(checkpoint_id) {
                    replayed.extend(field(line, "records_after_barrier"));
                }
            }
        }
        replayed
    }

    /// Restarts a killed executor with the same id.
    pub fn restart_executor(&mut self, executor_id: &str) -> anyhow::Result<()> {
        self.spawn_executor(executor_id)
    }

    /// One executor process.
    pub fn executor(&self, executor_id: &str) -> Option<&ExecutorProcess> {
        self.executors.get(executor_id)
    }
}
