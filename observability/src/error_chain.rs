//! Errors in logs with their whole cause chain: `tracing::warn!(error = %chain(&error), ...)`.
//! Many of our errors already print their source in their own message (`"binding {address}:
//! {source}"`); a cause whose text the message already ends with is not repeated.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its causes, `: `-separated.
pub struct ErrorChain<'a>(&'a (dyn Error + 'static));

/// The error and its causes, for a log field.
pub fn chain<E: Error + 'static>(error: &E) -> ErrorChain<'_> {
    ErrorChain(error)
}

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(next) = cause {
            let text = next.to_string();
            if !written.ends_with(&text) {
                written.push_str(": ");
                written.push_str(&text);
            }
            cause = next.source();
        }
        formatter.write_str(&written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the snapshot")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("opening {path}: {source}")]
    struct Middle {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn every_cause_is_shown_once() {
        let error = Outer(Middle {
            path: "/data/snap".to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
        assert_eq!(
            error.to_string(),
            "reading the snapshot",
            "the cause is not in the message"
        );
        assert_eq!(
            chain(&error).to_string(),
            "reading the snapshot: opening /data/snap: no such file",
            "a cause the message already ends with is not repeated"
        );
    }
}
