//! The one error type of `crust-cni`.

/// What went wrong with pod networking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// There is no usable network configuration (or a plugin says it is not
    /// ready): pods that need a network cannot be created.
    #[error("{0}")]
    NotReady(String),
    /// A plugin refused, with the CNI error it printed.
    #[error("CNI plugin {plugin} failed {command} (code {code}): {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        /// The plugin's `type`.
        plugin: String,
        /// ADD, DEL, CHECK or STATUS.
        command: String,
        /// The CNI error code.
        code: u32,
        /// The plugin's message.
        msg: String,
        /// The plugin's details.
        details: String,
    },
    /// Anything else: the chain of causes says what.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Result with the CNI [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
