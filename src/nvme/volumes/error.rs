//! What the volume manager's calls fail with.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error(transparent)]
    Invalid(#[from] OptionsError),
    #[error("not fenced: {0}")]
    NotFenced(#[from] FenceError),
    /// The volume or its controllers are in use by another operation or another tool.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    NotFound(String),
    /// In-band authentication failed: no secret where the target requires one, or a secret
    /// (the host's or the controller's) rejected.
    #[error("{0}")]
    Auth(String),
    /// The kernel refused the connect or delete.
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Host(#[from] HostError),
}

impl NvmeError {
    /// Label for the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            NvmeError::Invalid(_) => "invalid_argument",
            NvmeError::NotFenced(_) => "not_fenced",
            NvmeError::Busy(_) => "busy",
            NvmeError::Timeout(_) => "timeout",
            NvmeError::NotFound(_) => "not_found",
            NvmeError::Auth(_) => "authentication",
            NvmeError::Kernel { .. } => "kernel",
            NvmeError::Host(_) => "state_io",
        }
    }
}
