//! `ip-restriction {allow, deny}`: CIDR lists (a bare address is a /32 or
//! /128) on the client address as the trusted-proxy rules define it. A
//! deny match is refused; with an allow list, anything not on it is
//! refused, and so is a client whose address cannot be told. 403.

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;
use std::sync::Arc;

use super::{config, Flow, Plugin, PluginRequest, Reply};
use crate::field_error::{field, index, FieldError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Debug)]
struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

fn nets(list: &[String], at: &str) -> Result<Vec<IpNet>, FieldError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    FieldError::new(
                        index(at, i),
                        format!("{s:?} is not a CIDR or an IP address"),
                    )
                })
        })
        .collect()
}

pub fn compile(v: &Value, at: &str) -> Result<Arc<dyn Plugin>, FieldError> {
    let spec: Spec = config(v, at)?;
    if spec.allow.is_empty() && spec.deny.is_empty() {
        return Err(FieldError::new(at, "give allow, deny or both"));
    }
    Ok(Arc::new(IpRestriction {
        allow: nets(&spec.allow, &field(at, "allow"))?,
        deny: nets(&spec.deny, &field(at, "deny"))?,
    }))
}

impl IpRestriction {
    fn admits(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip.map(|ip| ip.to_canonical()) else {
            return self.allow.is_empty() && self.deny.is_empty();
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

impl Plugin for IpRestriction {
    fn edits_response(&self) -> bool {
        false
    }

    fn request(&self, req: &mut PluginRequest<'_>) -> Flow {
        if self.admits(req.client_ip) {
            Flow::Continue
        } else {
            Flow::Respond(Reply::error(403, "client address not allowed"))
        }
    }

    fn needs_client_ip(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(json: &str) -> IpRestriction {
        let spec: Spec = serde_json::from_str(json).unwrap();
        IpRestriction {
            allow: nets(&spec.allow, "allow").unwrap(),
            deny: nets(&spec.deny, "deny").unwrap(),
        }
    }

    #[test]
    fn deny_wins_allow_limits_and_unknown_clients_are_refused() {
        let p = plugin(r#"{"allow": ["10.0.0.0/8", "2001:db8::/32"], "deny": ["10.9.0.0/16"]}"#);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(p.admits(ip("10.1.2.3")));
        assert!(!p.admits(ip("10.9.2.3")));
        assert!(!p.admits(ip("192.168.1.1")));
        assert!(p.admits(ip("2001:db8::1")));
        // An IPv4 client seen on a dual-stack socket.
        assert!(p.admits(ip("::ffff:10.1.2.3")));
        assert!(!p.admits(None));
        let d = plugin(r#"{"deny": ["192.0.2.7"]}"#);
        assert!(!d.admits(ip("192.0.2.7")));
        assert!(d.admits(ip("192.0.2.8")));
    }

    #[test]
    fn bad_lists_name_the_entry() {
        let e = nets(&["10.0.0.0/8".into(), "ten".into()], "p.allow").unwrap_err();
        assert_eq!(e.path, "p.allow[1]");
        let e = compile(&serde_json::json!({}), "p").err().unwrap();
        assert!(e.message.contains("allow, deny"), "{e}");
    }
}
