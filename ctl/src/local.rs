//! drbdctl commands that run without the daemon: metadata (create-md, dump-md,
//! restore-md, check-md, show-gi) and configuration (dump, check).
//!
//! Owns: refusing metadata changes while the daemon has the resource up.
//! Must never: write metadata of a resource the daemon is using.

use crate::{Cli, Failure};
use drbdd::control::client::{Client, ClientError};
use drbdd::control::proto::{Command, EXIT_FAILED};
use drbdd::daemon::md::{MdError, MdLocation};
use drbdd_config::{Config, Resource};
use std::path::Path;

fn failed(e: impl std::fmt::Display) -> Failure {
    Failure::new(EXIT_FAILED, e.to_string())
}

fn load(cli: &Cli) -> Result<Config, Failure> {
    drbdd_config::load_dir(&cli.config_dir).map_err(|e| {
        Failure::new(
            EXIT_FAILED,
            format!(
                "configuration in {} is invalid:\n{e}",
                cli.config_dir.display()
            ),
        )
    })
}

fn resource<'a>(cli: &Cli, config: &'a Config, name: &str) -> Result<&'a Resource, Failure> {
    config.resource(name).ok_or_else(|| {
        failed(format!(
            "no resource '{name}' in {}/resources.d; create {name}.toml there",
            cli.config_dir.display()
        ))
    })
}

fn node_name(cli: &Cli) -> String {
    cli.node
        .clone()
        .unwrap_or_else(drbdd_config::local_hostname)
}

fn location(cli: &Cli, name: &str, max_peers: Option<u8>) -> Result<MdLocation, Failure> {
    let config = load(cli)?;
    let res = resource(cli, &config, name)?;
    let node = res.local_node(&node_name(cli)).map_err(failed)?;
    MdLocation::of(res, node, max_peers).map_err(failed)
}

/// Refuses when a reachable daemon has `name` up; an unreachable daemon is fine.
fn ensure_not_up(cli: &Cli, name: &str) -> Result<(), Failure> {
    let cmd = Command::Status {
        resource: Some(name.to_owned()),
    };
    match Client::call(&cli.run_dir, cmd) {
        Err(ClientError::Unreachable { .. }) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(resp) if resp.error.is_none() && !resp.status.is_empty() => Err(failed(format!(
            "{name} is up in drbdd; take it down first (drbdctl down {name})"
        ))),
        Ok(_) => Ok(()),
    }
}

pub(crate) fn create_md(
    cli: &Cli,
    name: &str,
    force: bool,
    max_peers: Option<u8>,
) -> Result<(), Failure> {
    let loc = location(cli, name, max_peers)?;
    ensure_not_up(cli, name)?;
    if !force && loc.open().is_ok() {
        return Err(failed(format!(
            "{} already holds valid drbdd metadata; use --force to overwrite it (this forgets the generation identifiers and bitmaps)",
            loc.md_path.display()
        )));
    }
    loc.create(force).map_err(|e| match e {
        MdError::Signature { .. } => failed(e),
        other => failed(format!("create-md {name}: {other}")),
    })?;
    println!(
        "new drbdd metadata block successfully created on {} (max-peers {})",
        loc.md_path.display(),
        loc.max_peers
    );
    Ok(())
}

pub(crate) fn dump_md(cli: &Cli, name: &str) -> Result<(), Failure> {
    let loc = location(cli, name, None)?;
    ensure_not_up(cli, name)?;
    print!("{}", loc.dump().map_err(failed)?);
    Ok(())
}

pub(crate) fn restore_md(cli: &Cli, name: &str, file: &Path) -> Result<(), Failure> {
    let loc = location(cli, name, None)?;
    ensure_not_up(cli, name)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| failed(format!("cannot read {}: {e}", file.display())))?;
    loc.restore(&text).map_err(failed)?;
    println!("metadata of {name} restored from {}", file.display());
    Ok(())
}

pub(crate) fn check_md(cli: &Cli, name: &str) -> Result<(), Failure> {
    let loc = location(cli, name, None)?;
    ensure_not_up(cli, name)?;
    let (ok, text) = loc.check().map_err(failed)?;
    print!("{text}");
    if ok {
        Ok(())
    } else {
        Err(failed(format!(
            "metadata of {name} has problems (see above)"
        )))
    }
}

pub(crate) fn show_gi(cli: &Cli, name: &str) -> Result<(), Failure> {
    let loc = location(cli, name, None)?;
    let store = loc.open().map_err(failed)?;
    let sb = store.superblock();
    let slots: Vec<usize> = sb
        .peers
        .iter()
        .enumerate()
        .filter(|(_, p)| p.node_id.is_some())
        .map(|(i, _)| i)
        .collect();
    if slots.is_empty() {
        print!("{}", drbdd_metadata::show_gi(sb, 0));
    }
    for slot in slots {
        print!("{}", drbdd_metadata::show_gi(sb, slot));
    }
    Ok(())
}

pub(crate) fn dump(cli: &Cli, name: Option<&str>) -> Result<(), Failure> {
    let config = load(cli)?;
    let texts: Vec<String> = match name {
        Some(n) => vec![resource(cli, &config, n)?.to_toml()],
        None => config.resources.iter().map(Resource::to_toml).collect(),
    };
    print!("{}", texts.join("\n"));
    Ok(())
}

pub(crate) fn check(cli: &Cli) -> Result<(), Failure> {
    let config = load(cli)?;
    let names: Vec<&str> = config.resources.iter().map(|r| r.name.as_str()).collect();
    println!(
        "configuration in {} is valid: {} resource(s): {}",
        cli.config_dir.display(),
        names.len(),
        names.join(", ")
    );
    Ok(())
}
