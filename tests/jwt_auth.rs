//! jwt-auth as a client and an attacker see it (both engines): tokens of
//! each algorithm signed by a consumer's key pass and name the consumer
//! upstream; `alg: none`, algorithm confusion, expired, not-yet-valid,
//! wrong audience or issuer, a bad signature, malformed base64, a
//! string-typed `nbf` and a 100 KB token are refused with 401 and never
//! reach the upstream; a route's own JWK set picks keys by `kid`.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::Duration;

use common::etcd_gw::{put_plugin_route, start_gw};
use common::{assert_gateway_error, echo, send, start, upstream, READY};
use testkit::{http_request, wait_for, Backend, Etcd, Gateway};

/// An RSA key pair from openssl (rcgen cannot make RSA keys): (private
/// PKCS#8 PEM, public SPKI PEM).
fn rsa_pair() -> (String, String) {
    let dir = std::env::temp_dir().join(format!("tollgate-jwt-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(public.status.success(), "{public:?}");
    let private = std::fs::read_to_string(&key).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (private, String::from_utf8(public.stdout).unwrap())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Keys {
    es_private: String,
    es_public: String,
    /// The P-256 public point, for a JWK.
    es_xy: (String, String),
    ed_private: String,
    ed_public: String,
    rsa_private: String,
    rsa_public: String,
}

const HS_SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

fn keys() -> Keys {
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = es.public_key_raw().to_vec();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let (rsa_private, rsa_public) = rsa_pair();
    Keys {
        es_private: es.serialize_pem(),
        es_public: es.public_key_pem(),
        es_xy: (B64.encode(&raw[1..33]), B64.encode(&raw[33..65])),
        ed_private: ed.serialize_pem(),
        ed_public: ed.public_key_pem(),
        rsa_private,
        rsa_public,
    }
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value, kid: Option<&str>) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, key).unwrap()
}

/// A token with a header and claims of the attacker's choosing and any
/// signature bytes.
fn forged(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string()),
        B64.encode(signature)
    )
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&k, msg).as_ref().to_vec()
}

fn gateway(k: &Keys, b: &Backend) -> Gateway {
    let yaml_str = |s: &str| serde_json::to_string(s).unwrap();
    let jwk = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": k.es_xy.0, "y": k.es_xy.1,
                               "kid": "k1", "alg": "ES256", "use": "sig"}]});
    start(&format!(
        "consumers:\n\
         - {{ name: es-client, jwt: {{ iss: es, alg: ES256, public_key: {} }} }}\n\
         - {{ name: rs-client, jwt: {{ iss: rs, alg: RS256, public_key: {} }} }}\n\
         - {{ name: ed-client, jwt: {{ iss: ed, alg: EdDSA, public_key: {} }} }}\n\
         - {{ name: hs-client, jwt: {{ iss: hs, alg: HS256, secret: {} }} }}\n\
         routes:\n\
         - {{ id: jwt, paths: [\"/jwt\"], upstream: b, plugins: [{{jwt-auth: {{}}}}] }}\n\
         - {{ id: aud, paths: [\"/aud\"], upstream: b, plugins: [{{jwt-auth: {{audiences: [api], leeway_s: 0}}}}] }}\n\
         - {{ id: jwks, paths: [\"/jwks\"], upstream: b, plugins: [{{jwt-auth: {{jwks: {jwk}, algorithms: [ES256], hide_credentials: true}}}}] }}\n\
         - {{ id: qc, paths: [\"/qc\"], upstream: b, plugins: [{{jwt-auth: {{query: jwt, cookie: jwt, hide_credentials: true}}}}] }}\n\
         upstreams:\n{}",
        yaml_str(&k.es_public),
        yaml_str(&k.rsa_public),
        yaml_str(&k.ed_public),
        yaml_str(HS_SECRET),
        upstream("b", &[b])
    ))
}

fn bearer(gw: &Gateway, path: &str, token: &str) -> testkit::Resp {
    send(
        gw,
        "GET",
        path,
        &[("authorization", &format!("Bearer {token}"))],
    )
}

#[test]
fn each_algorithm_passes_with_its_consumers_key_and_names_the_consumer() {
    let k = keys();
    let b = Backend::start("b");
    let gw = gateway(&k, &b);
    let exp = now() + 600;
    for (alg, key, iss, who) in [
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(k.es_private.as_bytes()).unwrap(),
            "es",
            "es-client",
        ),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(k.rsa_private.as_bytes()).unwrap(),
            "rs",
            "rs-client",
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(k.ed_private.as_bytes()).unwrap(),
            "ed",
            "ed-client",
        ),
        (
            Algorithm::HS256,
            EncodingKey::from_secret(HS_SECRET.as_bytes()).unwrap(),
            "hs",
            "hs-client",
        ),
    ] {
        let t = sign(
            alg,
            &key,
            &json!({"iss": iss, "exp": exp, "sub": "u1"}),
            None,
        );
        let j = echo(&bearer(&gw, "/jwt", &t));
        assert_eq!(j["headers"]["x-consumer-name"], who, "{alg:?}: {j}");
        // By default the token goes on to the upstream (it may read claims).
        assert!(j["headers"]["authorization"].as_str().is_some(), "{j}");
    }
    // The route's JWK set: the key by kid, the token taken out.
    let es = EncodingKey::from_ec_pem(k.es_private.as_bytes()).unwrap();
    let t = sign(
        Algorithm::ES256,
        &es,
        &json!({"iss": "es", "exp": exp}),
        Some("k1"),
    );
    let j = echo(&bearer(&gw, "/jwks", &t));
    assert_eq!(j["headers"]["x-consumer-name"], "es-client", "{j}");
    assert!(j["headers"].get("authorization").is_none(), "{j}");
    // In the query: found, and taken out of the target upstream.
    let j = echo(&send(&gw, "GET", &format!("/qc?a=1&jwt={t}&b=2"), &[]));
    assert_eq!(j["headers"]["x-consumer-name"], "es-client", "{j}");
    assert_eq!(j["path"], "/qc?a=1&b=2", "{j}");
    // In a cookie, on a target with no query string at all.
    let cookie = format!("x=1; jwt={t}");
    let j = echo(&send(&gw, "GET", "/qc", &[("cookie", &cookie)]));
    assert_eq!(j["headers"]["x-consumer-name"], "es-client", "{j}");
    assert_eq!(send(&gw, "GET", "/qc?jwt=", &[]).status, 401);
    // Audience required and matched.
    let t = sign(
        Algorithm::ES256,
        &es,
        &json!({"iss": "es", "exp": exp, "aud": "api"}),
        None,
    );
    assert_eq!(bearer(&gw, "/aud", &t).status, 200);
}

#[test]
fn forged_expired_and_malformed_tokens_are_refused_and_reach_nothing() {
    let k = keys();
    let b = Backend::start("b");
    let gw = gateway(&k, &b);
    let es = EncodingKey::from_ec_pem(k.es_private.as_bytes()).unwrap();
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
    let exp = now() + 600;
    let good = sign(
        Algorithm::ES256,
        &es,
        &json!({"iss": "es", "exp": exp}),
        None,
    );
    // One signature character changed, well away from the last (whose
    // low bits are padding a strict decoder refuses to see changed).
    let mut bad_sig = good.clone().into_bytes();
    let at = bad_sig.len() - 10;
    bad_sig[at] = if bad_sig[at] == b'A' { b'B' } else { b'A' };
    let bad_sig = String::from_utf8(bad_sig).unwrap();
    // RS256's public key, the PEM text, used as an HS256 secret: the
    // classic algorithm confusion.
    let confusion = {
        let h = json!({"alg": "HS256", "typ": "JWT"});
        let c = json!({"iss": "rs", "exp": exp});
        let msg = format!(
            "{}.{}",
            B64.encode(h.to_string()),
            B64.encode(c.to_string())
        );
        let sig = hmac_sha256(k.rsa_public.as_bytes(), msg.as_bytes());
        format!("{msg}.{}", B64.encode(sig))
    };
    let none = forged(
        &json!({"alg": "none", "typ": "JWT"}),
        &json!({"iss": "es", "exp": exp}),
        b"",
    );
    let none_unsigned = none.trim_end_matches('.').to_string() + ".";
    let cases: Vec<(&str, &str, String, &str)> = vec![
        ("alg none", "/jwt", none, "malformed token"),
        (
            "alg none, empty signature",
            "/jwt",
            none_unsigned,
            "malformed token",
        ),
        (
            "RS256 key as HS256 secret",
            "/jwt",
            confusion,
            "algorithm not allowed",
        ),
        (
            "expired",
            "/jwt",
            sign(
                Algorithm::ES256,
                &es,
                &json!({"iss": "es", "exp": now() - 3600}),
                None,
            ),
            "token expired",
        ),
        (
            "not yet valid",
            "/jwt",
            sign(
                Algorithm::ES256,
                &es,
                &json!({"iss": "es", "exp": exp, "nbf": now() + 3600}),
                None,
            ),
            "not yet valid",
        ),
        (
            "nbf as a string",
            "/jwt",
            sign(
                Algorithm::ES256,
                &es,
                &json!({"iss": "es", "exp": exp, "nbf": "99999999999"}),
                None,
            ),
            "malformed claim",
        ),
        (
            "no exp",
            "/jwt",
            sign(Algorithm::ES256, &es, &json!({"iss": "es"}), None),
            "required claim",
        ),
        (
            "wrong audience",
            "/aud",
            sign(
                Algorithm::ES256,
                &es,
                &json!({"iss": "es", "exp": exp, "aud": "other"}),
                None,
            ),
            "audience",
        ),
        (
            "no audience",
            "/aud",
            sign(
                Algorithm::ES256,
                &es,
                &json!({"iss": "es", "exp": exp}),
                None,
            ),
            "required claim",
        ),
        (
            "unknown issuer",
            "/jwt",
            sign(
                Algorithm::ES256,
                &es,
                &json!({"iss": "mallory", "exp": exp}),
                None,
            ),
            "unknown issuer",
        ),
        (
            "ES256 token claiming the RS256 consumer",
            "/jwt",
            sign(
                Algorithm::ES256,
                &es,
                &json!({"iss": "rs", "exp": exp}),
                None,
            ),
            "algorithm not allowed",
        ),
        (
            "the ES256 consumer's issuer, signed by another key",
            "/jwt",
            sign(
                Algorithm::ES256,
                &other,
                &json!({"iss": "es", "exp": exp}),
                None,
            ),
            "invalid token signature",
        ),
        ("bad signature", "/jwt", bad_sig, "invalid token signature"),
        (
            "malformed base64",
            "/jwt",
            "e30.!!!notbase64!!!.sig".into(),
            "malformed token",
        ),
        ("not three parts", "/jwt", "abc".into(), "malformed token"),
        (
            "unknown kid",
            "/jwks",
            sign(
                Algorithm::ES256,
                &es,
                &json!({"iss": "es", "exp": exp}),
                Some("k9"),
            ),
            "unknown key id",
        ),
        (
            "JWK set, algorithm not listed",
            "/jwks",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(HS_SECRET.as_bytes()).unwrap(),
                &json!({"exp": exp}),
                Some("k1"),
            ),
            "algorithm not allowed",
        ),
    ];
    for (what, path, token, error) in &cases {
        let r = bearer(&gw, path, token);
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_gateway_error(&r, 401, error);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
    }
    // A 100 KB token (too big for the HTTP client: sent raw) is refused
    // by the header size limit before any plugin runs.
    let huge = sign(
        Algorithm::ES256,
        &es,
        &json!({"iss": "es", "exp": exp, "pad": "x".repeat(100 * 1024)}),
        None,
    );
    let request = format!(
        "GET /jwt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {huge}\r\nConnection: close\r\n\r\n"
    );
    let out = testkit::raw_request(gw.proxy_addr(), request.as_bytes(), Duration::from_secs(10));
    let head = String::from_utf8_lossy(&out[..out.len().min(64)]).to_string();
    assert!(head.starts_with("HTTP/1.1 4"), "100 KB token: {head:?}");
    let r = send(&gw, "GET", "/jwt", &[]);
    assert_gateway_error(&r, 401, "missing token");
    assert_eq!(b.hits(), 0, "no refused token reached the upstream");
    // The good token still works after all that.
    assert_eq!(bearer(&gw, "/jwt", &good).status, 200);
}

#[test]
fn a_token_just_under_the_size_cap_is_read_and_one_over_it_is_refused_unverified() {
    let k = keys();
    let b = Backend::start("b");
    let gw = gateway(&k, &b);
    let es = EncodingKey::from_ec_pem(k.es_private.as_bytes()).unwrap();
    let exp = now() + 600;
    let t = |pad: usize| {
        sign(
            Algorithm::ES256,
            &es,
            &json!({"iss": "es", "exp": exp, "p": "x".repeat(pad)}),
            None,
        )
    };
    let small = t(4000);
    assert!(small.len() < 8 * 1024);
    assert_eq!(bearer(&gw, "/jwt", &small).status, 200);
    let big = t(7000);
    assert!(
        big.len() > 8 * 1024 && big.len() < 16 * 1024,
        "{}",
        big.len()
    );
    assert_gateway_error(&bearer(&gw, "/jwt", &big), 401, "token too large");
}

#[test]
fn a_remembered_token_stops_when_its_consumers_key_changes_or_it_expires() {
    let b = Backend::start("b");
    let etcd = Etcd::start();
    let c = etcd.client();
    put_plugin_route(
        c,
        &b.url(),
        "jwt",
        "/jwt",
        json!([{"jwt-auth": {"leeway_s": 0}}]),
    );
    let pair = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let (old, new) = (pair(), pair());
    let consumer = |k: &rcgen::KeyPair| {
        json!({"jwt": {"iss": "es", "alg": "ES256", "public_key": k.public_key_pem()}}).to_string()
    };
    let token = |k: &rcgen::KeyPair, exp: u64| {
        let key = EncodingKey::from_ec_pem(k.serialize_pem().as_bytes()).unwrap();
        sign(
            Algorithm::ES256,
            &key,
            &json!({"iss": "es", "exp": exp}),
            None,
        )
    };
    c.put("/tollgate/consumers/es", &consumer(&old));
    let gw = start_gw("jwt-cache", &[etcd.endpoint()]);
    let status = |t: &str| {
        http_request(
            "GET",
            &gw.url("/jwt"),
            &[("authorization", &format!("Bearer {t}"))],
            None,
        )
        .map(|r| r.status)
        .unwrap_or(0)
    };
    let by_old = token(&old, now() + 600);
    wait_for("the old key's token", READY, || status(&by_old) == 200);
    assert_eq!(status(&by_old), 200, "remembered now");
    c.put("/tollgate/consumers/es", &consumer(&new));
    let by_new = token(&new, now() + 2);
    wait_for("the new key's token", READY, || status(&by_new) == 200);
    assert_eq!(
        status(&by_old),
        401,
        "the remembered token signed by the old key"
    );
    // Remembered, and still refused once its exp has passed.
    wait_for("the remembered token to expire", READY, || {
        status(&by_new) == 401
    });
    let r = http_request(
        "GET",
        &gw.url("/jwt"),
        &[("authorization", &format!("Bearer {by_new}"))],
        None,
    )
    .unwrap();
    assert_gateway_error(&r, 401, "token expired");
}
