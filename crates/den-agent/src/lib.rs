//! den's coding agent.
//!
//! A session works in a [`workspace::Workspace`], a git repository den owns
//! ([`git::Git`], hardened against what the model writes), with the native
//! [`tools::Tools`]: files and search confined to the workspace, edits that
//! must match exactly once, read-only git, and `run`, which executes only in
//! the bubblewrap [`sandbox::Sandbox`]. [`run::Run`] is the loop: the model
//! calls tools until it calls `finish`, and den commits its work on the
//! session's branch.

pub mod controls;
pub mod discord;
pub mod escalation;
pub mod git;
pub mod mcp;
pub mod output;
pub mod records;
pub mod run;
pub mod sandbox;
pub mod sink;
pub mod size;
pub mod tools;
pub mod workspace;

/// Why a tool did not do what it was asked; the model reads the message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// Not allowed: outside the workspace, `.git`, commands disabled.
    #[error("refused: {0}")]
    Refused(String),
    /// The input is wrong; the model can fix it.
    #[error("{0}")]
    BadInput(String),
    /// It was tried and failed.
    #[error("{0}")]
    Failed(String),
}

impl ToolError {
    /// Its kind, as a word for logs and metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Refused(_) => "refused",
            Self::BadInput(_) => "bad_input",
            Self::Failed(_) => "failed",
        }
    }
}
