//! The one error type of the CLI. Messages name what was wrong and, where it helps, what to
//! do; none carries a token, a key or a token hash.

use std::path::PathBuf;

use cvm_aws::config::ConfigError;
use cvm_core::lifecycle::LifecycleError;
use cvm_core::ports::PortError;
use cvm_core::Serial;

use crate::commands::register_ca::RegisterCaError;
use crate::public_key::KeyError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A combination of arguments clap cannot express, or a value of the wrong shape.
    #[error("{0}")]
    Usage(String),
    #[error("no table: pass --table or set CVM_TABLE_NAME")]
    NoTable,
    #[error("serial {0} is not enrolled")]
    NotEnrolled(Serial),
    #[error("serial {0} is already enrolled; nothing was changed (to give it new credentials: cvm-admin reenroll --serial {0})")]
    AlreadyEnrolled(Serial),
    #[error(
        "could not determine the operator's AWS principal (sts:GetCallerIdentity), which every \
         change records as its actor; nothing was changed. Check the AWS credentials: {0}"
    )]
    Principal(#[source] PortError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Aws(#[from] PortError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    RegisterCa(#[from] RegisterCaError),
    #[error("the system random source failed")]
    Random,
    /// The command ran to its end but did not do all it was asked (the summary says what);
    /// its own exit status.
    #[error("{0}")]
    Incomplete(String),
}

impl AdminError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| AdminError::Io { what, path, source }
    }
}

/// An error with its causes, for the operator (SDK errors keep the service's message there).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
