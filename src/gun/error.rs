//! What a relay call can end in besides a record: one variant per thing a caller does
//! differently (report a wrong URL, give up, retry later, fail fast).

/// Why a GUN call did not produce a record (or, for a put, a stored write).
///
/// `Clone` because one upstream answer is shared by every caller that waited on it
/// (single-flight), so sources are kept as text rather than as foreign error values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GunError {
    /// The settings cannot make a working client (no `GUN_PEERS`, a URL that does not parse,
    /// a scheme this build cannot speak).
    #[error("{option}: {message}")]
    Config {
        /// The flag / environment variable to fix, as clap names it.
        option: String,
        /// What is wrong with it.
        message: String,
    },

    /// The soul is empty: no relay request can name it.
    #[error("soul parameter required")]
    InvalidSoul,

    /// The relay URL does not lead to a relay's API: a 404 whose body is not the relay's
    /// `{"error":"Not found"}` (typically `Endpoint not found`), or a redirect. Never cached
    /// as a missing record and never retried: it cannot succeed until someone fixes the URL.
    #[error("GUN relay misconfigured: {url} answered HTTP {status}: {body}")]
    Misconfigured {
        /// The URL that was requested.
        url: String,
        /// The status it answered.
        status: u16,
        /// The start of its body, for the log.
        body: String,
    },

    /// The relay refused the request (a 4xx other than 404). Never retried: the same request
    /// would be refused again.
    #[error("GUN relay refused the request with HTTP {status}: {message}")]
    BadRequest {
        /// The status the relay answered.
        status: u16,
        /// The relay's `error` message, or the start of its body.
        message: String,
    },

    /// GUN itself refused a write: the relay answered a put with 500 and its
    /// `{"error": <GUN's ack.err>}` (e.g. `data: null` at the root of a node). Not retried
    /// and not held against the relay's health: the relay is up and gave its verdict.
    #[error("GUN rejected the write: {message}")]
    Rejected {
        /// GUN's error message.
        message: String,
    },

    /// The relay could not be reached or did not answer in time (connection error, timeout,
    /// 5xx), after every attempt the settings allow.
    #[error("GUN relay unavailable after {attempts} attempt(s): {reason}")]
    Unavailable {
        /// The last failure.
        reason: String,
        /// The last HTTP status, when there was one (5xx).
        status: Option<u16>,
        /// Whether the last failure was a timeout (attempt timeout or call deadline).
        timed_out: bool,
        /// Attempts made for this call.
        attempts: u32,
    },

    /// The circuit breaker is open: the relay failed repeatedly, and calls fail fast until
    /// the cool-down lets a probe through. No request was sent.
    #[error("GUN relay circuit open: failing fast until the cool-down ends")]
    CircuitOpen,

    /// The relay answered 200 with a body that is not a relay answer (not JSON, too large).
    #[error("GUN relay answered with an invalid body: {reason}")]
    InvalidResponse {
        /// What is wrong with it.
        reason: String,
    },

    /// The shared upstream call ended without an answer (its task panicked or the runtime is
    /// shutting down), or there is no Tokio runtime to run it on.
    #[error("GUN call ended without an answer: {reason}")]
    Internal {
        /// What happened.
        reason: String,
    },
}

impl GunError {
    /// Whether another attempt may succeed: only "unavailable" outcomes are retried.
    pub fn is_retryable(&self) -> bool {
        matches!(self, GunError::Unavailable { .. })
    }

    /// A short stable name of the kind, for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GunError::Config { .. } => "config",
            GunError::InvalidSoul => "invalid_soul",
            GunError::Misconfigured { .. } => "misconfigured",
            GunError::BadRequest { .. } => "bad_request",
            GunError::Rejected { .. } => "rejected",
            GunError::Unavailable { .. } => "unavailable",
            GunError::CircuitOpen => "circuit_open",
            GunError::InvalidResponse { .. } => "invalid_response",
            GunError::Internal { .. } => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retryable() {
        let unavailable = GunError::Unavailable {
            reason: "x".into(),
            status: Some(503),
            timed_out: false,
            attempts: 1,
        };
        assert!(unavailable.is_retryable());
        assert!(!GunError::CircuitOpen.is_retryable());
        assert!(
            !GunError::BadRequest {
                status: 400,
                message: String::new()
            }
            .is_retryable()
        );
    }
}
