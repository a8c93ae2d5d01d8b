//! What can go wrong, said so that the caller can act on it.

use std::time::Duration;

use tonic::Code;

/// An SDK call's failure. Events the ledger refused are not errors: they come back as result codes.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint answered in time, or the cluster had no leader (an election, or fewer than a
    /// majority of replicas up) until the deadline. A write may or may not have been applied: retry
    /// it with the same ids, and the ledger answers `exists` for what was.
    #[error("the cluster did not answer within {deadline:?} after {attempts} attempt(s); {}", describe_attempts(.last_errors))]
    Unavailable {
        /// The deadline the call had.
        deadline: Duration,
        /// Attempts made, over all endpoints.
        attempts: u32,
        /// Each endpoint tried, with the last error it gave.
        last_errors: Vec<(String, String)>,
    },
    /// The request is malformed; the message names the field. Nothing was applied.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The cluster could not tell that the principal sent the request: a certificate of another
    /// principal, or a key that is unknown, retired or revoked, or a signature that does not
    /// verify. Nothing was applied.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The principal's role does not allow the request (an operation, a ledger, an account code
    /// to debit). Nothing was applied.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The request is above one of the cluster's limits (size, events per request).
    #[error("request too large: {0}")]
    TooLarge(String),
    /// A call the SDK refuses before sending it.
    #[error("{0}")]
    Usage(String),
    /// The answering replica refused the call for a reason that retrying will not fix.
    #[error("{endpoint} answered {code:?}: {message}")]
    Server {
        /// The replica that answered.
        endpoint: String,
        /// The gRPC status code.
        code: Code,
        /// The replica's explanation.
        message: String,
    },
    /// The answer did not follow the protocol (a version mismatch).
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

fn describe_attempts(errors: &[(String, String)]) -> String {
    if errors.is_empty() {
        return "no endpoint could be tried".to_owned();
    }
    let described: Vec<String> = errors.iter().map(|(endpoint, error)| format!("{endpoint}: {error}")).collect();
    format!("last error per endpoint: {}", described.join("; "))
}

impl Error {
    /// True when the cluster could not be reached or had no leader (retry later, same ids).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}

/// Whether a failed attempt is worth another, and what to record of it.
pub(crate) enum Attempt {
    /// Another endpoint, or the same one later, may succeed; nothing was applied or the retry is safe.
    Retry(String),
    Fail(Error),
}

pub(crate) fn classify(endpoint: &str, status: &tonic::Status) -> Attempt {
    let message = status.message().to_owned();
    match status.code() {
        // Unavailable: no leader, leadership moved, a replica down. Aborted: the leader refused the
        // entry and applied nothing. Deadline/Cancelled/Unknown: the attempt or the connection broke.
        Code::Unavailable | Code::Aborted | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            Attempt::Retry(if message.is_empty() { format!("{:?}", status.code()) } else { message })
        }
        // The message size limit is not worth retrying; a full queue is.
        Code::ResourceExhausted if message.contains("message_bytes_max") || message.contains("above the limit") => {
            Attempt::Fail(Error::TooLarge(message))
        }
        Code::ResourceExhausted => Attempt::Retry(message),
        Code::InvalidArgument | Code::OutOfRange => Attempt::Fail(Error::InvalidArgument(message)),
        Code::Unauthenticated => Attempt::Fail(Error::Unauthenticated(message)),
        Code::PermissionDenied => Attempt::Fail(Error::PermissionDenied(message)),
        // What a plaintext HTTP/2 client reads from a replica that serves TLS: its alert.
        Code::Internal if message.contains("h2 protocol error") => Attempt::Fail(Error::Usage(format!(
            "{endpoint} does not speak plaintext gRPC ({message}); a replica serving TLS answers a plaintext client so: \
             connect with a principal's certificate (TALLY_CA, TALLY_CERT, TALLY_KEY)"
        ))),
        code => Attempt::Fail(Error::Server { endpoint: endpoint.to_owned(), code, message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_client_of_a_tls_replica_is_told_to_use_a_certificate_and_does_not_retry() {
        let status = tonic::Status::internal("h2 protocol error: http2 error");
        let Attempt::Fail(Error::Usage(message)) = classify("127.0.0.1:7101", &status) else {
            panic!("not a usage error");
        };
        assert!(message.contains("127.0.0.1:7101 does not speak plaintext gRPC"), "{message}");
        assert!(message.contains("TALLY_CERT"), "{message}");
        let other = tonic::Status::internal("something else");
        assert!(matches!(classify("a:1", &other), Attempt::Fail(Error::Server { code: Code::Internal, .. })));
    }
}
