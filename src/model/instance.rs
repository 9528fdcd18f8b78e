//! Registered service instances: the values under `/services/<service>/<id>`.

use serde::Deserialize;

use super::upstream::{check_weight, parse_node_url, Node};

/// The JSON form of a registration; the plain-URL form is `addr` alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceJson {
    addr: String,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    draining: bool,
    /// Where the gateway probes this instance (on its own address) if its
    /// lease expires in a mass expiry (self-preservation).
    #[serde(default)]
    health_path: Option<String>,
    /// Free-form labels; kept for operators, not used for routing yet.
    #[serde(default)]
    #[allow(dead_code)]
    meta: serde_json::Map<String, serde_json::Value>,
}

/// Parses a registry value: `http://10.0.0.1:8080` or
/// `{"addr":…,"weight":…,"draining":…,"meta":{…}}`.
pub fn parse_instance(id: &str, value: &[u8]) -> Result<Node, String> {
    let text = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_string())?;
    let text = text.trim();
    let (url, weight, draining) = if text.starts_with('{') {
        let j: InstanceJson =
            serde_json::from_str(text).map_err(|e| format!("bad instance JSON: {e}"))?;
        if let Some(p) = &j.health_path {
            check_health_path(p)?;
        }
        (j.addr, check_weight(j.weight.unwrap_or(1))?, j.draining)
    } else {
        (text.to_string(), 1, false)
    };
    let u = parse_node_url(&url)?;
    Ok(Node {
        id: id.to_string(),
        addr: u.addr,
        authority: u.authority,
        weight,
        draining,
        scheme: u.scheme,
    })
}

/// A probe path: absolute, and nothing that could end the request line.
fn check_health_path(p: &str) -> Result<(), String> {
    if p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(format!(
            "health_path {p:?} must start with '/' and hold no spaces or control bytes"
        ))
    }
}

/// The `health_path` of an accepted registry value, if it has one.
pub fn health_path(value: &str) -> Option<String> {
    let text = value.trim();
    if !text.starts_with('{') {
        return None;
    }
    serde_json::from_str::<InstanceJson>(text)
        .ok()
        .and_then(|j| j.health_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse() {
        let n = parse_instance("a", b"http://127.0.0.1:8080").unwrap();
        assert_eq!((n.addr.port(), n.weight, n.draining), (8080, 1, false));
        let n = parse_instance(
            "b",
            br#"{"addr":"http://127.0.0.1:8081","weight":5,"draining":true,"meta":{"zone":"a"}}"#,
        )
        .unwrap();
        assert_eq!((n.addr.port(), n.weight, n.draining), (8081, 5, true));
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse_instance("a", b"garbage").is_err());
        assert!(parse_instance("a", br#"{"addr":"http://127.0.0.1:1","weight":0}"#).is_err());
        assert!(parse_instance("a", br#"{"weight":1}"#).is_err());
        assert!(parse_instance("a", &[0xff, 0xfe]).is_err());
        // A typo is named, not read as the default weight.
        let e = parse_instance("a", br#"{"addr":"http://127.0.0.1:1","wieght":5}"#).unwrap_err();
        assert!(e.contains("unknown field `wieght`"), "{e}");
        // A probe path cannot smuggle a second request line or a host.
        for bad in [r#""healthz""#, r#""/h\r\nHost: x""#, r#""/a b""#] {
            let v = format!(r#"{{"addr":"http://127.0.0.1:1","health_path":{bad}}}"#);
            let e = parse_instance("a", v.as_bytes()).unwrap_err();
            assert!(e.contains("health_path"), "{e}");
        }
    }

    #[test]
    fn the_probe_path_is_read_from_the_json_form_only() {
        let v = r#"{"addr":"http://127.0.0.1:1","health_path":"/healthz"}"#;
        parse_instance("a", v.as_bytes()).unwrap();
        assert_eq!(health_path(v).as_deref(), Some("/healthz"));
        assert_eq!(health_path("http://127.0.0.1:1"), None);
    }
}
