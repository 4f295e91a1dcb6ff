//! Errors of a benchmark run.

use std::time::Duration;

/// Why a benchmark run failed. Every variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options cannot be run.
    #[error("invalid options: {0}")]
    Options(String),
    /// A file, directory, process or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Connecting a gRPC channel to the controller failed.
    #[error("connecting to the controller at {addr}: {source}")]
    Connect {
        /// The controller's address.
        addr: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// A gRPC call failed.
    #[error("{what}: {status}")]
    Rpc {
        /// The call.
        what: String,
        /// The status the controller returned (boxed: it is large).
        status: Box<tonic::Status>,
    },
    /// A child process (controller or etcd) ended or never became ready.
    #[error("{name}: {reason}\n--- last lines of {log} ---\n{tail}")]
    Child {
        /// `cladnet-controller` or `etcd`.
        name: String,
        /// What went wrong.
        reason: String,
        /// The child's log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
    /// A simulated agent failed.
    #[error("agent {agent}: {message}")]
    Agent {
        /// The agent's index.
        agent: usize,
        /// What failed.
        message: String,
    },
    /// Every agent task ended (none is left to observe).
    #[error("every simulated agent ended unexpectedly")]
    AgentsGone,
    /// The end-of-run table check could not be made (the store could not be read).
    #[error("checking the agents' tables against the store: {0}")]
    Check(String),
    /// Some agent's final peer table differs from the store.
    #[error("the agents' peer tables differ from the store: {0}")]
    TablesDiffer(String),
    /// A run failed; the table check says which agents lack what.
    #[error("{source}\ntable check: {tables}")]
    WithTables {
        /// Why the run failed.
        source: Box<Self>,
        /// What the table check found (or why it could not be made).
        tables: String,
    },
    /// A phase did not finish in time.
    #[error("{phase} did not finish within {timeout:?}: {progress}")]
    Timeout {
        /// The phase.
        phase: &'static str,
        /// The limit.
        timeout: Duration,
        /// How far it got.
        progress: String,
    },
}

impl BenchError {
    /// An [`BenchError::Io`] error for `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// An [`BenchError::Rpc`] error for `what`.
    pub fn rpc(what: impl Into<String>, status: tonic::Status) -> Self {
        Self::Rpc {
            what: what.into(),
            status: Box::new(status),
        }
    }
}

/// Result of the benchmark library.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
