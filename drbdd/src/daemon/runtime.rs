//! The daemon's request dispatcher: loads the config for `up`/`adjust`, keeps
//! the map of running resources, forwards admin commands to their actors and
//! serves status and events.
//!
//! Owns: the resource map (one lock, never held while waiting on an actor for
//! more than one request). Must never: touch metadata or state directly (the
//! actors do).

use super::actor::{
    ask, before_admin, ActorMsg, ActorTx, AdminCmd, AdminError, AdminResult, ResourceHandle,
};
use super::events::EventBus;
use crate::control::proto::{Command, ErrorKind, Request, ResourceStatus, Response};
use crate::control::render;
use crate::control::server::{Dispatch, Responder};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How often an idle events stream checks whether its client is still there.
const EVENTS_IDLE_CHECK: Duration = Duration::from_secs(1);

/// Daemon-wide settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub config_dir: PathBuf,
    pub run_dir: PathBuf,
    pub node_name: String,
}

/// The running daemon.
#[derive(Debug)]
pub struct Daemon {
    cfg: DaemonConfig,
    resources: Mutex<BTreeMap<String, ResourceHandle>>,
    events: Arc<EventBus>,
}

impl Daemon {
    /// A daemon with no resources up.
    pub fn new(cfg: DaemonConfig) -> Self {
        Daemon {
            cfg,
            resources: Mutex::new(BTreeMap::new()),
            events: Arc::new(EventBus::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ResourceHandle>> {
        self.resources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops every resource, persisting metadata (daemon shutdown).
    pub fn shutdown(&self) {
        let all = std::mem::take(&mut *self.lock());
        for (name, handle) in all {
            tracing::info!(resource = %name, "stopping resource");
            handle.stop();
        }
    }

    fn load_resource(&self, name: &str) -> Result<drbdd_config::Resource, AdminError> {
        let config = drbdd_config::load_dir(&self.cfg.config_dir).map_err(|e| {
            (
                ErrorKind::Failed,
                format!(
                    "configuration in {} is invalid:\n{e}",
                    self.cfg.config_dir.display()
                ),
            )
        })?;
        config.resource(name).cloned().ok_or_else(|| {
            (
                ErrorKind::Failed,
                format!(
                    "no resource '{name}' in {}/resources.d; create {name}.toml there",
                    self.cfg.config_dir.display()
                ),
            )
        })
    }

    fn up(&self, name: &str) -> AdminResult {
        if self.lock().contains_key(name) {
            return Ok(format!("{name} is already up"));
        }
        let res = self.load_resource(name)?;
        let handle = ResourceHandle::start(
            res,
            &self.cfg.node_name,
            Arc::clone(&self.events),
            &self.cfg.run_dir,
        )?;
        tracing::info!(resource = %name, "resource up");
        self.lock().insert(name.to_owned(), handle);
        Ok(String::new())
    }

    fn down(&self, name: &str) -> AdminResult {
        let mut map = self.lock();
        let Some(handle) = map.get(name) else {
            return Ok(format!("{name} is not up"));
        };
        let msg = handle.admin(AdminCmd::Down)?;
        if let Some(mut handle) = map.remove(name) {
            handle.join();
        }
        tracing::info!(resource = %name, "resource down");
        Ok(msg)
    }

    /// The actor's sender, taken under the map lock; the lock is released
    /// before waiting for the actor, so one slow resource (draining I/O on
    /// demote, say) does not stall requests for the others.
    fn sender(&self, name: &str) -> Result<ActorTx, AdminError> {
        let map = self.lock();
        map.get(name)
            .map(ResourceHandle::sender)
            .ok_or_else(|| not_up(name))
    }

    fn admin(&self, name: &str, cmd: AdminCmd) -> AdminResult {
        let tx = self.sender(name)?;
        before_admin(&tx, &cmd);
        let c = cmd.clone();
        let result = ask(&tx, |reply| ActorMsg::Admin { cmd: c, reply })
            .unwrap_or_else(|| Err(actor_gone(name)));
        match &result {
            Ok(_) => tracing::info!(resource = %name, ?cmd, "admin command done"),
            Err((_, why)) => tracing::warn!(resource = %name, ?cmd, %why, "admin command refused"),
        }
        result
    }

    /// `connect [RES]`: one resource, or every resource that is up.
    fn connect(&self, name: Option<&str>, discard_my_data: bool) -> AdminResult {
        let names: Vec<String> = match name {
            Some(n) => vec![n.to_owned()],
            None => self.lock().keys().cloned().collect(),
        };
        let mut notes = Vec::new();
        for n in names {
            notes.push(self.admin(&n, AdminCmd::Connect { discard_my_data })?);
        }
        Ok(notes.join("\n"))
    }

    fn statuses(&self, name: Option<&str>) -> Result<Vec<ResourceStatus>, AdminError> {
        let senders: Vec<ActorTx> = match name {
            Some(n) => vec![self.sender(n)?],
            None => self.lock().values().map(ResourceHandle::sender).collect(),
        };
        Ok(senders
            .iter()
            .filter_map(|tx| ask(tx, |reply| ActorMsg::Status { reply }))
            .collect())
    }

    fn adjust(&self, name: Option<&str>) -> AdminResult {
        let config = drbdd_config::load_dir(&self.cfg.config_dir).map_err(|e| {
            (
                ErrorKind::Failed,
                format!(
                    "configuration in {} is invalid; nothing changed:\n{e}",
                    self.cfg.config_dir.display()
                ),
            )
        })?;
        let targets: Vec<&drbdd_config::Resource> = match name {
            Some(n) => vec![config.resource(n).ok_or_else(|| {
                (
                    ErrorKind::Failed,
                    format!("no resource '{n}' in the configuration"),
                )
            })?],
            None => config.resources.iter().collect(),
        };
        let mut notes = Vec::new();
        for res in targets {
            let running = self.lock().contains_key(&res.name);
            if running {
                let map = self.lock();
                if let Some(h) = map.get(&res.name) {
                    notes.push(h.reconfigure(res.clone())?);
                }
            } else {
                self.up(&res.name)?;
                notes.push(format!("{}: up", res.name));
            }
        }
        Ok(notes.join("\n"))
    }

    fn events(&self, now: bool, statistics: bool, out: &mut Responder) {
        let rx = self.events.subscribe();
        let statuses = self.statuses(None).unwrap_or_default();
        for st in &statuses {
            for line in render::events_exists(st, statistics) {
                if out.send(&Response::event(line)).is_err() {
                    return;
                }
            }
        }
        if out.send(&Response::event("exists -".into())).is_err() || now {
            return;
        }
        // Wake up now and then to notice a client that went away while no
        // events happened, so its thread and subscription do not linger.
        loop {
            match rx.recv_timeout(EVENTS_IDLE_CHECK) {
                Ok(line) => {
                    if out.send(&Response::event(line)).is_err() {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) if !out.client_gone() => {}
                Err(_) => return,
            }
        }
    }
}

fn actor_gone(name: &str) -> AdminError {
    (
        ErrorKind::Failed,
        format!("{name}: the resource's thread has stopped; see the drbdd log"),
    )
}

fn not_up(name: &str) -> AdminError {
    (
        ErrorKind::Failed,
        format!("{name}: no such resource is up; run drbdctl up {name} first"),
    )
}

fn answer(result: AdminResult) -> Response {
    match result {
        Ok(msg) => Response::ok_msg(msg),
        Err((kind, msg)) => Response::err(kind, msg),
    }
}

impl Dispatch for Daemon {
    fn dispatch(&self, req: Request, out: &mut Responder) {
        let resp = match req.cmd {
            Command::Ping => Response {
                pid: Some(std::process::id()),
                ..Response::ok()
            },
            Command::Up { resource } => answer(self.up(&resource)),
            Command::Down { resource } => answer(self.down(&resource)),
            Command::Attach { resource } => answer(self.admin(&resource, AdminCmd::Attach)),
            Command::Detach { resource } => answer(self.admin(&resource, AdminCmd::Detach)),
            Command::Primary { resource, force } => {
                answer(self.admin(&resource, AdminCmd::Primary { force }))
            }
            Command::Secondary { resource } => answer(self.admin(&resource, AdminCmd::Secondary)),
            Command::Status { resource } => match self.statuses(resource.as_deref()) {
                Ok(status) => Response {
                    status,
                    ..Response::ok()
                },
                Err((kind, msg)) => Response::err(kind, msg),
            },
            Command::Adjust { resource } => answer(self.adjust(resource.as_deref())),
            Command::Events { now, statistics } => return self.events(now, statistics, out),
            Command::Connect {
                resource,
                discard_my_data,
            } => answer(self.connect(resource.as_deref(), discard_my_data)),
            Command::Disconnect { resource } => answer(self.admin(&resource, AdminCmd::Disconnect)),
        };
        if let Err(e) = out.send(&resp) {
            tracing::debug!(error = %e, "control client went away before the answer");
        }
    }
}
