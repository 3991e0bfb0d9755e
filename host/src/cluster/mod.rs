//! The controller daemon and the `amf cluster` supervisor: one process per controller, each
//! serving NBD and an admin HTTP endpoint, started and stopped together.

pub mod admin;
pub mod admin_tls;
pub mod config;
pub mod controller;
pub mod dirlock;
pub mod launch;
pub mod lease;
pub mod membership;
pub mod serve;
pub mod service;
pub mod supervisor;

use std::path::PathBuf;

/// Errors of the controller and supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// TLS certificates or keys could not be loaded or generated.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The group could not be created or assembled.
    #[error(transparent)]
    Raid(#[from] crate::raid::RaidError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process serves the group.
    #[error("the group in {dir} is in use by another controller ({holder})")]
    Locked {
        /// Group directory.
        dir: PathBuf,
        /// Who holds it, from its status file.
        holder: String,
    },
    /// The lock or status file could not be used.
    #[error("{path}: {source}")]
    File {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// A controller process could not be started.
    #[error("cannot start controller {index}: {source}")]
    Spawn {
        /// Controller index.
        index: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A controller process ended on its own.
    #[error("controller {index} exited unexpectedly ({status})")]
    ControllerDied {
        /// Controller index.
        index: usize,
        /// Exit status.
        status: String,
    },
    /// A configuration that cannot work.
    #[error("config: {0}")]
    Config(String),
    /// The AMF core could not start.
    #[error("controller core: {0}")]
    Core(String),
    /// The request cannot be served by this build.
    #[error("{0}")]
    Unsupported(String),
    /// Creating a group needs its shape.
    #[error("{0} holds no members; creating a group needs --level, --members and --member-size")]
    MissingShape(PathBuf),
    /// The admin endpoint answered with an error or could not be reached.
    #[error("admin endpoint {url}: {detail}")]
    Admin {
        /// Endpoint.
        url: String,
        /// What went wrong.
        detail: String,
    },
}
