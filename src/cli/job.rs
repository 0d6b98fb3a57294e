//! `raftstream job ...`: submit, list, status, checkpoints, savepoints, rescale, stop, cancel.

use std::time::Duration;

use anyhow::{bail, Context};
use raftstream_api::checkpoint::SavepointRef;
use raftstream_api::client::SubmitOptions;
use raftstream_proto::v1 as pb;
use serde_json::json;

use super::output::{
    checkpoint_json, functions_json, hot_keys_by_operator, job_json, print_job, print_table, print_value,
    subtask_metrics_json, trigger_of,
};
use super::{client_for, random_request_id, JobCommand, OutputFormat, SavepointCommand};

/// How long `job stop --savepoint` waits, after the savepoint, for every sink to publish it.
const STOP_PATIENCE: Duration = Duration::from_secs(120);

pub(super) async fn run_job_command(command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::Submit {
            file,
            request_id,
            from_savepoint,
            allow_unmatched_state,
            client,
        } => {
            let spec =
                std::fs::read_to_string(&file).with_context(|| format!("reading job spec {}", file.display()))?;
            let request_id = request_id.unwrap_or_else(random_request_id);
            let options = SubmitOptions {
                from_savepoint,
                allow_unmatched_state,
            };
            let cluster = client_for(&client)?;
            let spec = super::functions::prepare_functions(&spec, &file, &cluster).await?;
            let job = cluster.submit_job_with(&spec, &request_id, &options).await?;
            print_value(client.output, job_json(&job), || {
                let from = match &options.from_savepoint {
                    Some(savepoint) => format!(" from savepoint {savepoint}"),
                    None => String::new(),
                };
                format!("submitted {} ({}){from}: {}", job.job_id, job.name, job.status)
            });
        }
        JobCommand::Savepoint {
            action: Some(SavepointCommand::Delete { job_id, savepoint_id }),
            client,
            ..
        } => {
            let savepoint = SavepointRef::parse(&format!("{job_id}:{savepoint_id}"))?;
            let told = client_for(&client)?
                .delete_savepoint(&savepoint, &random_request_id())
                .await?;
            print_value(
                client.output,
                json!({"deleted": savepoint.to_string(), "executors_told": told}),
                || {
                    if told == 0 {
                        format!("deleted savepoint {savepoint}; no executor is connected to delete its files now")
                    } else {
                        format!("deleted savepoint {savepoint}; {told} executor(s) told to delete its files")
                    }
                },
            );
        }
        JobCommand::Savepoint {
            action: None,
            job_id,
            client,
        } => {
            let job_id = job_id.context("which job? (job savepoint JOB_ID)")?;
            let (savepoint, _) = client_for(&client)?
                .take_savepoint(&job_id, false, &random_request_id())
                .await?;
            print_value(client.output, checkpoint_json(&savepoint), || {
                format!(
                    "savepoint {}:{} taken ({} bytes)",
                    savepoint.job_id, savepoint.checkpoint_id, savepoint.size_bytes
                )
            });
        }
        JobCommand::Stop {
            job_id,
            savepoint,
            client,
        } => {
            if !savepoint {
                bail!("`job stop` stops a job with a savepoint: pass --savepoint (or `job cancel {job_id}` to end it without one)");
            }
            let cluster = client_for(&client)?;
            let (savepoint, _) = cluster.take_savepoint(&job_id, true, &random_request_id()).await?;
            let deadline = std::time::Instant::now() + STOP_PATIENCE;
            let job = loop {
                let job = cluster.get_job(&job_id, pb::ReadConsistency::Linearizable).await?;
                if job.status != "Running" || std::time::Instant::now() >= deadline {
                    break job;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let mut value = checkpoint_json(&savepoint);
            value["status"] = json!(job.status);
            print_value(client.output, value, || {
                format!(
                    "{}: {} with savepoint {}:{} ({})",
                    job.job_id, job.status, savepoint.job_id, savepoint.checkpoint_id, job.status_reason
                )
            });
            if job.status != "Stopped" {
                bail!(
                    "savepoint {}:{} was taken, but job {} is {}: {}",
                    savepoint.job_id,
                    savepoint.checkpoint_id,
                    job.job_id,
                    job.status,
                    job.status_reason
                );
            }
        }
        JobCommand::List(args) => {
            let jobs = client_for(&args)?.list_jobs(pb::ReadConsistency::Linearizable).await?;
            match args.output {
                OutputFormat::Json => println!("{}", serde_json::Value::Array(jobs.iter().map(job_json).collect())),
                OutputFormat::Table => {
                    let rows = jobs
                        .iter()
                        .map(|job| {
                            let placed = job
                                .subtasks
                                .iter()
                                .filter(|subtask| !subtask.executor_id.is_empty())
                                .count();
                            vec![
                                job.job_id.clone(),
                                job.name.clone(),
                                job.status.clone(),
                                format!("{placed}/{}", job.subtasks.len()),
                                job.restart_count.to_string(),
                                job.last_checkpoint_id.map_or("-".to_owned(), |id| id.to_string()),
                            ]
                        })
                        .collect();
                    print_table(&["JOB", "NAME", "STATUS", "PLACED", "RESTARTS", "CHECKPOINT"], rows);
                }
            }
        }
        JobCommand::Status { job_id, client } => {
            let cluster = client_for(&client)?;
            let job = cluster.get_job(&job_id, pb::ReadConsistency::Linearizable).await?;
            // The retained checkpoints, with what triggered each.
            let checkpoints = cluster.list_checkpoints(&job_id).await?;
            // Volatile counts from the leader's memory: a status without them is still useful.
            let reply = cluster.get_job_metrics(&job_id).await.map_err(|error| {
                eprintln!("warning: no metrics from the leader: {error}");
            });
            let running = reply.as_ref().ok().map(|reply| reply.running.clone());
            let metrics = reply.map(|reply| reply.subtasks).unwrap_or_default();
            match client.output {
                OutputFormat::Json => {
                    let mut value = job_json(&job);
                    value["checkpoints"] = checkpoints.iter().map(checkpoint_json).collect();
                    value["metrics"] = metrics.iter().map(subtask_metrics_json).collect();
                    value["functions"] = functions_json(&job, &metrics);
                    if let Some(running) = &running {
                        value["running"] = running
                            .iter()
                            .map(|running| {
                                let task = running.task.clone().unwrap_or_default();
                                json!({
                                    "subtask": format!("{}[{}]", task.operator_id, task.subtask_index),
                                    "epoch": task.epoch,
                                    "restore_ms": running.restore_ms,
                                })
                            })
                            .collect();
                    }
                    value["hot_keys"] = hot_keys_by_operator(&metrics)
                        .into_iter()
                        .map(|(operator, keys)| {
                            let keys: Vec<serde_json::Value> = keys
                                .iter()
                                .map(|(key, count, share)| json!({"key": key, "count": count, "share": share}))
                                .collect();
                            (operator, serde_json::Value::Array(keys))
                        })
                        .collect::<serde_json::Map<String, serde_json::Value>>()
                        .into();
                    println!("{value}");
                }
                OutputFormat::Table => {
                    print_job(&job, &metrics, running.as_deref());
                    for (index, c) in checkpoints.iter().enumerate() {
                        let label = if index == 0 { "checkpoints:" } else { "" };
                        println!(
                            "{label:<12} {} {} ({}, {} bytes, {} ms)",
                            if c.savepoint { "savepoint" } else { "checkpoint" },
                            c.checkpoint_id,
                            trigger_of(c),
                            c.size_bytes,
                            c.completed_at_ms.saturating_sub(c.triggered_at_ms)
                        );
                    }
                }
            }
        }
        JobCommand::Rescale {
            job_id,
            parallelism,
            operator,
            client,
        } => {
            let job = client_for(&client)?
                .rescale_job(&job_id, operator.as_deref(), parallelism, &random_request_id())
                .await?;
            print_value(client.output, job_json(&job), || {
                format!("{}: {} ({})", job.job_id, job.status, job.status_reason)
            });
        }
        JobCommand::Cancel { job_id, client } => {
            let job = client_for(&client)?.cancel_job(&job_id, &random_request_id()).await?;
            print_value(client.output, job_json(&job), || {
                format!("{}: {}", job.job_id, job.status)
            });
        }
        JobCommand::Checkpoints { job_id, client } => {
            let checkpoints = client_for(&client)?.list_checkpoints(&job_id).await?;
            match client.output {
                OutputFormat::Json => {
                    let list: Vec<_> = checkpoints.iter().map(checkpoint_json).collect();
                    println!("{}", serde_json::Value::Array(list));
                }
                OutputFormat::Table => {
                    let rows = checkpoints
                        .iter()
                        .map(|c| {
                            vec![
                                c.checkpoint_id.to_string(),
                                if c.savepoint { "savepoint" } else { "checkpoint" }.to_owned(),
                                trigger_of(c).to_owned(),
                                c.epoch.to_string(),
                                c.size_bytes.to_string(),
                                c.completed_at_ms.to_string(),
                                // Checkpoints recorded before trigger times were kept show none.
                                if c.triggered_at_ms == 0 {
                                    "-".to_owned()
                                } else {
                                    c.completed_at_ms.saturating_sub(c.triggered_at_ms).to_string()
                                },
                            ]
                        })
                        .collect();
                    print_table(
                        &[
                            "ID",
                            "KIND",
                            "TRIGGER",
                            "EPOCH",
                            "BYTES",
                            "COMPLETED_AT_MS",
                            "DURATION_MS",
                        ],
                        rows,
                    );
                }
            }
        }
    }
    Ok(())
}
