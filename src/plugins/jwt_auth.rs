//! `jwt-auth {header, query, cookie, leeway_s, audiences, issuers,
//! require_exp, hide_credentials, jwks, algorithms}`: the caller presents
//! a signed JWT (`Authorization: Bearer` by default).
//!
//! Without `jwks`, the token's `iss` names the consumer, and the token
//! must be signed with that consumer's one algorithm and key. With
//! `jwks` (a JWK set kept in the route, so in etcd), the token's `kid`
//! picks the key and its algorithm must be one of `algorithms`; the
//! consumer is the one with that issuer, if any.
//!
//! Abuse this refuses: `alg: none` (no such algorithm here), algorithm
//! switching (the algorithm is pinned, and a key only verifies its own
//! family: an RS256 public key used as an HS256 secret fails), tokens
//! larger than 8 KiB, a malformed or string-typed `exp`/`nbf`, and
//! tokens without `exp` unless `require_exp` is off.
//!
//! A verified token is remembered for `cache_ttl_s` (default 60): a
//! signature check costs tens of microseconds (ES256 on ring) and clients
//! send one token many times. A remembered token is still refused once
//! `exp` passes, and is checked again when its consumer's entry changed.

use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderName;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

use super::consumer::{jwt_algorithm, Consumer};
use super::query_param::{param, without};
use super::ttl_cache::TtlCache;
use super::{config, header_name, Flow, Plugin, PluginRequest, Reply};
use crate::field_error::{field, index, FieldError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    cookie: Option<String>,
    #[serde(default = "default_leeway")]
    leeway_s: u64,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    issuers: Vec<String>,
    #[serde(default = "yes")]
    require_exp: bool,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    algorithms: Vec<String>,
    #[serde(default = "default_cache_ttl")]
    cache_ttl_s: u64,
}

fn default_leeway() -> u64 {
    30
}
fn default_cache_ttl() -> u64 {
    60
}

/// Verified tokens remembered per route at most.
const CACHE_ENTRIES: usize = 10_000;
fn yes() -> bool {
    true
}

/// The largest token looked at; larger ones are refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug)]
struct JwtAuth {
    header: HeaderName,
    query: Option<String>,
    cookie: Option<String>,
    hide: bool,
    /// Leeway, audiences, issuers and required claims; algorithms per token.
    base: Validation,
    jwks: Option<Jwks>,
    /// Tokens verified recently, by HMAC of the token.
    verified: Option<TtlCache<Verified>>,
}

/// A route's own keys: `(kid, algorithm the JWK pins if any, key)`.
#[derive(Debug)]
struct Jwks {
    keys: Vec<(Option<String>, Option<Algorithm>, DecodingKey)>,
    algorithms: Vec<Algorithm>,
}

pub fn compile(v: &Value, at: &str) -> Result<Arc<dyn Plugin>, FieldError> {
    super::jwt_crypto::install();
    let spec: Spec = config(v, at)?;
    let header = match &spec.header {
        Some(h) => header_name(h, &field(at, "header"))?,
        None => AUTHORIZATION,
    };
    if spec.leeway_s > 300 {
        return Err(FieldError::new(field(at, "leeway_s"), "at most 300"));
    }
    if spec.cache_ttl_s > 3600 {
        return Err(FieldError::new(
            field(at, "cache_ttl_s"),
            "at most 3600 (0 turns the cache off)",
        ));
    }
    let mut base = Validation::new(Algorithm::ES256);
    base.leeway = spec.leeway_s;
    base.validate_nbf = true;
    base.validate_exp = true;
    base.required_spec_claims.clear();
    if spec.require_exp {
        base.required_spec_claims.insert("exp".into());
    }
    base.validate_aud = !spec.audiences.is_empty();
    if base.validate_aud {
        base.set_audience(&spec.audiences);
        base.required_spec_claims.insert("aud".into());
    }
    if !spec.issuers.is_empty() {
        base.set_issuer(&spec.issuers);
        base.required_spec_claims.insert("iss".into());
    }
    let jwks = match &spec.jwks {
        None if spec.algorithms.is_empty() => None,
        None => {
            return Err(FieldError::new(
                field(at, "algorithms"),
                "only with jwks (a consumer's key pins its own algorithm)",
            ))
        }
        Some(doc) => Some(jwks(doc, &spec.algorithms, at)?),
    };
    Ok(Arc::new(JwtAuth {
        header,
        query: spec.query,
        cookie: spec.cookie,
        hide: spec.hide_credentials,
        base,
        jwks,
        verified: (spec.cache_ttl_s > 0)
            .then(|| TtlCache::new(CACHE_ENTRIES, Duration::from_secs(spec.cache_ttl_s))),
    }))
}

fn jwks(doc: &Value, algorithms: &[String], at: &str) -> Result<Jwks, FieldError> {
    let at_set = field(at, "jwks");
    let set: JwkSet = config(doc, &at_set)?;
    if set.keys.is_empty() {
        return Err(FieldError::new(field(&at_set, "keys"), "no keys"));
    }
    if algorithms.is_empty() {
        return Err(FieldError::new(
            field(at, "algorithms"),
            "name the algorithms the JWK set's tokens may use (never chosen by the token)",
        ));
    }
    let algorithms = algorithms
        .iter()
        .enumerate()
        .map(|(i, a)| jwt_algorithm(a, &index(&field(at, "algorithms"), i)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.iter().enumerate() {
        let at_key = index(&field(&at_set, "keys"), i);
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| FieldError::new(&at_key, format!("not a usable key: {e}")))?;
        let alg =
            match jwk.common.key_algorithm {
                Some(a) => Some(Algorithm::try_from(a).map_err(|_| {
                    FieldError::new(field(&at_key, "alg"), "not a signing algorithm")
                })?),
                None => None,
            };
        keys.push((jwk.common.key_id.clone(), alg, key));
    }
    if keys.len() > 1 && keys.iter().any(|(kid, _, _)| kid.is_none()) {
        return Err(FieldError::new(
            field(&at_set, "keys"),
            "with more than one key, every key needs a kid",
        ));
    }
    Ok(Jwks { keys, algorithms })
}

/// Why a token was refused, as the client is told.
fn refusal(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidAudience => "token not for this audience",
        ErrorKind::InvalidIssuer => "token from a wrong issuer",
        ErrorKind::InvalidSignature => "invalid token signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => "token algorithm not allowed",
        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
        ErrorKind::InvalidClaimFormat(_) => "token has a malformed claim",
        _ => "malformed token",
    }
}

const CHALLENGE: &str = "Bearer";

fn deny(message: &'static str) -> Flow {
    Flow::Respond(Reply::unauthorized(message, CHALLENGE))
}

/// Just the issuer, read before the signature is checked (to find whose
/// key checks it; nothing else is trusted until then).
#[derive(Deserialize)]
struct Issuer {
    #[serde(default)]
    iss: Option<String>,
}

impl JwtAuth {
    /// The token and where it came from (to hide it afterwards).
    fn token<'r>(&self, req: &'r PluginRequest<'_>) -> Option<(&'r str, Source)> {
        let h = &req.header;
        if let Some(v) = h.headers.get(&self.header) {
            let v = v.to_str().ok()?;
            let t = if self.header == AUTHORIZATION {
                let (scheme, t) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(t.trim())?
            } else {
                v.trim()
            };
            return Some((t, Source::Header));
        }
        let in_query = (self.query.as_deref()).and_then(|q| param(h.uri.query()?, q));
        if let Some((t, span)) = in_query {
            return Some((t, Source::Query(span)));
        }
        if let Some(c) = &self.cookie {
            for line in h.headers.get_all(COOKIE) {
                for pair in line.to_str().ok()?.split(';') {
                    let pair = pair.trim();
                    if let Some(t) = pair
                        .strip_prefix(c.as_str())
                        .and_then(|r| r.strip_prefix('='))
                    {
                        return Some((t, Source::Cookie));
                    }
                }
            }
        }
        None
    }

    /// The key and the one algorithm for this token, and the consumer.
    fn key_for(&self, token: &str, req: &PluginRequest<'_>) -> Result<Checker<'_>, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(e.kind()))?;
        let issuer = || {
            jsonwebtoken::dangerous::insecure_decode_claims::<Issuer>(token)
                .ok()
                .and_then(|c| c.iss)
        };
        match &self.jwks {
            Some(set) => {
                if !set.algorithms.contains(&header.alg) {
                    return Err("token algorithm not allowed");
                }
                let found = match &header.kid {
                    Some(kid) => set.keys.iter().find(|(k, _, _)| k.as_deref() == Some(kid)),
                    None if set.keys.len() == 1 => set.keys.first(),
                    None => None,
                };
                let (_, pinned, key) = found.ok_or("unknown key id")?;
                if pinned.is_some_and(|p| p != header.alg) {
                    return Err("token algorithm not allowed");
                }
                let consumer = issuer().and_then(|i| req.consumers.by_iss(&i).cloned());
                Ok(Checker::Route(key, header.alg, consumer))
            }
            None => {
                let iss = issuer().ok_or("token names no issuer")?;
                let consumer = req.consumers.by_iss(&iss).ok_or("unknown issuer")?;
                Ok(Checker::Consumer(consumer.clone()))
            }
        }
    }

    /// Checks `token` whole: signature with the pinned algorithm, then
    /// claims; a token verified before is only re-checked for its times
    /// and its consumer's key.
    fn verify(
        &self,
        token: &str,
        req: &PluginRequest<'_>,
    ) -> Result<Option<Arc<Consumer>>, &'static str> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too large");
        }
        let cache_key = self
            .verified
            .as_ref()
            .map(|c| c.key_of(&[token.as_bytes()]));
        if let (Some(cache), Some(k)) = (&self.verified, &cache_key) {
            if let Some(v) = cache.get(k) {
                if let Some(decided) = self.recheck(&v, req) {
                    return decided;
                }
            }
        }
        let checker = self.key_for(token, req)?;
        let mut v = self.base.clone();
        let (key, consumer) = match &checker {
            Checker::Route(key, alg, consumer) => {
                v.algorithms = vec![*alg];
                (*key, consumer.clone())
            }
            Checker::Consumer(c) => {
                let jwt = c.jwt.as_ref().ok_or("unknown issuer")?;
                // Pinned: a token naming another algorithm is refused
                // before any key is used.
                v.algorithms = vec![jwt.alg];
                v.set_issuer(&[&*jwt.iss]);
                (&jwt.key, Some(c.clone()))
            }
        };
        let times = jsonwebtoken::decode::<Times>(token, key, &v)
            .map_err(|e| refusal(e.kind()))?
            .claims;
        if let (Some(cache), Some(k)) = (&self.verified, cache_key) {
            cache.put(
                k,
                Verified {
                    exp: Time::at(times.exp),
                    nbf: Time::at(times.nbf),
                    consumer: consumer.clone(),
                },
            );
        }
        Ok(consumer)
    }

    /// A remembered token's verdict now: `None` when it must be checked
    /// again (its consumer changed or was deleted).
    fn recheck(
        &self,
        v: &Verified,
        req: &PluginRequest<'_>,
    ) -> Option<Result<Option<Arc<Consumer>>, &'static str>> {
        if let Some(c) = &v.consumer {
            let iss = c.jwt.as_ref().map(|j| &*j.iss)?;
            let current = req.consumers.by_iss(iss)?;
            if !Arc::ptr_eq(current, c) {
                return None;
            }
        }
        let now = jsonwebtoken::get_current_timestamp();
        let leeway = self.base.leeway;
        if v.exp.is_some_and(|exp| exp.saturating_add(leeway) < now) {
            return Some(Err("token expired"));
        }
        if v.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Some(Err("token not yet valid"));
        }
        Some(Ok(v.consumer.clone()))
    }
}

/// The claims a remembered token is re-checked by. Read leniently: the
/// validation that runs after reading refuses a malformed one, by name.
#[derive(Deserialize)]
struct Times {
    #[serde(default)]
    exp: Option<Time>,
    #[serde(default)]
    nbf: Option<Time>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Time {
    At(u64),
    Other(serde::de::IgnoredAny),
}

impl Time {
    fn at(t: Option<Time>) -> Option<u64> {
        match t {
            Some(Time::At(at)) => Some(at),
            _ => None,
        }
    }
}

/// A token whose signature and claims passed: its times and who it names
/// (the very consumer entry, so a changed key is a new entry).
#[derive(Clone)]
struct Verified {
    exp: Option<u64>,
    nbf: Option<u64>,
    consumer: Option<Arc<Consumer>>,
}

/// How a token is checked: a route JWK (with its algorithm and the
/// consumer, if one has the token's issuer), or a consumer's own key.
enum Checker<'k> {
    Route(&'k DecodingKey, Algorithm, Option<Arc<Consumer>>),
    Consumer(Arc<Consumer>),
}

enum Source {
    Header,
    /// Where in the query string.
    Query(std::ops::Range<usize>),
    Cookie,
}

impl Plugin for JwtAuth {
    fn edits_response(&self) -> bool {
        false
    }

    fn request(&self, req: &mut PluginRequest<'_>) -> Flow {
        let Some((token, source)) = self.token(req) else {
            return deny("missing token");
        };
        let consumer = match self.verify(token, req) {
            Ok(c) => c,
            Err(why) => return deny(why),
        };
        if self.hide {
            match source {
                Source::Header => {
                    req.header.remove_header(&self.header);
                }
                Source::Query(span) => {
                    if let Some(uri) = without(&req.header.uri, span) {
                        req.header.set_uri(uri);
                    }
                }
                // A cookie token stays: taking it out of the cookie line
                // is left to proxy-rewrite.
                Source::Cookie => {}
            }
        }
        *req.consumer = consumer;
        Flow::Continue
    }
}
