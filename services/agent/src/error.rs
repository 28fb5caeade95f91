use std::path::PathBuf;

use ferry_release::PackError;
use thiserror::Error;

/// Why a publish or deploy failed. Each message names the input or the step
/// at fault; none of them leaves anything half-published behind.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("invalid registry URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot read CA certificate {path}: {source}")]
    CaCert { path: PathBuf, source: std::io::Error },
    #[error("the agent token contains characters not allowed in a header")]
    Token,
    #[error("cannot reach the registry at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error(
        "cannot reach the registry through the proxy {proxy} (HTTPS_PROXY/HTTP_PROXY; NO_PROXY exempts hosts): {reason}"
    )]
    Proxy { proxy: String, reason: String, permanent: bool },
    #[error("{step}: {message}")]
    Rpc { step: &'static str, code: tonic::Code, message: String },
    #[error("{path} changed while publishing; run the publish again to pack it anew")]
    Changed { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("registry answered with an invalid {0}")]
    Protocol(&'static str),
    /// A variants file, or what a run asked of it, is wrong (the message
    /// names the file and line, or the flag).
    #[error("{0}")]
    Variants(String),
    /// A transport bundle that is damaged, truncated or not a bundle.
    #[error(transparent)]
    Bundle(#[from] ferry_bundle::BundleError),
    /// The registry lacks chunks that a bundle left out.
    #[error(
        "the registry lacks {missing} chunk(s) this bundle does not hold{}; make a full bundle, or one since a release the registry has",
        base.as_ref().map(|b| format!(" (it left out those of manifest {b})")).unwrap_or_default()
    )]
    Incomplete { missing: usize, base: Option<String> },
    /// The agent's state directory cannot be used (the message names it).
    #[error("{0}")]
    State(String),
    /// Publishing one tenant of a variants file failed.
    #[error("tenant {tenant}: {source}")]
    Tenant { tenant: String, source: Box<AgentError> },
}

impl AgentError {
    pub(crate) fn rpc(step: &'static str, status: tonic::Status) -> Self {
        let code = status.code();
        let message = match code {
            tonic::Code::Unauthenticated => format!("registry refused the token: {}", status.message()),
            tonic::Code::PermissionDenied => format!("registry refused: {}", status.message()),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled if is_transport(&status) => {
                format!("connection to the registry failed ({}); run again to resume", chain(&status))
            }
            tonic::Code::Unavailable => format!("registry unavailable: {}; run again to resume", status.message()),
            _ => status.message().to_owned(),
        };
        AgentError::Rpc { step, code, message }
    }

    /// Whether trying again later may succeed (network or a dependency of
    /// the registry being down), as opposed to an answer that will not change.
    pub fn is_retryable(&self) -> bool {
        match self {
            AgentError::Connect { .. } => true,
            // A wrong password or proxy URL does not fix itself.
            AgentError::Proxy { permanent, .. } => !permanent,
            AgentError::Rpc { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
            ),
            AgentError::Tenant { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

fn is_transport(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// An error and its sources as one line.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}
