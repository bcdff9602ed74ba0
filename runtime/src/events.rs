//! Container lifecycle events for kubelet's evented PLEG (GetContainerEvents):
//! created, started, stopped and deleted, each with the pod's status and its
//! containers' as they were at that moment.
//!
//! Every subscriber has a bounded queue. Publishing never waits: a
//! subscriber whose queue is full is dropped (its stream ends with an error
//! and kubelet subscribes again and relists), so a client that never reads
//! cannot stall a lifecycle call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::container::Container;
use crate::runtime::Runtime;
use crate::sandbox::Sandbox;

/// How many events may wait for one subscriber before it is dropped.
pub const QUEUE: usize = 1024;

/// What happened to the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// CreateContainer made it.
    Created,
    /// It started (a pod sandbox: it became ready).
    Started,
    /// Its process exited (a pod sandbox: it was stopped).
    Stopped,
    /// It was removed.
    Deleted,
}

/// One event. A pod sandbox's own events carry its id as `container_id`, as
/// containerd sends them.
#[derive(Clone, Debug)]
pub struct ContainerEvent {
    /// The container (or pod sandbox) the event is about.
    pub container_id: String,
    /// What happened.
    pub kind: EventKind,
    /// When, in ns since the epoch.
    pub created_at: i64,
    /// The pod sandbox at that moment.
    pub sandbox: Sandbox,
    /// The pod's containers at that moment.
    pub containers: Vec<Container>,
}

struct Subscriber {
    queue: mpsc::Sender<Arc<ContainerEvent>>,
    lagged: Arc<AtomicBool>,
}

/// The subscribers of the event stream.
#[derive(Default)]
pub struct Events {
    subscribers: Mutex<Vec<Subscriber>>,
}

/// One subscriber's end of the stream.
pub struct Subscription {
    queue: mpsc::Receiver<Arc<ContainerEvent>>,
    lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// The next event; `None` once the subscriber was dropped.
    pub async fn next(&mut self) -> Option<Arc<ContainerEvent>> {
        self.queue.recv().await
    }

    /// Whether the stream ended because the subscriber fell behind.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Relaxed)
    }
}

impl Events {
    /// A new subscriber, receiving every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        self.lock().push(Subscriber {
            queue: tx,
            lagged: lagged.clone(),
        });
        Subscription { queue: rx, lagged }
    }

    /// Whether anyone listens (events are not assembled for nobody).
    pub fn has_subscribers(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Hands `event` to every subscriber without waiting; drops those whose
    /// queue is full or who went away.
    pub fn publish(&self, event: ContainerEvent) {
        let event = Arc::new(event);
        self.lock()
            .retain(|s| match s.queue.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.lagged.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        queue = QUEUE,
                        "dropping a container event subscriber that fell behind"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Runtime {
    /// GetContainerEvents: every event from now on.
    pub fn subscribe_events(&self) -> Subscription {
        self.events.subscribe()
    }

    /// Publishes `kind` for container `container_id` of pod `sandbox_id`,
    /// with the pod as it is now. Callers hold no record lock: the pod's
    /// containers are read here.
    pub(crate) fn publish_event(&self, container_id: &str, sandbox_id: &str, kind: EventKind) {
        if !self.events.has_subscribers() {
            return;
        }
        let sandbox = self
            .sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sandbox_id)
            .map(|e| e.snapshot());
        match sandbox {
            Some(sb) => self.publish_with(container_id, &sb, kind),
            // kubelet reads the pod from every event; without one there is
            // nothing it could do with it.
            None => {
                tracing::debug!(%container_id, %sandbox_id, "no event for a container whose pod is gone")
            }
        }
    }

    /// Publishes `kind` for pod sandbox `sb` itself (its id as the container id).
    pub(crate) fn publish_sandbox_event(&self, sb: &Sandbox, kind: EventKind) {
        if self.events.has_subscribers() {
            self.publish_with(&sb.id, sb, kind);
        }
    }

    fn publish_with(&self, container_id: &str, sb: &Sandbox, kind: EventKind) {
        let mut containers: Vec<Container> = self
            .containers_of(&sb.id)
            .iter()
            .map(|e| e.snapshot())
            .collect();
        containers.sort_by_key(|c| c.created_at);
        self.events.publish(ContainerEvent {
            container_id: container_id.to_string(),
            kind,
            created_at: crate::clock::now_ns(),
            sandbox: sb.clone(),
            containers,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> ContainerEvent {
        ContainerEvent {
            container_id: format!("c{n}"),
            kind: EventKind::Created,
            created_at: 0,
            sandbox: Sandbox {
                id: "s".into(),
                config: Default::default(),
                created_at: 0,
                handler: "runc".into(),
                state: crate::sandbox::SandboxState::Ready,
                dir: "/s".into(),
                netns: None,
                ipcns: None,
                utsns: None,
                userns: None,
                shm: "/s/shm".into(),
                hostname: String::new(),
                ips: Vec::new(),
                shm_mounted: false,
                infra_pid: None,
                owed: Vec::new(),
                leftover: false,
            },
            containers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_dropped_and_others_keep_receiving() {
        let events = Events::default();
        assert!(!events.has_subscribers());
        let mut slow = events.subscribe();
        let mut fast = events.subscribe();
        for n in 0..=QUEUE {
            events.publish(event(n));
            let got = fast.next().await.expect("the reading subscriber stays");
            assert_eq!(got.container_id, format!("c{n}"));
        }
        // The slow one got the first QUEUE events, then its stream ends.
        for _ in 0..QUEUE {
            assert!(slow.next().await.is_some());
        }
        assert!(slow.next().await.is_none());
        assert!(slow.lagged());
        assert!(!fast.lagged());

        drop(fast);
        events.publish(event(0));
        assert!(!events.has_subscribers(), "gone subscribers are forgotten");
    }
}
