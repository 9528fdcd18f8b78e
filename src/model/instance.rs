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
        (j.addr, check_weight(j.weight.unwrap_or(1))?, j.draining)
    } else {
        (text.to_string(), 1, false)
    };
    let (addr, authority) = parse_node_url(&url)?;
    Ok(Node {
        id: id.to_string(),
        addr,
        authority,
        weight,
        draining,
    })
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
    }
}
