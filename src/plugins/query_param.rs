//! A credential carried in a query parameter (key-auth's `query`,
//! jwt-auth's `query`): found by exact name, and taken out of the target
//! before the upstream sees it (`hide_credentials`).

use http::Uri;
use std::ops::Range;

/// The value of query parameter `name` in `query`, and its span.
pub fn param<'q>(query: &'q str, name: &str) -> Option<(&'q str, Range<usize>)> {
    let mut start = 0;
    for pair in query.split('&') {
        let end = start + pair.len();
        if let Some(v) = pair.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some((v, start..end));
        }
        start = end + 1;
    }
    None
}

/// `uri` without the query parameter at `span`.
pub fn without(uri: &Uri, span: Range<usize>) -> Option<Uri> {
    let q = uri.query()?;
    let mut rest = String::with_capacity(q.len());
    rest.push_str(q.get(..span.start)?);
    rest.push_str(q.get(span.end..)?);
    let rest = rest.trim_matches('&').replace("&&", "&");
    let target = if rest.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{rest}", uri.path())
    };
    target.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_is_found_by_its_exact_name_and_taken_out() {
        let q = "a=1&apikey=k3y&b=2";
        let (v, span) = param(q, "apikey").unwrap();
        assert_eq!(v, "k3y");
        let uri: Uri = format!("/x?{q}").parse().unwrap();
        assert_eq!(without(&uri, span).unwrap(), "/x?a=1&b=2");
        assert!(param("xapikey=1", "apikey").is_none());
        let uri: Uri = "/x?apikey=1".parse().unwrap();
        assert_eq!(
            without(&uri, param("apikey=1", "apikey").unwrap().1).unwrap(),
            "/x"
        );
    }
}
