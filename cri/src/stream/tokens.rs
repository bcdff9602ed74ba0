//! Single-use tokens: Exec, Attach and PortForward store the checked request
//! under a random token and hand out a URL carrying it; the streaming server
//! takes the request out when the client connects. A token works once and only
//! until it expires.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crust_runtime::container::{AttachRequest, ExecRequest};

/// Requests waiting for their client; more are refused until some are used or expire.
const MAX_PENDING: usize = 1000;

/// What a token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// Run a command in a container.
    Exec {
        /// Full container id.
        container_id: String,
        /// The command and its streams.
        req: ExecRequest,
    },
    /// Attach to a container's own stdio.
    Attach {
        /// Full container id.
        container_id: String,
        /// The streams to carry.
        req: AttachRequest,
        /// The client asks for a terminal (and so opens a resize stream).
        tty: bool,
        /// The container's stdin closes when this client's input ends.
        stdin_once: bool,
    },
    /// Forward connections to a pod's ports.
    PortForward {
        /// Full pod sandbox id.
        sandbox_id: String,
        /// The ports the request named (WebSocket sessions forward these
        /// unless the URL names others).
        ports: Vec<u16>,
    },
}

/// The pending requests by token.
pub struct Tokens {
    ttl: Duration,
    pending: Mutex<HashMap<String, (Pending, Instant)>>,
}

impl Tokens {
    /// Tokens that expire `ttl` after they are made.
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            pending: Mutex::default(),
        }
    }

    /// Stores `req` and returns its token; `None` when too many are pending.
    pub fn insert(&self, req: Pending) -> Option<String> {
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, (_, expires)| *expires > now);
        if pending.len() >= MAX_PENDING {
            return None;
        }
        let token = crust_runtime::ids::new_id()[..32].to_string();
        pending.insert(token.clone(), (req, now + self.ttl));
        Some(token)
    }

    /// Takes the request of `token` out, if it exists and has not expired.
    pub fn take(&self, token: &str) -> Option<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (req, expires) = pending.remove(token)?;
        (expires > Instant::now()).then_some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Pending {
        Pending::PortForward {
            sandbox_id: "p".into(),
            ports: vec![80],
        }
    }

    #[test]
    fn a_token_works_once() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let t = tokens.insert(pf()).unwrap();
        assert_eq!(t.len(), 32);
        assert_eq!(tokens.take(&t), Some(pf()));
        assert_eq!(tokens.take(&t), None);
        assert_eq!(tokens.take("unknown"), None);
    }

    #[test]
    fn an_expired_token_is_refused() {
        let tokens = Tokens::new(Duration::from_millis(1));
        let t = tokens.insert(pf()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(tokens.take(&t), None);
    }

    #[test]
    fn pending_requests_are_bounded() {
        let tokens = Tokens::new(Duration::from_secs(60));
        for _ in 0..MAX_PENDING {
            assert!(tokens.insert(pf()).is_some());
        }
        assert!(tokens.insert(pf()).is_none());
    }
}
