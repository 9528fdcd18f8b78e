//! The ACME (RFC 8555) side of managed certificates: an account at a CA and
//! one HTTP-01 order at a time, on instant-acme.
//!
//! Cluster concerns (who orders, where tokens and certificates are stored)
//! stay with the caller: it passes a [`ChallengeBoard`] that makes a token
//! answer on every node, and stores what [`AcmeClient::create`] and
//! [`AcmeClient::order`] return.
//!
//! Everything the CA sends is checked, never trusted to be well formed: its
//! errors come back as [`AcmeError`]s that say which step failed and what
//! the CA said, every network step is bounded (connect timeout, account
//! calls within [`ACCOUNT_TIMEOUT`], an order within its deadline), and an
//! issued chain is accepted only when it parses, its leaf names every
//! ordered name and matches the key generated for it.

use crate::model::acme::check_directory_url;
use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier,
    Key, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls_pki_types::PrivateKeyDer;
use tracing::{debug, info, warn};

pub use super::error::AcmeError;
use super::error::{classify, problem_text};
use super::transport::http_client;

/// Bound on establishing a TCP connection to the CA.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on [`AcmeClient::create`] and [`AcmeClient::restore`] as a whole.
pub const ACCOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on withdrawing an order's tokens from the board.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to order: the directory URL, the account contact, and optionally a
/// PEM file of roots to trust for the directory's HTTPS (a private CA such
/// as pebble's); `None` = the platform's roots (rustls-platform-verifier, as
/// instant-acme's default client).
#[derive(Debug, Clone, Copy)]
pub struct Directory<'a> {
    pub url: &'a str,
    pub email: Option<&'a str>,
    pub tls_roots_pem: Option<&'a Path>,
}

/// An account at one ACME CA. Cheap to clone; orders may run concurrently.
#[derive(Clone)]
pub struct AcmeClient {
    account: Account,
    directory: String,
}

impl fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeClient")
            .field("account", &self.account.id())
            .field("directory", &self.directory)
            .finish()
    }
}

/// Serves HTTP-01 key authorizations (`/.well-known/acme-challenge/<token>`)
/// for the whole cluster.
#[async_trait::async_trait]
pub trait ChallengeBoard: Send + Sync {
    /// Makes `/.well-known/acme-challenge/<token>` answer `key_authorization` on every node before returning.
    async fn publish(&self, token: &str, key_authorization: &str) -> anyhow::Result<()>;
    async fn withdraw(&self, token: &str);
}

/// An issued certificate: the PEM chain as the CA sent it (leaf first) and
/// its private key (PKCS#8 PEM, ECDSA P-256).
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl AcmeClient {
    /// Registers a new account (terms of service agreed, `mailto:` contact
    /// if an email is given); returns it and its credentials as JSON (to be
    /// stored, encrypted, by the caller: they hold the account's private key).
    pub async fn create(dir: &Directory<'_>) -> Result<(Self, String), AcmeError> {
        check_directory_url(dir.url).map_err(AcmeError::Invalid)?;
        let contact = match dir.email {
            Some(email) if email.is_empty() || !email.contains('@') || email.contains(' ') => {
                return Err(AcmeError::Invalid(format!(
                    "contact {email:?} is not an email address"
                )));
            }
            Some(email) => vec![format!("mailto:{email}")],
            None => Vec::new(),
        };
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let builder = Account::builder_with_http(http_client(dir)?);
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let created = tokio::time::timeout(
            ACCOUNT_TIMEOUT,
            builder.create(&new, dir.url.to_string(), None),
        )
        .await
        .map_err(|_| AcmeError::TimedOut {
            during: "account creation",
            after: ACCOUNT_TIMEOUT,
        })?;
        let (account, credentials) =
            created.map_err(|e| classify(dir.url, "creating the account", e))?;
        let json = serde_json::to_string(&credentials).map_err(|e| AcmeError::Protocol {
            url: dir.url.to_string(),
            during: "creating the account",
            detail: format!("credentials do not serialize: {e}"),
        })?;
        info!(
            directory = dir.url,
            account = account.id(),
            "ACME account created"
        );
        Ok((
            AcmeClient {
                account,
                directory: dir.url.to_string(),
            },
            json,
        ))
    }

    /// Restores an account from stored credentials JSON. Asks the CA for
    /// the account by its key (`onlyReturnExisting`), so an account the CA
    /// no longer knows fails here, as [`AcmeError::Ca`] with problem type
    /// `urn:ietf:params:acme:error:accountDoesNotExist`, rather than at the
    /// first order. Credentials made for another directory URL are refused.
    pub async fn restore(credentials_json: &str, dir: &Directory<'_>) -> Result<Self, AcmeError> {
        check_directory_url(dir.url).map_err(AcmeError::Invalid)?;
        let value: serde_json::Value = serde_json::from_str(credentials_json)
            .map_err(|e| AcmeError::Invalid(format!("account credentials are not JSON: {e}")))?;
        match value.get("directory").and_then(|d| d.as_str()) {
            Some(stored) if stored == dir.url => {}
            Some(stored) => {
                return Err(AcmeError::Invalid(format!(
                    "the account credentials are for directory {stored}, not {}",
                    dir.url
                )))
            }
            None => {
                return Err(AcmeError::Invalid(
                    "the account credentials name no directory".into(),
                ))
            }
        }
        let credentials: AccountCredentials = serde_json::from_value(value)
            .map_err(|e| AcmeError::Invalid(format!("account credentials do not parse: {e}")))?;
        let pkcs8 = credentials.private_key().clone_key();
        let key = Key::from_pkcs8_der(pkcs8.clone_key()).map_err(|e| {
            AcmeError::Invalid(format!("the account key is not an ECDSA P-256 key: {e}"))
        })?;
        let builder = Account::builder_with_http(http_client(dir)?);
        let found = tokio::time::timeout(
            ACCOUNT_TIMEOUT,
            builder.from_key((key, PrivateKeyDer::Pkcs8(pkcs8)), dir.url.to_string()),
        )
        .await
        .map_err(|_| AcmeError::TimedOut {
            during: "account restore",
            after: ACCOUNT_TIMEOUT,
        })?;
        let (account, _) = found.map_err(|e| classify(dir.url, "looking up the account", e))?;
        info!(
            directory = dir.url,
            account = account.id(),
            "ACME account restored"
        );
        Ok(AcmeClient {
            account,
            directory: dir.url.to_string(),
        })
    }

    /// The account's URL at the CA.
    pub fn account_id(&self) -> &str {
        self.account.id()
    }

    /// The directory URL this account belongs to.
    pub fn directory_url(&self) -> &str {
        &self.directory
    }

    /// One order for `names` with HTTP-01: publishes each token's key
    /// authorization on `board`, tells the CA, polls (bounded by `deadline`)
    /// until valid, finalizes with a fresh ECDSA P-256 key (rcgen),
    /// downloads the chain, withdraws the tokens (also on failure), and
    /// returns PEM chain + PKCS#8 PEM key.
    ///
    /// Names are DNS names; a wildcard (`*.`) or an IP address is refused
    /// before anything is sent (HTTP-01 cannot validate a wildcard).
    /// Duplicates (ignoring case) are ordered once.
    pub async fn order(
        &self,
        names: &[String],
        board: &dyn ChallengeBoard,
        deadline: Duration,
    ) -> Result<Issued, AcmeError> {
        let names = check_names(names)?;
        let started = Instant::now();
        let mut published = Vec::new();
        let outcome = tokio::time::timeout(
            deadline,
            self.order_inner(&names, board, started + deadline, &mut published),
        )
        .await
        .unwrap_or(Err(AcmeError::TimedOut {
            during: "order",
            after: deadline,
        }));
        // instant-acme's polling stops at the deadline too; say which.
        let outcome = match outcome {
            Err(AcmeError::TimedOut { during, .. }) => Err(AcmeError::TimedOut {
                during,
                after: deadline,
            }),
            other => other,
        };
        if !published.is_empty() {
            let withdraw = async {
                for token in &published {
                    board.withdraw(token).await;
                }
            };
            if tokio::time::timeout(WITHDRAW_TIMEOUT, withdraw)
                .await
                .is_err()
            {
                warn!(
                    directory = %self.directory,
                    tokens = published.len(),
                    "ACME: withdrawing HTTP-01 tokens did not finish within {WITHDRAW_TIMEOUT:?}"
                );
            }
        }
        match &outcome {
            Ok(_) => info!(
                directory = %self.directory, names = ?names, elapsed = ?started.elapsed(),
                "ACME certificate issued"
            ),
            Err(e) => warn!(
                directory = %self.directory, names = ?names, elapsed = ?started.elapsed(),
                error = %e, "ACME order failed"
            ),
        }
        outcome
    }

    /// The order up to the downloaded, checked chain. Each token is pushed
    /// onto `published` before it is published, so the caller withdraws it
    /// whatever happens after (an error, or this future dropped at the
    /// deadline).
    async fn order_inner(
        &self,
        names: &[String],
        board: &dyn ChallengeBoard,
        deadline: Instant,
        published: &mut Vec<String>,
    ) -> Result<Issued, AcmeError> {
        let url = self.directory.as_str();
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = self
            .account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| classify(url, "creating the order", e))?;
        debug!(directory = url, order = order.url(), names = ?names, "ACME order created");

        if let Err(e) = answer_challenges(url, &mut order, board, published).await {
            return Err(explain(url, &mut order, e).await);
        }

        let status = order
            .poll_ready(&poll_policy(deadline))
            .await
            .map_err(|e| classify(url, "waiting for validation", e));
        match status {
            Ok(OrderStatus::Ready) => {}
            Ok(status) => {
                let e = AcmeError::Protocol {
                    url: url.to_string(),
                    during: "waiting for validation",
                    detail: format!("the order became {status:?}"),
                };
                return Err(explain(url, &mut order, e).await);
            }
            Err(e) => return Err(explain(url, &mut order, e).await),
        }

        let key_pem = order
            .finalize()
            .await
            .map_err(|e| classify(url, "finalizing the order", e))?;
        let cert_pem = order
            .poll_certificate(&poll_policy(deadline))
            .await
            .map_err(|e| classify(url, "downloading the certificate", e))?;
        check_issued(&cert_pem, &key_pem, names).map_err(|detail| AcmeError::Protocol {
            url: url.to_string(),
            during: "checking the certificate",
            detail,
        })?;
        Ok(Issued { cert_pem, key_pem })
    }
}

/// For each pending authorization: publish its HTTP-01 key authorization on
/// the board, then tell the CA the challenge is ready. Authorizations the
/// CA already holds valid (reuse) are skipped.
async fn answer_challenges(
    url: &str,
    order: &mut Order,
    board: &dyn ChallengeBoard,
    published: &mut Vec<String>,
) -> Result<(), AcmeError> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| classify(url, "fetching authorizations", e))?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => {
                debug!(directory = url, name, "ACME authorization already valid");
                continue;
            }
            AuthorizationStatus::Invalid => {
                return Err(AcmeError::ChallengeInvalid {
                    name,
                    reason: "the CA holds the authorization invalid".into(),
                })
            }
            status => {
                return Err(AcmeError::Protocol {
                    url: url.to_string(),
                    during: "fetching authorizations",
                    detail: format!("the authorization for {name} is {status:?}"),
                })
            }
        }
        let Some(mut challenge) = authz.challenge(ChallengeType::Http01) else {
            return Err(AcmeError::Protocol {
                url: url.to_string(),
                during: "fetching authorizations",
                detail: format!("no http-01 challenge offered for {name}"),
            });
        };
        if challenge.token.is_empty() || !is_token(&challenge.token) {
            return Err(AcmeError::Protocol {
                url: url.to_string(),
                during: "fetching authorizations",
                detail: format!("the http-01 token for {name} is not base64url"),
            });
        }
        match challenge.status {
            ChallengeStatus::Pending => {}
            // Already answered (a retried order): the CA is at it.
            ChallengeStatus::Processing | ChallengeStatus::Valid => continue,
            ChallengeStatus::Invalid => {
                return Err(AcmeError::ChallengeInvalid {
                    name,
                    reason: problem_text(challenge.error.as_ref()),
                })
            }
        }
        let token = challenge.token.clone();
        let key_authorization = challenge.key_authorization();
        published.push(token.clone());
        board
            .publish(&token, key_authorization.as_str())
            .await
            .map_err(|source| AcmeError::Board {
                name: name.clone(),
                source,
            })?;
        debug!(directory = url, name, token, "ACME HTTP-01 token published");
        challenge
            .set_ready()
            .await
            .map_err(|e| classify(url, "answering the challenge", e))?;
    }
    Ok(())
}

/// When the order failed during validation, the CA's reason for an invalid
/// challenge says more than the order's state: look it up and return that
/// instead of `err` (kept when no challenge is invalid, or the look-up fails).
async fn explain(url: &str, order: &mut Order, err: AcmeError) -> AcmeError {
    if matches!(
        err,
        AcmeError::ChallengeInvalid { .. }
            | AcmeError::Board { .. }
            | AcmeError::TimedOut { .. }
            | AcmeError::Unreachable { .. }
    ) {
        return err;
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let state = match authz.refresh().await {
            Ok(state) => state,
            Err(e) => {
                debug!(directory = url, error = %e, "ACME: cannot refresh an authorization");
                continue;
            }
        };
        if state.status != AuthorizationStatus::Invalid {
            continue;
        }
        let failed = state
            .challenges
            .iter()
            .find(|c| c.r#type == ChallengeType::Http01 && c.error.is_some())
            .or_else(|| state.challenges.iter().find(|c| c.error.is_some()));
        return AcmeError::ChallengeInvalid {
            name: state.identifier().to_string(),
            reason: problem_text(failed.and_then(|c| c.error.as_ref())),
        };
    }
    err
}

/// Polls until `deadline`: first after 250 ms, then 1.5 times longer each
/// time (or when the CA's Retry-After says).
fn poll_policy(deadline: Instant) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(deadline.saturating_duration_since(Instant::now()))
}

/// The names to order: DNS names only, each once (ignoring case), at least one.
fn check_names(names: &[String]) -> Result<Vec<String>, AcmeError> {
    if names.is_empty() {
        return Err(AcmeError::Invalid(
            "an order needs at least one name".into(),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if name.contains('*') {
            return Err(AcmeError::Invalid(format!(
                "{name}: a wildcard name needs a DNS-01 challenge; HTTP-01 cannot validate it"
            )));
        }
        if name.is_empty() || name.parse::<IpAddr>().is_ok() {
            return Err(AcmeError::Invalid(format!(
                "{name:?}: only DNS names can be ordered"
            )));
        }
        if seen.insert(name.to_ascii_lowercase()) {
            out.push(name.clone());
        }
    }
    Ok(out)
}

/// RFC 8555 §8.1: a token is base64url (it becomes a URL path segment on
/// every node, so nothing else is let through).
fn is_token(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The chain parses, its leaf carries every name as a DNS SAN, and the key
/// is the leaf's.
fn check_issued(cert_pem: &str, key_pem: &str, names: &[String]) -> Result<(), String> {
    let chain =
        crate::model::pem::certs(cert_pem, "certificate chain").map_err(|e| e.to_string())?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| format!("the leaf does not parse: {e}"))?;
    let sans: HashSet<String> = match leaf.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => HashSet::new(),
        Err(e) => return Err(format!("the leaf's subjectAltName does not parse: {e}")),
    };
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !sans.contains(&n.to_ascii_lowercase()))
        .collect();
    if !missing.is_empty() {
        return Err(format!("the leaf does not name {missing:?}"));
    }
    let key = crate::model::pem::private_key(key_pem.as_bytes(), "generated key")
        .map_err(|e| e.to_string())?;
    crate::model::pem::certified_key(chain, &key, "generated key", "the issued leaf")
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_sent() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(
            check_names(&names(&["a.example", "*.example"])),
            Err(AcmeError::Invalid(m)) if m.contains("DNS-01")
        ));
        assert!(matches!(
            check_names(&names(&["192.0.2.1"])),
            Err(AcmeError::Invalid(_))
        ));
        assert!(matches!(check_names(&[]), Err(AcmeError::Invalid(_))));
        assert_eq!(
            check_names(&names(&["a.example", "A.example", "b.example"])).unwrap(),
            names(&["a.example", "b.example"])
        );
    }

    #[test]
    fn tokens_are_base64url_only() {
        assert!(is_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!is_token("../etc/passwd"));
        assert!(!is_token("a b"));
    }

    // The order future must be Send: callers spawn it.
    #[allow(dead_code)]
    fn order_is_send(client: &AcmeClient, board: &dyn ChallengeBoard) {
        fn is_send<T: Send>(_: &T) {}
        let fut = client.order(&[], board, Duration::ZERO);
        is_send(&fut);
        let dir = Directory {
            url: "",
            email: None,
            tls_roots_pem: None,
        };
        is_send(&AcmeClient::create(&dir));
        is_send(&AcmeClient::restore("", &dir));
    }
}
