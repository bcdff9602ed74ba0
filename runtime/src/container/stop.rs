//! StopContainer: the stop signal, a grace period, then SIGKILL, with a later
//! stop taking over an earlier one.
//!
//! kubelet force-deletes a pod by stopping its containers again with a
//! shorter grace period while the first stop (whose client may have given
//! up) still waits. So the stop in progress keeps the earliest deadline any
//! caller asked for, and every later caller only moves that deadline
//! earlier and waits for the exit: a `StopContainer(0)` kills at once
//! instead of queueing behind a long grace period.

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Container, ContainerState};
use crate::runtime::{Entry, Runtime, if_exists};
use crate::sys::notify;
use crate::{Error, Result, clock};

/// How long to wait for a killed container to be reaped before giving up.
const KILL_GRACE: Duration = Duration::from_secs(30);

/// How often an async caller that moved another stop's deadline looks for
/// the exit.
const POLL: Duration = Duration::from_millis(50);

/// The right to perform a container's stop; giving it up (however the
/// stop ends, or if it never starts) clears the deadline, so a later
/// caller performs the next one.
struct StopClaim<E: Deref<Target = Entry<Container>>>(E);

impl<E: Deref<Target = Entry<Container>>> Drop for StopClaim<E> {
    fn drop(&mut self) {
        *self.0.stop_by() = None;
    }
}

/// Moves the container's stop deadline to `deadline` if that is sooner.
/// Returns true when no stop was under way: the caller performs this one.
fn claim_stop(entry: &Entry<Container>, deadline: Instant) -> bool {
    let mut stop_by = entry.stop_by();
    let first = stop_by.is_none();
    *stop_by = Some(stop_by.map_or(deadline, |d| d.min(deadline)));
    first
}

/// How long a caller that moved another stop's deadline waits for the exit.
fn wait_limit(deadline: Instant) -> Instant {
    deadline.checked_add(KILL_GRACE).unwrap_or(deadline)
}

/// Where a caller that moved another stop's deadline stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Takeover {
    /// The container exited: done.
    Exited,
    /// The other stop ended without the exit (it failed, or its client left
    /// before it began): perform one, with this caller's own deadline.
    Perform,
    /// The exit did not come within the wait limit.
    TimedOut,
    /// Still waiting.
    Pending,
}

/// Looks once at the stop this caller is waiting on. The record is only
/// tried, never waited for: a refresh may hold it across a disk write, and
/// async callers must not block their thread.
fn takeover(entry: &Entry<Container>, limit: Instant) -> Takeover {
    if entry
        .try_rec()
        .is_some_and(|c| c.state == ContainerState::Exited)
    {
        return Takeover::Exited;
    }
    if entry.stop_by().is_none() {
        return Takeover::Perform;
    }
    if Instant::now() >= limit {
        return Takeover::TimedOut;
    }
    Takeover::Pending
}

fn not_exited_in_time(entry: &Entry<Container>) -> Error {
    Error::DeadlineExceeded(format!(
        "container {} did not exit within {}s of its stop deadline",
        entry.rec().id,
        KILL_GRACE.as_secs()
    ))
}

impl Runtime {
    /// StopContainer: stop signal, up to `timeout` seconds, then SIGKILL. Stopping an
    /// exited or unknown container succeeds.
    pub async fn stop_container(self: &Arc<Self>, id: &str, timeout: i64) -> Result<()> {
        let Some(entry) = if_exists(self.container_entry(id))? else {
            return Ok(());
        };
        self.stop_entry(&entry, timeout).await
    }

    /// Stops the container within `timeout` seconds from async code. Every
    /// wait (for the lifecycle lock, for another stop) is async, so calls
    /// piling up on one container hold no threads.
    pub(crate) async fn stop_entry(
        self: &Arc<Self>,
        entry: &Arc<Entry<Container>>,
        timeout: i64,
    ) -> Result<()> {
        let deadline = clock::instant_after(clock::request_secs(timeout));
        loop {
            if claim_stop(entry, deadline) {
                // Owned by the work from here: dropped with it if the client
                // leaves before the lock is had, after the stop otherwise.
                let claim = StopClaim(entry.clone());
                return self
                    .locked(entry, move |rt| {
                        rt.stop_locked(&claim.0)?;
                        rt.settle_exited(&claim.0);
                        Ok(())
                    })
                    .await;
            }
            let limit = wait_limit(deadline);
            loop {
                match takeover(entry, limit) {
                    Takeover::Exited => return Ok(()),
                    Takeover::Perform => break,
                    Takeover::TimedOut => return Err(not_exited_in_time(entry)),
                    Takeover::Pending => tokio::time::sleep(POLL).await,
                }
            }
        }
    }

    /// Stops the container within `timeout` seconds (0 or less: kill now)
    /// from a blocking thread (StopPodSandbox's and RemovePodSandbox's),
    /// taking over the deadline of a stop already under way when this one
    /// is sooner.
    pub(crate) fn stop_container_entry(
        &self,
        entry: &Entry<Container>,
        timeout: i64,
    ) -> Result<()> {
        let deadline = clock::instant_after(clock::request_secs(timeout));
        loop {
            if claim_stop(entry, deadline) {
                let _claim = StopClaim(entry);
                let _guard = entry.lock_lifecycle();
                self.stop_locked(entry)?;
                self.settle_exited(entry);
                return Ok(());
            }
            let limit = wait_limit(deadline);
            let bundle = entry.rec().bundle.clone();
            notify::wait_in_dir(&bundle, limit, || {
                takeover(entry, limit) != Takeover::Pending
            });
            match takeover(entry, limit) {
                Takeover::Exited => return Ok(()),
                Takeover::TimedOut => return Err(not_exited_in_time(entry)),
                Takeover::Perform | Takeover::Pending => {}
            }
        }
    }

    /// The stop itself, under the container's lifecycle lock: the stop
    /// signal while the (possibly moving) deadline is ahead, then SIGKILL.
    fn stop_locked(&self, entry: &Entry<Container>) -> Result<()> {
        self.settle_container(entry)?;
        self.refresh_container(entry);
        let c = entry.snapshot();
        if c.leftover {
            return self.stop_leftover(entry);
        }
        let deadline_ahead = || entry.stop_by().is_some_and(|d| Instant::now() < d);
        match c.state {
            ContainerState::Exited => return Ok(()),
            ContainerState::Running if deadline_ahead() => {
                tracing::info!(id = %c.id, signal = c.stop_signal, "stopping container");
                self.signal(&c, c.stop_signal)?;
                let bundle = c.bundle.clone();
                let far = clock::instant_after(Duration::MAX);
                notify::wait_in_dir(&bundle, far, || {
                    self.refresh_container(entry) == ContainerState::Exited || !deadline_ahead()
                });
                if entry.rec().state == ContainerState::Exited {
                    return Ok(());
                }
            }
            _ => {}
        }
        tracing::info!(id = %c.id, "killing container");
        self.signal(&c, libc::SIGKILL)?;
        if self.wait_exit(entry, Instant::now() + KILL_GRACE) {
            return Ok(());
        }
        Err(Error::DeadlineExceeded(format!(
            "container {} did not exit within {}s of SIGKILL",
            c.id,
            KILL_GRACE.as_secs()
        )))
    }

    /// Signals the container's init through its shim, which holds a pidfd
    /// of it (no `runc kill` to fork); through the OCI runtime when the
    /// shim cannot (one from before shims took signals, or one gone).
    fn signal(&self, c: &Container, signal: i32) -> Result<()> {
        let request = crust_shim_protocol::control::Request::Signal(signal);
        match self.host.shim.control(&c.bundle, request) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::debug!(id = %c.id, error = format!("{e:#}"), "signalling through the OCI runtime");
            }
        }
        self.oci_runtime(c)?
            .kill(&c.id, signal)
            .map(|_| ())
            .map_err(|e| Error::Internal(e.context(format!("signalling container {}", c.id))))
    }

    /// Waits until the container is recorded as exited, or the deadline passes.
    fn wait_exit(&self, entry: &Entry<Container>, deadline: Instant) -> bool {
        let bundle = entry.rec().bundle.clone();
        notify::wait_in_dir(&bundle, deadline, || {
            self.refresh_container(entry) == ContainerState::Exited
        })
    }
}
