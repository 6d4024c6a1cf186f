//! `drbdctl`: the admin tool. Resource commands go to the daemon over
//! `<run-dir>/drbdd.sock`; metadata commands run locally (like drbdmeta) and
//! refuse while the daemon has the resource up. Exit codes follow drbdadm:
//! 0 ok, 1 usage, 10 failed / bad config, 11 state change refused,
//! 17 no UpToDate data, 20 daemon unreachable.

mod local;

use clap::{Parser, Subcommand};
use drbdd::control::client::{Client, ClientError};
use drbdd::control::proto::{
    Command, Response, DEFAULT_RUN_DIR, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE,
};
use drbdd::control::render;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Administer drbdd resources (DRBD-style replicated block devices).
#[derive(Debug, Parser)]
#[command(version)]
pub(crate) struct Cli {
    /// Where the daemon's control socket is.
    #[arg(long, global = true, env = "DRBDD_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Directory with global.toml and resources.d/*.toml.
    #[arg(long, global = true, env = "DRBDD_CONFIG_DIR", default_value = drbdd_config::DEFAULT_CONFIG_DIR)]
    config_dir: PathBuf,
    /// This node's name in the resource files (default: the host name).
    #[arg(long, global = true, env = "DRBDD_NODE")]
    node: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Bring a resource up: attach the disk, configure peers.
    Up { resource: String },
    /// Take a resource down (it must be Secondary).
    Down { resource: String },
    /// Attach the local backing device again.
    Attach { resource: String },
    /// Detach the local backing device (the resource becomes Diskless).
    Detach { resource: String },
    /// Promote to Primary.
    #[command(alias = "promote")]
    Primary {
        resource: String,
        /// Make this node's data UpToDate even if it is not (initial sync source, disaster recovery).
        #[arg(long)]
        force: bool,
    },
    /// Demote to Secondary.
    #[command(alias = "demote")]
    Secondary { resource: String },
    /// Connect to the peers (all resources that are up if none is named).
    Connect {
        resource: Option<String>,
        /// After a split brain: this node's changes are discarded (it becomes sync target).
        #[arg(long)]
        discard_my_data: bool,
    },
    /// Close the peer connections; the resource stays StandAlone until `connect`.
    Disconnect { resource: String },
    /// Show the state of one or all resources (drbdadm status layout).
    Status {
        resource: Option<String>,
        #[arg(long, short)]
        verbose: bool,
        #[arg(long, short)]
        statistics: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print state changes in drbdsetup events2 layout.
    Events {
        /// Print the current state and exit.
        #[arg(long)]
        now: bool,
        #[arg(long)]
        statistics: bool,
    },
    /// Write fresh metadata to the resource's backing device (no daemon needed).
    CreateMd {
        resource: String,
        /// Overwrite even if the device holds a file system or metadata.
        #[arg(long)]
        force: bool,
        /// Peer slots to reserve (default: the resource's max-peers).
        #[arg(long)]
        max_peers: Option<u8>,
    },
    /// Print the metadata as text.
    DumpMd { resource: String },
    /// Replace the metadata with a dump made by dump-md.
    RestoreMd { resource: String, file: PathBuf },
    /// Check every metadata copy and the activity log.
    CheckMd { resource: String },
    /// Show the generation identifiers.
    ShowGi { resource: String },
    /// Print the effective configuration (defaults filled in).
    Dump { resource: Option<String> },
    /// Validate the configuration; nothing is touched.
    Check,
    /// Re-read the configuration and apply changes to running resources (brings up missing ones).
    Adjust { resource: Option<String> },
}

/// A failure: exit code and what to tell the user.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
            _ => EXIT_FAILED,
        };
        Failure::new(code, e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // drbdadm's usage errors exit 1 (clap's default is 2); --help/--version exit 0.
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("drbdctl: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.cmd {
        Cmd::Up { resource } => simple(
            cli,
            Command::Up {
                resource: resource.clone(),
            },
        ),
        Cmd::Down { resource } => simple(
            cli,
            Command::Down {
                resource: resource.clone(),
            },
        ),
        Cmd::Attach { resource } => simple(
            cli,
            Command::Attach {
                resource: resource.clone(),
            },
        ),
        Cmd::Detach { resource } => simple(
            cli,
            Command::Detach {
                resource: resource.clone(),
            },
        ),
        Cmd::Primary { resource, force } => simple(
            cli,
            Command::Primary {
                resource: resource.clone(),
                force: *force,
            },
        ),
        Cmd::Secondary { resource } => simple(
            cli,
            Command::Secondary {
                resource: resource.clone(),
            },
        ),
        Cmd::Connect {
            resource,
            discard_my_data,
        } => simple(
            cli,
            Command::Connect {
                resource: resource.clone(),
                discard_my_data: *discard_my_data,
            },
        ),
        Cmd::Disconnect { resource } => simple(
            cli,
            Command::Disconnect {
                resource: resource.clone(),
            },
        ),
        Cmd::Adjust { resource } => simple(
            cli,
            Command::Adjust {
                resource: resource.clone(),
            },
        ),
        Cmd::Status {
            resource,
            verbose,
            statistics,
            json,
        } => status(cli, resource.clone(), *verbose, *statistics, *json),
        Cmd::Events { now, statistics } => events(cli, *now, *statistics),
        Cmd::CreateMd {
            resource,
            force,
            max_peers,
        } => local::create_md(cli, resource, *force, *max_peers),
        Cmd::DumpMd { resource } => local::dump_md(cli, resource),
        Cmd::RestoreMd { resource, file } => local::restore_md(cli, resource, file),
        Cmd::CheckMd { resource } => local::check_md(cli, resource),
        Cmd::ShowGi { resource } => local::show_gi(cli, resource),
        Cmd::Dump { resource } => local::dump(cli, resource.as_deref()),
        Cmd::Check => local::check(cli),
    }
}

/// Turns an error answer into a failure with drbdadm's exit code.
fn checked(resp: Response) -> Result<Response, Failure> {
    match resp.error {
        Some(e) => Err(Failure::new(e.kind.exit_code(), e.message)),
        None => Ok(resp),
    }
}

fn simple(cli: &Cli, cmd: Command) -> Result<(), Failure> {
    let resp = checked(Client::call(&cli.run_dir, cmd)?)?;
    if !resp.message.is_empty() {
        eprintln!("{}", resp.message);
    }
    Ok(())
}

fn status(
    cli: &Cli,
    resource: Option<String>,
    verbose: bool,
    statistics: bool,
    json: bool,
) -> Result<(), Failure> {
    let resp = checked(Client::call(&cli.run_dir, Command::Status { resource })?)?;
    if json {
        let text = serde_json::to_string_pretty(&resp.status)
            .map_err(|e| Failure::new(EXIT_FAILED, e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    let texts: Vec<String> = resp
        .status
        .iter()
        .map(|st| render::status_text(st, verbose, statistics))
        .collect();
    print!("{}", texts.join("\n"));
    Ok(())
}

fn events(cli: &Cli, now: bool, statistics: bool) -> Result<(), Failure> {
    let mut client = Client::connect(&cli.run_dir)?;
    client.send(Command::Events { now, statistics })?;
    let mut stdout = std::io::stdout().lock();
    while let Some(resp) = client.recv()? {
        let resp = checked(resp)?;
        let Some(line) = resp.event else { continue };
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(()); // reader went away (e.g. `| head`)
        }
        if now && line == "exists -" {
            return Ok(());
        }
    }
    Ok(())
}
