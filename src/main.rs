//! `raftstream`: one binary for coordinators, local clusters, the job CLI and benchmarks.

use clap::Parser;
use raftstream::cli::{check_args, drains_before_stopping, run, Cli, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

// Records are small strings allocated and freed by the million per second; glibc's malloc spent
// about a third of the executor's time on them (perf), mimalloc much less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    if let Err(error) = check_args(&cli) {
        eprintln!("error: {error:#}");
        return std::process::ExitCode::from(2);
    }
    let shutdown = CancellationToken::new();
    let drain = CancellationToken::new();
    let signal_shutdown = shutdown.clone();
    let signal_drain = drain.clone();
    let drains = drains_before_stopping(&cli);
    tokio::spawn(async move {
        // SIGINT (Ctrl-C) and SIGTERM both mean a graceful stop; a command that drains first
        // (an executor) drains at the first and stops at the second.
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut signalled = 0;
        loop {
            let next_terminate = async {
                match terminate.as_mut() {
                    Some(stream) => {
                        stream.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = next_terminate => {}
            }
            signalled += 1;
            if drains && signalled == 1 {
                signal_drain.cancel();
            } else {
                signal_shutdown.cancel();
                return;
            }
        }
    });
    match run(cli, shutdown, drain).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
