//! Managed certificates: a cert entry's `acme` block (ordered from an ACME
//! CA by the fleet, RFC 8555) and the record of how ordering went.

use serde::{Deserialize, Serialize};

use super::error::field;
use super::FieldError;

/// `acme` in `<prefix>/certs/<id>`: where to order and as whom. Unset
/// fields take the bootstrap file's `acme` defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSpec {
    /// The CA's directory URL (RFC 8555 §7.1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// The account's contact address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Only `http-01`: answered by every node from etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
}

impl AcmeSpec {
    /// Checks the block (`at`: its path) and the names it is for.
    pub fn check(&self, at: &str, snis: &[String]) -> Result<(), FieldError> {
        if let Some(url) = &self.directory {
            check_directory_url(url).map_err(|why| {
                FieldError::new(field(at, "directory"), format!("{url:?}: {why}"))
            })?;
        }
        if let Some(email) = &self.email {
            check_email(email).map_err(|why| FieldError::new(field(at, "email"), why))?;
        }
        match self.challenge.as_deref() {
            None | Some("http-01") => {}
            Some(other) => {
                return Err(FieldError::new(
                    field(at, "challenge"),
                    format!(
                    "{other:?}: only \"http-01\" is supported (answered by every node from etcd)"
                ),
                ))
            }
        }
        if let Some(w) = snis.iter().find(|s| s.starts_with("*.")) {
            return Err(FieldError::new(
                "snis",
                format!("{w:?}: a wildcard cannot be validated by http-01 (it needs DNS-01); list the names"),
            ));
        }
        Ok(())
    }
}

/// A directory URL: absolute `https://` with a host and no credentials or
/// fragment; `http://` only to a loopback host (a CA on the same machine,
/// as in tests). An account key signs requests to whatever this names.
pub fn check_directory_url(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    let host = url.host().ok_or("has no host")?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a #fragment".into());
    }
    let loopback = match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(a) => a.is_loopback(),
        url::Host::Ipv6(a) => a.is_loopback(),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err("must be https:// (http:// only to a loopback CA)".into()),
        other => Err(format!("scheme {other:?}: must be https://")),
    }
}

fn check_email(email: &str) -> Result<(), String> {
    let ok = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && !email
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b',');
    if ok {
        Ok(())
    } else {
        Err(format!("{email:?}: not an email address"))
    }
}

/// A managed certificate as the fleet sees it: what to order, and the
/// validity of what is served now (None: nothing issued yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedCert {
    pub snis: Vec<String>,
    pub acme: AcmeSpec,
    /// (not_before, not_after) of the served certificate, Unix seconds.
    pub issued: Option<(i64, i64)>,
    /// Whether the served certificate names every `snis` entry (false
    /// after names were added: a new one is due at once).
    pub covers_snis: bool,
}

impl ManagedCert {
    /// Renewal is due at two thirds of the lifetime (Let's Encrypt's
    /// advice: 60 of 90 days), or now if nothing is issued.
    pub fn renew_at(&self) -> i64 {
        match self.issued {
            Some((nb, na)) if self.covers_snis => nb + (na - nb).max(0) * 2 / 3,
            _ => i64::MIN,
        }
    }
}

/// `<prefix>/acme/attempts/<cert>`: how ordering went, written by the node
/// that ordered, read by every node (`/status`, `tollgate_acme_failures`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct AcmeAttempt {
    /// Failed attempts in a row (0 after a success).
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Not before this (Unix ms): the back-off after a failure.
    #[serde(default)]
    pub next_attempt_unix_ms: u64,
    /// The node that ran the attempt.
    #[serde(default)]
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_unix_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_urls() {
        for good in [
            "https://acme-v02.api.letsencrypt.org/directory",
            "http://127.0.0.1:14000/dir",
            "http://localhost:4001/dir",
            "https://[::1]:14000/dir",
        ] {
            assert_eq!(check_directory_url(good), Ok(()), "{good}");
        }
        for bad in [
            "ftp://x/dir",
            "not a url",
            "https://user:pw@ca.example/dir",
            "http://example.com/dir",
            "https://ca.example/dir#x",
            "file:///etc/passwd",
        ] {
            assert!(check_directory_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_checks_name_the_field() {
        let snis = vec!["api.example.com".to_string()];
        let bad_dir = AcmeSpec {
            directory: Some("http://ca.example/dir".into()),
            ..Default::default()
        };
        assert_eq!(
            bad_dir.check("acme", &snis).unwrap_err().path,
            "acme.directory"
        );
        let bad_mail = AcmeSpec {
            email: Some("ops@example.com\r\nBcc: x".into()),
            ..Default::default()
        };
        assert_eq!(
            bad_mail.check("acme", &snis).unwrap_err().path,
            "acme.email"
        );
        let dns = AcmeSpec {
            challenge: Some("dns-01".into()),
            ..Default::default()
        };
        assert_eq!(dns.check("acme", &snis).unwrap_err().path, "acme.challenge");
        let wild = vec!["*.example.com".to_string()];
        assert_eq!(
            AcmeSpec::default().check("acme", &wild).unwrap_err().path,
            "snis"
        );
        assert_eq!(AcmeSpec::default().check("acme", &snis), Ok(()));
    }

    #[test]
    fn renewal_is_due_at_two_thirds() {
        let mut m = ManagedCert {
            snis: vec![],
            acme: AcmeSpec::default(),
            issued: None,
            covers_snis: false,
        };
        assert_eq!(m.renew_at(), i64::MIN);
        m.issued = Some((0, 90));
        assert_eq!(m.renew_at(), i64::MIN, "a name it does not cover: due now");
        m.covers_snis = true;
        assert_eq!(m.renew_at(), 60);
    }
}
