//! What becomes of request headers the gateway will not pass on as sent
//! (`proxy.underscore_headers`).

use serde::Deserialize;

/// A request header named with an underscore (`X-Forwarded_For`,
/// `X_Consumer_Name`): CGI-style backends (PHP, WSGI, Rack) read it as the
/// header spelled with dashes, so it would get past the gateway's own
/// handling of that header (a client's `X-Consumer-Name` is removed, its
/// `X-Forwarded-For` is extended). Dropped by default, as nginx does
/// (`underscores_in_headers off`); Envoy's `headers_with_underscores_action`
/// offers the same three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoreHeaders {
    /// Removed before the plugins and the upstream see the request.
    #[default]
    Drop,
    /// The request is answered 400.
    Reject,
    /// Passed on as any other header.
    Allow,
}
