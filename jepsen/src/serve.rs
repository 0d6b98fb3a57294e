//! `raftstream-jepsen --serve PORT`: the proxied cluster without workloads, taking fault commands,
//! one line each, on 127.0.0.1:PORT (what `jepsen/scripts/fault.sh` sends), until Ctrl-C. This is how
//! a person partitions or slows a running cluster by hand.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::config::RunConfig;
use crate::nemesis::{apply_fault, heal_everything, Heal};
use crate::run::start_cluster;
use crate::schedule::{FaultKind, ScheduledFault, Target};

/// A command line (`partition leader`, `delay 15`, `heal`, ...) as a fault; `None` for `heal` and
/// `status`, which are not faults.
pub fn parse_command(line: &str) -> Result<Option<ScheduledFault>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |position: usize| -> Result<u32, String> {
        words.get(position).map_or(Ok(0), |word| {
            word.parse().map_err(|_| format!("{word:?} is not a number"))
        })
    };
    let fault = |kind: FaultKind, target: Target| {
        Ok(Some(ScheduledFault {
            quiet_ms: 0,
            kind,
            target,
            duration_ms: 0,
        }))
    };
    match words.as_slice() {
        ["heal"] | ["status"] => Ok(None),
        ["kill" | "pause", role, ..] => {
            let kind = if words[0] == "kill" {
                FaultKind::Kill
            } else {
                FaultKind::Pause
            };
            let target = match *role {
                "leader" => Target::Leader,
                "follower" => Target::Follower(number(2)?),
                "executor" => Target::Executor(number(2)?),
                other => return Err(format!("unknown role {other:?}: leader, follower [N], executor [N]")),
            };
            fault(kind, target)
        }
        ["restart-all"] => fault(FaultKind::RestartAll, Target::Everything),
        ["partition", shape, ..] => {
            let target = match *shape {
                "leader" => Target::IsolatedLeader,
                "minority" => Target::Minority(number(2)?),
                "bridge" => Target::Bridge(number(2)?),
                "executor" => Target::IsolatedExecutor(number(2)?),
                other => {
                    return Err(format!(
                        "unknown partition {other:?}: leader, minority [N], bridge [N], executor [N]"
                    ))
                }
            };
            fault(FaultKind::Partition, target)
        }
        ["delay", milliseconds] => {
            let delay_ms = milliseconds
                .parse()
                .map_err(|_| format!("{milliseconds:?} is not a number of milliseconds"))?;
            fault(FaultKind::Delay, Target::AllLinks { delay_ms })
        }
        _ => Err(format!(
            "unknown command {line:?}; try: kill|pause leader|follower N|executor N, restart-all, \
             partition leader|minority N|bridge N|executor N, delay MS, heal, status"
        )),
    }
}

/// Runs the cluster and the command port until Ctrl-C.
pub async fn serve(config: RunConfig, port: u16) -> anyhow::Result<()> {
    let (mut cluster, network, _admin) = start_cluster(&config).await?;
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding the fault command port 127.0.0.1:{port}"))?;
    println!("coordinators: {}", cluster.addresses().join(","));
    println!("fault commands on 127.0.0.1:{port} (jepsen/scripts/fault.sh); Ctrl-C stops everything");
    let mut pending: Vec<Heal> = Vec::new();
    loop {
        let (socket, _) = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => accepted?,
        };
        let (reader, mut writer) = socket.into_split();
        let mut line = String::new();
        let _ = BufReader::new(reader).read_line(&mut line).await;
        let reply = match parse_command(line.trim()) {
            Err(problem) => format!("error: {problem}"),
            Ok(None) if line.trim() == "status" => {
                let leader = cluster.wait_for_leader(Duration::from_secs(2)).await.ok();
                format!("ok: leader {leader:?}, {} fault(s) in place", pending.len())
            }
            Ok(None) => {
                let healed = pending.len();
                for heal in pending.drain(..) {
                    if let Err(error) = heal.apply(&mut cluster, &network) {
                        tracing::warn!(error = %format!("{error:#}"), "heal failed");
                    }
                }
                match heal_everything(&mut cluster, &network).await {
                    Ok(()) => format!("ok: healed {healed} fault(s); every link restored, every process running"),
                    Err(error) => format!("error: {error:#}"),
                }
            }
            Ok(Some(fault)) => match apply_fault(&mut cluster, &network, &fault, None).await {
                Ok((target, heal)) => {
                    if fault.kind == FaultKind::RestartAll {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        heal.apply(&mut cluster, &network)?;
                        format!("ok: restarted {target}")
                    } else {
                        pending.push(heal);
                        format!("ok: {} {target} (until heal)", fault.kind.name())
                    }
                }
                Err(error) => format!("error: {error:#}"),
            },
        };
        println!("{} -> {reply}", line.trim());
        let _ = writer.write_all(format!("{reply}\n").as_bytes()).await;
    }
    network.heal()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_into_faults_and_nonsense_is_refused_by_name() {
        let parsed = |line: &str| parse_command(line).map(|fault| fault.map(|fault| (fault.kind, fault.target)));
        assert_eq!(
            parsed("partition leader"),
            Ok(Some((FaultKind::Partition, Target::IsolatedLeader)))
        );
        assert_eq!(
            parsed("partition bridge 2"),
            Ok(Some((FaultKind::Partition, Target::Bridge(2))))
        );
        assert_eq!(
            parsed("pause follower 1"),
            Ok(Some((FaultKind::Pause, Target::Follower(1))))
        );
        assert_eq!(
            parsed("delay 15"),
            Ok(Some((FaultKind::Delay, Target::AllLinks { delay_ms: 15 })))
        );
        assert_eq!(parsed("heal"), Ok(None));
        assert!(parsed("partition moon")
            .err()
            .unwrap_or_default()
            .contains("unknown partition \"moon\""));
        assert!(parsed("delay soon").err().unwrap_or_default().contains("not a number"));
        assert!(parsed("reboot").err().unwrap_or_default().contains("unknown command"));
    }
}
