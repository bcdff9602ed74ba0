//! Runtime handlers (Kubernetes RuntimeClass): the OCI runtimes crustd is
//! configured with, each probed once at start. A pod names one (or the
//! default with an empty name); every container of the pod runs through it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::Runc;
use crate::{Error, Result};

/// The handler of records written before crust had more than one: runc.
pub const LEGACY_HANDLER: &str = "runc";

/// serde's default for a record's handler (records from before handlers).
pub(crate) fn legacy_handler() -> String {
    LEGACY_HANDLER.to_string()
}

/// One configured OCI runtime, as the config names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerSpec {
    /// The handler's name (what a pod's `runtime_handler` says).
    pub name: String,
    /// The OCI runtime binary (a path, or the bare name when none was found).
    pub binary: PathBuf,
    /// Its state directory (`--root`).
    pub root: PathBuf,
    /// Global arguments given before every subcommand.
    pub options: Vec<String>,
}

/// What the start-up probe found of a handler's binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// `Ok` when the binary runs; else why not, for a person to act on.
    pub usable: std::result::Result<(), String>,
    /// The first line of `<binary> --version`.
    pub version: String,
    /// The output of `<binary> features`, where the binary has it.
    pub features: Option<serde_json::Value>,
    /// `Ok` when the processes it execs join the container's user
    /// namespace, which a user-namespaced pod needs; else why not.
    pub user_namespaces: std::result::Result<(), String>,
}

/// One handler: its spec, its probe and the runtime it drives.
#[derive(Clone)]
pub struct Handler {
    /// How the config set it up.
    pub spec: HandlerSpec,
    /// What the start-up probe found.
    pub probe: Probe,
    /// The OCI runtime's commands.
    pub runc: Arc<dyn Runc>,
}

/// Every configured handler, by name, and the default one.
#[derive(Clone)]
pub struct Handlers {
    default: String,
    by_name: BTreeMap<String, Handler>,
}

impl Handlers {
    /// The handlers; `default` must be one of them.
    pub fn new(default: &str, handlers: Vec<Handler>) -> anyhow::Result<Handlers> {
        let by_name: BTreeMap<String, Handler> = handlers
            .into_iter()
            .map(|h| (h.spec.name.clone(), h))
            .collect();
        if !by_name.contains_key(default) {
            anyhow::bail!(
                "the default runtime handler {default:?} is not configured (handlers: {})",
                names(&by_name)
            );
        }
        Ok(Handlers {
            default: default.to_string(),
            by_name,
        })
    }

    /// The name an empty `runtime_handler` stands for.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Every handler, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Handler> {
        self.by_name.values()
    }

    /// The handler called `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&Handler> {
        self.by_name.get(name)
    }

    /// The handler a new pod asking for `requested` gets: the default for
    /// "", `NotFound` naming the handlers for an unknown name, and
    /// `FailedPrecondition` with the reason for one that cannot run here.
    pub fn for_pod(&self, requested: &str) -> Result<&Handler> {
        let name = if requested.is_empty() {
            self.default.as_str()
        } else {
            requested
        };
        let h = self.by_name.get(name).ok_or_else(|| {
            Error::not_found(format!(
                "runtime handler {name:?} is not configured; the handlers are {}",
                names(&self.by_name)
            ))
        })?;
        match &h.probe.usable {
            Ok(()) => Ok(h),
            Err(why) => Err(Error::FailedPrecondition(format!(
                "runtime handler {name:?} cannot run on this host: {why}"
            ))),
        }
    }

    /// The OCI runtime of an existing object's handler `name`.
    pub fn runc(&self, name: &str) -> anyhow::Result<&Arc<dyn Runc>> {
        self.by_name.get(name).map(|h| &h.runc).ok_or_else(|| {
            anyhow::anyhow!(
                "runtime handler {name:?} is no longer configured (handlers: {}); add it back to the config to manage its containers",
                names(&self.by_name)
            )
        })
    }
}

/// The names of `handlers`, quoted and comma-separated.
fn names(handlers: &BTreeMap<String, Handler>) -> String {
    handlers
        .keys()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
