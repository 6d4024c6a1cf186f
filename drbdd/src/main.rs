//! `drbdd`: the per-node daemon. Runs in the foreground (systemd
//! `Type=simple`), serves `<run-dir>/drbdd.sock`, and stops cleanly on SIGTERM
//! or SIGINT (metadata persisted, socket and lock file removed).

use anyhow::Context;
use clap::Parser;
use drbdd::control::proto::{DEFAULT_RUN_DIR, LOCK_NAME, SOCKET_NAME};
use drbdd::control::server::Server;
use drbdd::daemon::actor;
use drbdd::daemon::process::{self, RunDirLock};
use drbdd::daemon::runtime::{Daemon, DaemonConfig};
use std::path::PathBuf;
use std::sync::Arc;

/// DRBD-style replicated block devices in userspace: the per-node daemon.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Directory with global.toml and resources.d/*.toml.
    #[arg(long, env = "DRBDD_CONFIG_DIR", default_value = drbdd_config::DEFAULT_CONFIG_DIR)]
    config_dir: PathBuf,
    /// Directory for the control socket and the lock file.
    #[arg(long, env = "DRBDD_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// This node's name in the resource files (default: the host name).
    #[arg(long, env = "DRBDD_NODE")]
    node: Option<String>,
    /// Log level when RUST_LOG is not set (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    process::init_logging(&args.log_level);
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("drbdd: {e:#}");
            std::process::ExitCode::from(10)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let node_name = args.node.unwrap_or_else(drbdd_config::local_hostname);
    process::tune_allocator();
    // Must run while the process has one thread (ublk: see daemon/ublk.rs).
    if actor::enter_namespace_if_needed(&args.config_dir, &node_name) {
        tracing::info!("serving ublk devices: running in a private mount namespace");
    }
    process::block_shutdown_signals().context("cannot block shutdown signals")?;
    let lock = RunDirLock::acquire(&args.run_dir, LOCK_NAME)?;
    let socket_path = args.run_dir.join(SOCKET_NAME);
    let server = Server::bind(&socket_path)
        .with_context(|| format!("cannot bind control socket {}", socket_path.display()))?;
    let daemon = Arc::new(Daemon::new(DaemonConfig {
        config_dir: args.config_dir.clone(),
        run_dir: args.run_dir.clone(),
        node_name: node_name.clone(),
    }));
    tracing::info!(
        pid = std::process::id(),
        node = %node_name,
        config_dir = %args.config_dir.display(),
        socket = %socket_path.display(),
        "drbdd started"
    );
    actor::reclaim_devices(&args.config_dir, &node_name);
    let serving = Arc::clone(&daemon);
    std::thread::Builder::new()
        .name("drbdd-accept".into())
        .spawn(move || server.serve(serving))
        .context("cannot start the control socket thread")?;
    let signal = process::wait_for_shutdown_signal().context("waiting for signals failed")?;
    tracing::info!(signal, "shutting down");
    // Socket first: no new requests while resources stop.
    let _ = std::fs::remove_file(&socket_path);
    daemon.shutdown();
    lock.remove();
    tracing::info!("drbdd stopped");
    Ok(())
}
