use std::error::Error as StdError;
use std::fmt;

/// What went wrong in a storage call, for callers that react differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// A conditional write's condition did not hold.
    ConditionFailed,
    /// The named queue does not exist.
    QueueNotFound,
    /// A receipt is unknown, or stale because the message was received again.
    ReceiptInvalid,
    /// An argument is outside what the API allows (batch size, delay, body size...).
    InvalidArgument,
    /// The store has been closed.
    Closed,
    /// The backend failed (I/O, corruption, an AWS error).
    Backend,
}

/// An error from a [`Table`](crate::Table) or [`Queue`](crate::Queue).
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl StoreError {
    /// A new error of `kind` described by `message`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// A backend failure caused by `source`.
    pub fn backend(message: impl Into<String>, source: impl StdError + Send + Sync + 'static) -> Self {
        Self { kind: StoreErrorKind::Backend, message: message.into(), source: Some(Box::new(source)) }
    }

    /// An invalid argument.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::InvalidArgument, message)
    }

    /// What kind of error this is.
    #[must_use]
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Consumes the error, returning its kind and source.
    #[must_use]
    pub fn into_parts(self) -> (StoreErrorKind, Option<Box<dyn StdError + Send + Sync>>) {
        (self.kind, self.source)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::backend("sqlite", e)
    }
}

/// Result of a storage call.
pub type StoreResult<T> = Result<T, StoreError>;
