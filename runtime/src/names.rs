//! Name reservations for sandboxes and containers.
//!
//! A name maps to at most one object. kubelet retries a create that outran its
//! deadline with the same name; such a retry must get the first attempt's object
//! instead of a second one or a "name is reserved" error. So a reservation is either
//! in flight (the retry waits for it) or owned by an object, and an owned name
//! remembers whether any caller has received the id yet ("unclaimed" results are
//! handed to the next caller with the same name).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Time an answer needs to reach the caller: a create finishing closer than this
/// to the caller's deadline is treated as not received.
const DELIVERY_MARGIN: Duration = Duration::from_millis(10);

use crate::{Error, Result};

enum Slot {
    InFlight(watch::Receiver<Option<Option<String>>>),
    Owned { id: String, unclaimed: bool },
}

/// The name table of one kind of object.
#[derive(Clone, Default)]
pub struct Names {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

/// The outcome of [`Names::reserve`].
pub enum Reservation {
    /// The name is ours: create the object, then complete the ticket.
    Fresh(Ticket),
    /// An earlier attempt with this name made this object and nobody received it yet.
    Existing(String),
}

/// The right to create the object for a name; dropping it uncompleted frees the name.
pub struct Ticket {
    names: Names,
    name: String,
    tx: Option<watch::Sender<Option<Option<String>>>>,
}

impl Names {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `name` for a new object of kind `what`, or hands over the result of an
    /// earlier unclaimed or still running attempt with the same name.
    pub async fn reserve(&self, name: &str, what: &str) -> Result<Reservation> {
        loop {
            let mut rx = {
                let mut slots = self.lock();
                match slots.get_mut(name) {
                    None => {
                        let (tx, rx) = watch::channel(None);
                        slots.insert(name.to_string(), Slot::InFlight(rx));
                        return Ok(Reservation::Fresh(Ticket {
                            names: self.clone(),
                            name: name.to_string(),
                            tx: Some(tx),
                        }));
                    }
                    Some(Slot::Owned { id, unclaimed }) => {
                        if *unclaimed {
                            *unclaimed = false;
                            return Ok(Reservation::Existing(id.clone()));
                        }
                        return Err(Error::AlreadyExists(format!(
                            "{what} name {name} is already in use by {what} {id}; remove it first"
                        )));
                    }
                    Some(Slot::InFlight(rx)) => rx.clone(),
                }
            };
            // Another create with this name is running: wait for its outcome.
            let outcome = match rx.wait_for(|v| v.is_some()).await {
                Ok(v) => v.clone().flatten(),
                Err(_) => None,
            };
            if let Some(id) = outcome {
                self.claim(name, &id);
                return Ok(Reservation::Existing(id));
            }
            // It failed and freed the name: try to reserve it ourselves.
        }
    }

    /// Marks the object's id as received by the caller of a create, unless the
    /// caller's deadline has (nearly) passed: then the answer is probably lost
    /// and the id stays for the caller's retry.
    pub fn claim_before(&self, name: &str, id: &str, deadline: Option<Instant>) {
        let in_time = deadline.is_none_or(|d| Instant::now() + DELIVERY_MARGIN < d);
        if in_time {
            self.claim(name, id);
        } else {
            tracing::info!(%name, %id, "created after the caller's deadline; kept for its retry");
        }
    }

    /// Marks the object's id as received by a caller.
    pub fn claim(&self, name: &str, id: &str) {
        if let Some(Slot::Owned {
            id: owner,
            unclaimed,
        }) = self.lock().get_mut(name)
            && owner == id
        {
            *unclaimed = false;
        }
    }

    /// Records an existing object's name (restart recovery).
    pub fn insert_owned(&self, name: &str, id: &str) {
        self.lock().insert(
            name.to_string(),
            Slot::Owned {
                id: id.to_string(),
                unclaimed: false,
            },
        );
    }

    /// Frees `name` if it belongs to object `id`.
    pub fn release(&self, name: &str, id: &str) {
        let mut slots = self.lock();
        if matches!(slots.get(name), Some(Slot::Owned { id: owner, .. }) if owner == id) {
            slots.remove(name);
        }
    }
}

impl Ticket {
    /// The create made object `id`: the name is now owned by it, unclaimed until the
    /// caller receives it.
    pub fn complete(mut self, id: &str) {
        self.names.lock().insert(
            self.name.clone(),
            Slot::Owned {
                id: id.to_string(),
                unclaimed: true,
            },
        );
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(Some(id.to_string())));
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.names.lock().remove(&self.name);
            let _ = tx.send(Some(None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reserve_complete_claim() {
        let names = Names::default();
        let Reservation::Fresh(t) = names.reserve("a", "sandbox").await.unwrap() else {
            panic!("expected a fresh reservation")
        };
        t.complete("id1");
        // Nobody claimed id1 yet: a retry with the same name gets it.
        match names.reserve("a", "sandbox").await.unwrap() {
            Reservation::Existing(id) => assert_eq!(id, "id1"),
            Reservation::Fresh(_) => panic!("expected the existing object"),
        }
        // Now it is claimed: a third create is refused.
        assert!(matches!(
            names.reserve("a", "sandbox").await,
            Err(Error::AlreadyExists(_))
        ));
        names.release("a", "id1");
        assert!(matches!(
            names.reserve("a", "sandbox").await.unwrap(),
            Reservation::Fresh(_)
        ));
    }

    #[tokio::test]
    async fn waiter_gets_in_flight_result_or_retries() {
        let names = Names::default();
        let Reservation::Fresh(t) = names.reserve("b", "container").await.unwrap() else {
            panic!("expected a fresh reservation")
        };
        let n2 = names.clone();
        let waiter = tokio::spawn(async move {
            match n2.reserve("b", "container").await.unwrap() {
                Reservation::Existing(id) => id,
                Reservation::Fresh(_) => "fresh".to_string(),
            }
        });
        tokio::task::yield_now().await;
        t.complete("id2");
        assert_eq!(waiter.await.unwrap(), "id2");

        let Reservation::Fresh(t) = names.reserve("c", "container").await.unwrap() else {
            panic!("expected a fresh reservation")
        };
        let n3 = names.clone();
        let waiter = tokio::spawn(async move {
            matches!(
                n3.reserve("c", "container").await.unwrap(),
                Reservation::Fresh(_)
            )
        });
        tokio::task::yield_now().await;
        drop(t);
        assert!(waiter.await.unwrap());
    }
}
