use std::fmt;

/// A value that must never reach a log line, an error message or a metric.
///
/// `Debug` and `Display` print `[redacted]`; the only way to the value is
/// [`Secret::expose`], which makes every use easy to find in review.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`, trimming the trailing newline that secret files usually end with.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        let mut value = value.into();
        let trimmed = value.trim_end_matches(['\r', '\n']).len();
        value.truncate(trimmed);
        Self(value)
    }

    /// The secret value itself. Never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret::new("hunter2\n");
        assert_eq!(format!("{s} {s:?} {:?}", Some(&s)), "[redacted] [redacted] Some([redacted])");
        assert_eq!(s.expose(), "hunter2");
    }
}
