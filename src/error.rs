//! Errors that stop the service from starting. Request-time errors never escape a
//! handler: they become responses where they happen.
//!
//! Every variant carries the names of the settings to fix as clap gives them
//! (`crate::settings::option_name`), filled in where the error is made: this module is a
//! leaf and cannot know the groups.

use std::path::PathBuf;

/// Why the service could not start. Each variant names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A media root is missing or unreadable.
    #[error("{option}: media root {path} is not usable: {source}")]
    MediaRoot {
        /// The flag / environment variable that set it.
        option: String,
        /// The path as configured.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The derived-file folder could not be created or listed.
    #[error("{option}: {path} is not usable: {source}")]
    DerivedDir {
        /// The flag / environment variable that set it.
        option: String,
        /// The path as configured.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The listening socket could not be set up.
    #[error("{options}: cannot listen on {addr}: {source}")]
    Bind {
        /// The flags / environment variables that set the address.
        options: String,
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The serving threads of the per-core layout could not be started.
    #[error("{options}: cannot start the serving threads: {source}")]
    Workers {
        /// The flags / environment variables that set the layout and its threads.
        options: String,
        /// What the OS said (a thread or its runtime could not be created).
        source: std::io::Error,
    },
    /// A setting has a value the service cannot work with.
    #[error("{option}: {message}")]
    InvalidSetting {
        /// The flag / environment variable.
        option: String,
        /// What is wrong with it.
        message: String,
    },
}
