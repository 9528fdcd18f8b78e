//! `/.well-known/acme-challenge/<token>` (RFC 8555 §8.3), answered by any
//! node from the tokens the ACME orderer put in etcd: the CA's validation
//! request may reach whichever node its DNS name points at. Answered
//! before routing, on plain HTTP and TLS alike (a CA follows redirects to
//! https). A token being validated is answered for any host; an unknown
//! one is 404 only for a name the fleet manages, and routes like any path
//! for other hosts, so an application behind the gateway that gets its own
//! certificates keeps its challenge path.

use bytes::Bytes;
use pingora::protocols::http::ServerSession;

use super::error_response::{self, Body};
use crate::snapshot::acme::AcmeView;
use crate::snapshot::SnapshotCell;

pub const PREFIX: &str = "/.well-known/acme-challenge/";

/// The gateway's answer to a challenge path on `host`, if it is the
/// gateway's to give: (status, body). A token is base64url (RFC 8555
/// §8.1); anything else, or one not being validated, is never echoed.
pub fn answer(view: &AcmeView, method: &str, host: &str, path: &str) -> Option<(u16, Bytes)> {
    let token = path.strip_prefix(PREFIX)?;
    if !view.answers_challenges() {
        return None;
    }
    let well_formed = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let known = view.challenges.get(token).filter(|_| well_formed);
    if known.is_none() && !manages(view, host) {
        return None;
    }
    if method != "GET" && method != "HEAD" {
        return Some((405, Bytes::new()));
    }
    match known {
        Some(key_authorization) => Some((200, Bytes::from(key_authorization.clone()))),
        None => Some((404, Bytes::new())),
    }
}

/// Whether `host` (a Host header; port, case and a final dot aside) is a
/// name of a managed certificate.
fn manages(view: &AcmeView, host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_end_matches('.');
    (view.managed.values()).any(|m| m.snis.iter().any(|s| s.eq_ignore_ascii_case(name)))
}

/// Answers a challenge path if it is the gateway's (true: answered).
pub async fn respond(cell: &SnapshotCell, session: &mut ServerSession, request_id: &str) -> bool {
    let acme = cell.acme.load();
    let req = session.req_header();
    let host = super::forwarding::host_of(req);
    let Some((status, body)) = answer(&acme, req.method.as_str(), host, req.uri.path()) else {
        return false;
    };
    let body = if status == 200 {
        Body::Raw(body)
    } else {
        Body::Empty
    };
    error_response::respond_edited(session, status, body, request_id, |_, resp| {
        let _ = resp.insert_header("content-type", "text/plain");
    })
    .await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::acme::{AcmeSpec, ManagedCert};

    fn managing(names: &[&str]) -> AcmeView {
        let mut v = AcmeView::default();
        v.managed.insert(
            "api".into(),
            ManagedCert {
                snis: names.iter().map(|n| n.to_string()).collect(),
                acme: AcmeSpec::default(),
                issued: None,
                covers_snis: false,
            },
        );
        v
    }

    #[test]
    fn known_tokens_answer_and_others_are_404_on_managed_names() {
        let mut v = managing(&["a.example"]);
        v.challenges
            .insert("tok-1_A".into(), "tok-1_A.thumb".into());
        let p = |t: &str| format!("{PREFIX}{t}");
        let ok = Some((200, Bytes::from("tok-1_A.thumb")));
        assert_eq!(answer(&v, "GET", "any.host", &p("tok-1_A")), ok);
        for host in ["a.example", "A.Example:80", "a.example."] {
            for bad in ["nope", "", "tok-1_A/x"] {
                let got = answer(&v, "GET", host, &p(bad)).map(|a| a.0);
                assert_eq!(got, Some(404), "{host} {bad}");
            }
        }
        let post = answer(&v, "POST", "a.example", &p("tok-1_A")).map(|a| a.0);
        assert_eq!(post, Some(405));
        assert_eq!(answer(&v, "GET", "a.example", "/other"), None);
        // Another host's unknown token is routed (its application's own).
        assert_eq!(answer(&v, "GET", "app.example", &p("nope")), None);
    }

    #[test]
    fn a_gateway_with_nothing_managed_routes_the_path() {
        let path = format!("{PREFIX}x");
        assert_eq!(
            answer(&AcmeView::default(), "GET", "a.example", &path),
            None
        );
        let got = answer(&managing(&["a.example"]), "GET", "a.example", &path);
        assert_eq!(got.map(|a| a.0), Some(404));
    }
}
