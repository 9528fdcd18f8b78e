//! `/.well-known/acme-challenge/<token>` (RFC 8555 §8.3), answered by any
//! node from the tokens the ACME orderer put in etcd: the CA's validation
//! request may reach whichever node its DNS name points at. Answered
//! before routing, on plain HTTP and TLS alike (a CA follows redirects to
//! https), and only while this gateway manages a certificate or validates a
//! token, so an application's own ACME client behind it keeps its path.

use bytes::Bytes;
use pingora::protocols::http::ServerSession;

use super::error_response::{self, Body};
use crate::snapshot::acme::AcmeView;
use crate::snapshot::SnapshotCell;

pub const PREFIX: &str = "/.well-known/acme-challenge/";

/// The gateway's answer to a challenge path, if it is the gateway's to
/// give: (status, body). A token is base64url (RFC 8555 §8.1); anything
/// else, or one not being validated, is 404: never echoed, never routed.
pub fn answer(view: &AcmeView, method: &str, path: &str) -> Option<(u16, Bytes)> {
    let token = path.strip_prefix(PREFIX)?;
    if !view.answers_challenges() {
        return None;
    }
    if method != "GET" && method != "HEAD" {
        return Some((405, Bytes::new()));
    }
    let well_formed = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match view.challenges.get(token).filter(|_| well_formed) {
        Some(key_authorization) => Some((200, Bytes::from(key_authorization.clone()))),
        None => Some((404, Bytes::new())),
    }
}

/// Answers a challenge path if it is the gateway's (true: answered).
pub async fn respond(cell: &SnapshotCell, session: &mut ServerSession, request_id: &str) -> bool {
    let acme = cell.acme.load();
    let req = session.req_header();
    let Some((status, body)) = answer(&acme, req.method.as_str(), req.uri.path()) else {
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

    fn view() -> AcmeView {
        let mut v = AcmeView::default();
        v.challenges
            .insert("tok-1_A".into(), "tok-1_A.thumb".into());
        v
    }

    #[test]
    fn known_tokens_answer_and_others_are_404() {
        let v = view();
        let p = |t: &str| format!("{PREFIX}{t}");
        assert_eq!(
            answer(&v, "GET", &p("tok-1_A")),
            Some((200, Bytes::from("tok-1_A.thumb")))
        );
        assert_eq!(answer(&v, "GET", &p("nope")).map(|a| a.0), Some(404));
        assert_eq!(answer(&v, "GET", &p("")).map(|a| a.0), Some(404));
        assert_eq!(answer(&v, "GET", &p("tok-1_A/x")).map(|a| a.0), Some(404));
        assert_eq!(answer(&v, "POST", &p("tok-1_A")).map(|a| a.0), Some(405));
        assert_eq!(answer(&v, "GET", "/other"), None);
    }

    #[test]
    fn a_gateway_with_nothing_managed_routes_the_path() {
        assert_eq!(
            answer(&AcmeView::default(), "GET", &format!("{PREFIX}x")),
            None
        );
        let mut managed = AcmeView::default();
        managed.managed.insert(
            "api".into(),
            ManagedCert {
                snis: vec!["a.example".into()],
                acme: AcmeSpec::default(),
                issued: None,
                covers_snis: false,
            },
        );
        assert_eq!(
            answer(&managed, "GET", &format!("{PREFIX}x")).map(|a| a.0),
            Some(404)
        );
    }
}
