//! `raftstream coordinator` and `raftstream cluster ...`: run a node, start a local cluster, and the
//! membership and status commands.

use std::time::Duration;

use anyhow::Context;
use raftstream_api::ids::NodeId;
use raftstream_coordinator::node::{run_coordinator, CoordinatorConfig, RaftSettings};
use raftstream_proto::v1 as pb;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::local_cluster::LocalCluster;

use super::output::{print_table, print_value};
use super::{client_for, parse_http_listen, ClusterCommand, CoordinatorArgs, OutputFormat};

pub(super) async fn run_coordinator_command(args: CoordinatorArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let http_listen = parse_http_listen(args.http_listen.as_deref())?;
    let mut config = match args.config {
        Some(path) => CoordinatorConfig::from_file(&path)?,
        None => {
            let node_id = args.id.context("--id is required without --config")?;
            let listen = args.listen.context("--listen is required without --config")?;
            let data_dir = args.data_dir.context("--data-dir is required without --config")?;
            let mut initial_members = std::collections::BTreeMap::new();
            for peer in &args.peers {
                let (id, address) = peer
                    .split_once('=')
                    .with_context(|| format!("--peers entry {peer:?} is not id=host:port"))?;
                let id: u64 = id
                    .trim()
                    .parse()
                    .with_context(|| format!("--peers entry {peer:?}: {id:?} is not a node id"))?;
                initial_members.insert(NodeId(id), address.trim().to_owned());
            }
            let config = CoordinatorConfig {
                node_id: NodeId(node_id),
                listen_address: listen
                    .parse()
                    .with_context(|| format!("--listen {listen:?} is not host:port"))?,
                advertise_address: None,
                data_dir,
                initial_members,
                bootstrap: args.bootstrap,
                raft: RaftSettings::default(),
                executors: Default::default(),
                dial_addresses: Default::default(),
                http_listen_address: None,
            };
            config.validate()?;
            config
        }
    };
    if http_listen.is_some() {
        config.http_listen_address = http_listen;
    }
    run_coordinator(config, shutdown).await?;
    Ok(())
}

pub(super) async fn run_cluster_command(command: ClusterCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Up { nodes, dir, base_port } => {
            let binary = std::env::current_exe().context("locating the raftstream binary")?;
            let addresses = if base_port == 0 {
                Vec::new()
            } else {
                (0..nodes)
                    .map(|offset| {
                        let port = u16::try_from(u64::from(base_port) + offset).context("port above 65535")?;
                        Ok(format!("127.0.0.1:{port}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            let directory = std::path::absolute(&dir)?;
            let mut cluster = LocalCluster::start(&binary, &directory, nodes, addresses, RaftSettings::default())?;
            let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
            println!("Raftstream cluster up: {nodes} coordinators, leader is node {leader}");
            for node in cluster.nodes() {
                println!(
                    "  node {}  {}  pid {}  dashboard http://{}/  metrics http://{}/metrics  log {}",
                    node.node_id,
                    node.address,
                    node.pid().unwrap_or(0),
                    node.http_address,
                    node.http_address,
                    node.log_path().display()
                );
            }
            println!("coordinators: {}", cluster.addresses().join(","));
            println!(
                "try: raftstream job submit examples/wordcount.yaml --coordinators {}",
                cluster.addresses().join(",")
            );
            println!("Ctrl-C stops the cluster (data stays in {}).", directory.display());
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if let Err(error) = cluster.check_running() {
                            eprintln!("warning: {error:#}");
                        }
                    }
                }
            }
            cluster.kill_all();
            println!("cluster stopped");
            Ok(())
        }
        ClusterCommand::Status(args) => {
            let status = client_for(&args)?.cluster_status().await?;
            print_cluster_status(&status, args.output);
            Ok(())
        }
        ClusterCommand::Executors(args) => {
            let executors = client_for(&args)?.list_executors().await?.executors;
            match args.output {
                OutputFormat::Json => {
                    let list: Vec<_> = executors
                        .iter()
                        .map(|e| json!({"executor_id": e.executor_id, "address": e.address, "slots": e.slots, "used_slots": e.used_slots,
                                        "alive": e.alive, "draining": e.draining, "connected": e.connected, "last_heartbeat_age_ms": e.last_heartbeat_age_ms}))
                        .collect();
                    println!("{}", serde_json::Value::Array(list));
                }
                OutputFormat::Table => {
                    let rows = executors
                        .iter()
                        .map(|e| {
                            vec![
                                e.executor_id.clone(),
                                e.address.clone(),
                                format!("{}/{}", e.used_slots, e.slots),
                                match (e.alive, e.draining) {
                                    (true, false) => "alive",
                                    (true, true) => "draining",
                                    (false, true) => "drained",
                                    (false, false) => "dead",
                                }
                                .to_owned(),
                                if e.connected { "yes" } else { "no" }.to_owned(),
                                e.last_heartbeat_age_ms
                                    .map_or("-".to_owned(), |age| format!("{age} ms ago")),
                            ]
                        })
                        .collect();
                    print_table(&["EXECUTOR", "ADDRESS", "SLOTS", "STATE", "SESSION", "HEARTBEAT"], rows);
                }
            }
            Ok(())
        }
        ClusterCommand::AddLearner { id, address, client } => {
            let reply = client_for(&client)?.add_learner(id, &address).await?;
            print_value(
                client.output,
                json!({"node_id": id, "address": address, "log_index": reply.log_index}),
                || {
                    format!(
                        "node {id} at {address} added as learner (log index {})",
                        reply.log_index
                    )
                },
            );
            Ok(())
        }
        ClusterCommand::ReplaceNode {
            dead,
            new_id,
            address,
            client,
        } => {
            let replaced = client_for(&client)?.replace_node(dead, new_id, &address).await?;
            print_value(
                client.output,
                json!({
                    "removed": dead,
                    "added": new_id,
                    "address": address,
                    "voters": replaced.voters,
                    "learner_log_index": replaced.learner_log_index,
                    "membership_log_index": replaced.membership_log_index,
                }),
                || {
                    format!(
                        "node {new_id} at {address} replaced node {dead}; voters are now {:?} (log index {})",
                        replaced.voters, replaced.membership_log_index
                    )
                },
            );
            Ok(())
        }
        ClusterCommand::ChangeMembership { voters, client } => {
            let reply = client_for(&client)?.change_membership(&voters).await?;
            print_value(
                client.output,
                json!({"voters": voters, "log_index": reply.log_index}),
                || format!("voters are now {voters:?} (log index {})", reply.log_index),
            );
            Ok(())
        }
    }
}

pub(super) fn print_cluster_status(status: &pb::ClusterStatusResponse, output: OutputFormat) {
    let nodes: Vec<serde_json::Value> = status
        .nodes
        .iter()
        .map(|n| {
            let role = status.members.iter().find(|m| m.node_id == n.node_id).map_or("not a member", |m| m.role.as_str());
            json!({"node_id": n.node_id, "address": n.address, "role": role, "state": n.state, "term": n.term,
                   "last_log_index": n.last_log_index, "committed_index": n.committed_index, "applied_index": n.applied_index,
                   "snapshot_index": n.snapshot_index, "error": n.error})
        })
        .collect();
    match output {
        OutputFormat::Json => println!(
            "{}",
            json!({"leader_id": status.leader_id, "term": status.term, "nodes": nodes})
        ),
        OutputFormat::Table => {
            println!(
                "leader: {}   term: {}",
                status.leader_id.map_or("none".to_owned(), |id| format!("node {id}")),
                status.term
            );
            let show = |index: Option<u64>| index.map_or("-".to_owned(), |i| i.to_string());
            let rows = status
                .nodes
                .iter()
                .map(|n| {
                    let role = status
                        .members
                        .iter()
                        .find(|m| m.node_id == n.node_id)
                        .map_or("-", |m| m.role.as_str());
                    vec![
                        n.node_id.to_string(),
                        n.address.clone(),
                        role.to_owned(),
                        n.state.clone(),
                        n.term.to_string(),
                        show(n.last_log_index),
                        show(n.committed_index),
                        show(n.applied_index),
                        show(n.snapshot_index),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NODE",
                    "ADDRESS",
                    "ROLE",
                    "STATE",
                    "TERM",
                    "LAST_LOG",
                    "COMMITTED",
                    "APPLIED",
                    "SNAPSHOT",
                ],
                rows,
            );
        }
    }
}
