//! Resource configuration: TOML resource files mirroring DRBD's `resource`/`on`/`net`/`disk`
//! sections, parsed and validated with file:line:column errors.
//!
//! Layout: `<config-dir>/global.toml` (optional, `[common]` defaults) and
//! `<config-dir>/resources.d/*.toml`, one resource per file named after the resource.
//!
//! Owns: the config data model and its validation. Must never: open sockets or devices.
#![forbid(unsafe_code)]

mod error;
mod model;
mod reader;
mod render;
mod schema;
mod sections;
mod span;
mod suggest;
mod units;
mod validate;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors, ErrorKind};
pub use model::{
    AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, Common, Config, Connection, CpuMask, Disk, Frontends,
    Global, Handlers, MetaDisk, Net, Node, OnIoError, OnNoQuorum, Options, Protocol, Quorum,
    Resource, DEFAULT_MAX_PEERS, MAX_PEERS_LIMIT, NODE_ID_LIMIT,
};

/// Default configuration directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/drbdd";
/// Name of the optional global file inside the config directory.
pub const GLOBAL_FILE: &str = "global.toml";
/// Directory of resource files inside the config directory.
pub const RESOURCES_DIR: &str = "resources.d";

/// Parses one resource file with built-in defaults. Pure: `path` is only used in messages
/// and for the file-name check (a `.toml` file must be named `<resource>.toml`).
pub fn parse_resource(path: &Path, text: &str) -> Result<Resource, ConfigErrors> {
    parse_resource_with(path, text, &Global::default())
}

/// Parses one resource file starting from `global`'s `[common]` defaults.
pub fn parse_resource_with(
    path: &Path,
    text: &str,
    global: &Global,
) -> Result<Resource, ConfigErrors> {
    schema::parse_resource_full(path, text, global).map(|p| p.resource)
}

/// Parses `global.toml` text.
pub fn parse_global(path: &Path, text: &str) -> Result<Global, ConfigErrors> {
    schema::parse_global(path, text)
}

fn io_error(path: &Path, what: &str, e: &std::io::Error) -> ConfigError {
    ConfigError {
        path: path.to_owned(),
        line: 0,
        col: 0,
        kind: ErrorKind::Io,
        message: format!("cannot {what}: {e}; check that it exists and is readable"),
    }
}

/// Reads and validates `<config_dir>/global.toml` (optional) and every
/// `<config_dir>/resources.d/*.toml`, including clashes between resources (same port, or
/// same minor on one machine). Resource names are unique because each file must be named
/// `<resource>.toml`. Returns every problem.
pub fn load_dir(config_dir: &Path) -> Result<Config, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let global_path = config_dir.join(GLOBAL_FILE);
    let global = match std::fs::read_to_string(&global_path) {
        Ok(text) => parse_global(&global_path, &text).unwrap_or_else(|e| {
            errors.errors.extend(e.errors);
            Global::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Global::default(),
        Err(e) => {
            errors
                .errors
                .push(io_error(&global_path, "read global file", &e));
            Global::default()
        }
    };
    let files = match resource_files(&config_dir.join(RESOURCES_DIR)) {
        Ok(files) => files,
        Err(e) => {
            errors.errors.push(e);
            Vec::new()
        }
    };
    let mut resources: Vec<Resource> = Vec::new();
    let mut claims = Vec::new();
    for path in files {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors
                    .errors
                    .push(io_error(&path, "read resource file", &e));
                continue;
            }
        };
        match schema::parse_resource_full(&path, &text, &global) {
            Ok(parsed) => {
                let ctx = reader::Ctx::new(&path, &text);
                claims.extend(validate::claims_of(&ctx, &parsed.resource, &parsed.spans));
                resources.push(parsed.resource);
            }
            Err(e) => errors.errors.extend(e.errors),
        }
    }
    errors.errors.extend(validate::clashes(&claims, true));
    if !errors.is_empty() {
        return Err(errors);
    }
    resources.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Config { global, resources })
}

/// `*.toml` files in `dir`, sorted by name.
fn resource_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| io_error(dir, "read resource directory", &e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, "read resource directory", &e))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// This machine's host name (short form), used to pick the local `[on.<host>]` node; the
/// daemon's `--node NAME` overrides it.
pub fn local_hostname() -> String {
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let from_etc = || std::fs::read_to_string("/etc/hostname").ok();
    let from_env = || std::env::var("HOSTNAME").ok();
    from_proc
        .or_else(from_etc)
        .or_else(from_env)
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl Resource {
    /// The effective configuration (defaults filled in) as TOML, for `drbdctl dump`;
    /// [`parse_resource`] of the output gives an equal `Resource`.
    pub fn to_toml(&self) -> String {
        render::render(self)
    }
}
