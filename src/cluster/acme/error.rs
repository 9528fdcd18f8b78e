//! What can go wrong ordering from an ACME CA, sorted so the caller can
//! act on it (and an operator can read it in `/status`).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The request cannot be made as asked (bad directory URL, wildcard or IP
    /// name, unreadable roots file, credentials for another directory).
    /// Nothing was sent to the CA.
    #[error("ACME: {0}")]
    Invalid(String),
    /// No answer from the CA: connection refused or reset, TLS failure (an
    /// untrusted certificate too), DNS.
    #[error("ACME CA {url} unreachable ({during}): {source}")]
    Unreachable {
        url: String,
        during: &'static str,
        #[source]
        source: instant_acme::Error,
    },
    /// The CA answered with an RFC 7807 problem document (`problem.type`
    /// says which, e.g. `urn:ietf:params:acme:error:rateLimited`).
    #[error("ACME CA {url} refused ({during}): {problem}")]
    Ca {
        url: String,
        during: &'static str,
        problem: instant_acme::Problem,
    },
    /// The CA answered something that is not what RFC 8555 says it should
    /// (not JSON, no HTTP-01 challenge offered, a certificate that does not
    /// cover the names or match the key).
    #[error("ACME CA {url} answered unexpectedly ({during}): {detail}")]
    Protocol {
        url: String,
        during: &'static str,
        detail: String,
    },
    /// The CA tried the HTTP-01 challenge for `name` and it failed; `reason`
    /// is the CA's (e.g. what it fetched instead, or why it could not).
    #[error("HTTP-01 challenge for {name} is invalid: {reason}")]
    ChallengeInvalid { name: String, reason: String },
    /// `during` did not finish within `after`.
    #[error("ACME {during} did not finish within {after:?}")]
    TimedOut {
        during: &'static str,
        after: Duration,
    },
    /// The board could not publish the token for `name`.
    #[error("publishing the HTTP-01 token for {name} failed: {source:#}")]
    Board {
        name: String,
        #[source]
        source: anyhow::Error,
    },
}

/// Sorts an instant-acme error into what the caller can act on.
pub(super) fn classify(url: &str, during: &'static str, e: instant_acme::Error) -> AcmeError {
    use instant_acme::Error as E;
    let url = url.to_string();
    match e {
        E::Api(problem) => AcmeError::Ca {
            url,
            during,
            problem,
        },
        // instant-acme's own polling ran out of time (we give it the time
        // left before the order's deadline).
        E::Timeout(_) => AcmeError::TimedOut {
            during,
            after: Duration::ZERO,
        },
        // Transport: connection, TLS, reading the body. (`Other` carries
        // only those on the paths used here, besides rcgen failing to make
        // a key, which does not happen with ring.)
        E::Hyper(_) | E::Other(_) => AcmeError::Unreachable {
            url,
            during,
            source: e,
        },
        other => AcmeError::Protocol {
            url,
            during,
            detail: other.to_string(),
        },
    }
}

pub(super) fn problem_text(problem: Option<&instant_acme::Problem>) -> String {
    match problem {
        Some(p) => match (&p.detail, &p.r#type) {
            (Some(detail), Some(kind)) => format!("{detail} ({kind})"),
            (Some(detail), None) => detail.clone(),
            (None, Some(kind)) => kind.clone(),
            (None, None) => "the CA gave no reason".into(),
        },
        None => "the CA gave no reason".into(),
    }
}
