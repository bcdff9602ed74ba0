//! The undo stack of a staged create, as data: every step that made something
//! pushes the [`Step`] that takes it away again; a failure runs the stack in
//! reverse. A step that fails then is not dropped: the object is kept with the
//! steps it still owes recorded, so StopContainer, RemoveContainer,
//! StopPodSandbox, RemovePodSandbox (kubelet retries them) and the periodic
//! sweep finish the job, even after a restart of crustd.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One way of taking away what a create made. Every step is idempotent: it
/// succeeds when what it takes away is gone already, so it can be retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Unmounts everything under a directory, then removes the tree.
    RemoveTree(PathBuf),
    /// Removes a directory tree that holds no mounts.
    RemoveDir(PathBuf),
    /// Removes a file.
    RemoveFile(PathBuf),
    /// Removes directories that are empty, in order (deepest first).
    RemoveEmptyDirs(Vec<PathBuf>),
    /// Drops a container's hold on its image.
    ReleaseImage(String),
    /// Unmounts a mount point.
    Unmount(PathBuf),
    /// Kills a shim whose create was abandoned and deletes its runc container.
    StopShim {
        /// The container's id.
        id: String,
        /// Its bundle, which names the shim.
        bundle: PathBuf,
        /// The runtime handler that created it.
        #[serde(default = "crate::host::handlers::legacy_handler")]
        handler: String,
    },
    /// Unpins a pod namespace.
    Unpin(PathBuf),
    /// Stops the holder of a pod's PID namespace, by pid (it is checked to
    /// be that holder still, so a recycled pid is left alone).
    StopPidHolder(i32),
    /// Detaches a pod's network (CNI DEL).
    DetachNetwork(String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::RemoveTree(p) => write!(f, "remove {} and the mounts under it", p.display()),
            Step::RemoveDir(p) => write!(f, "remove {}", p.display()),
            Step::RemoveFile(p) => write!(f, "remove the file {}", p.display()),
            Step::RemoveEmptyDirs(dirs) => write!(
                f,
                "remove the directories {} if empty",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Step::ReleaseImage(id) => write!(f, "release the image held for {id}"),
            Step::Unmount(p) => write!(f, "unmount {}", p.display()),
            Step::StopShim { id, .. } => {
                write!(f, "stop the shim and delete the runc container {id}")
            }
            Step::Unpin(p) => write!(f, "unpin the namespace {}", p.display()),
            Step::StopPidHolder(pid) => write!(f, "stop the PID namespace holder {pid}"),
            Step::DetachNetwork(id) => write!(f, "detach the network of pod sandbox {id}"),
        }
    }
}

/// Undo steps of a create in progress, newest last.
#[derive(Debug, Default)]
#[must_use = "a create's undo steps must be run or disarmed"]
pub struct Cleanup {
    steps: Vec<Step>,
}

impl Cleanup {
    /// Registers how to undo the step just taken (or about to be taken: a
    /// step whose failure can leave something half-made registers first).
    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// The create succeeded: forget the undo steps.
    pub fn disarm(mut self) {
        self.steps.clear();
    }

    /// The steps, in the order they are to be run (newest first).
    pub fn into_steps(mut self) -> Vec<Step> {
        self.steps.reverse();
        std::mem::take(&mut self.steps)
    }
}

/// Runs `steps` in order with `run`, and returns the ones that failed (in
/// order), each failure logged, so they can be recorded and retried.
pub fn settle(steps: &[Step], mut run: impl FnMut(&Step) -> anyhow::Result<()>) -> Vec<Step> {
    let mut owed = Vec::new();
    for step in steps {
        if let Err(e) = run(step) {
            tracing::warn!(step = %step, error = %format!("{e:#}"), "undo step failed; it is retried later");
            owed.push(step.clone());
        }
    }
    owed
}

/// The steps as one line, for messages.
pub fn describe(steps: &[Step]) -> String {
    steps
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_newest_first_and_keeps_failures() {
        let mut c = Cleanup::default();
        for i in 0..3 {
            c.push(Step::ReleaseImage(i.to_string()));
        }
        let steps = c.into_steps();
        let mut ran = Vec::new();
        let owed = settle(&steps, |s| {
            ran.push(s.clone());
            match s {
                Step::ReleaseImage(i) if i == "1" => anyhow::bail!("busy"),
                _ => Ok(()),
            }
        });
        assert_eq!(
            ran,
            ["2", "1", "0"]
                .map(|i| Step::ReleaseImage(i.into()))
                .to_vec()
        );
        assert_eq!(owed, vec![Step::ReleaseImage("1".into())]);
    }

    #[test]
    fn steps_round_trip_as_records() {
        let steps = vec![
            Step::StopShim {
                id: "c1".into(),
                bundle: "/run/crust/containers/c1".into(),
                handler: "youki".into(),
            },
            Step::RemoveEmptyDirs(vec!["/var/log/pods/p/c".into()]),
            Step::DetachNetwork("s1".into()),
        ];
        let json = serde_json::to_string(&steps).unwrap();
        let back: Vec<Step> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, steps);
    }
}
