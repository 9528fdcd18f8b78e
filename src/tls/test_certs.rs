//! Certificates made at test time (never checked in).

use super::cert::{load, LoadedCert};
use super::keyring::KeyRing;
use crate::model::cert::CertSpec;

/// A self-signed ECDSA P-256 certificate for `snis`, as stored.
pub fn spec(snis: &[&str]) -> CertSpec {
    let names: Vec<String> = snis.iter().map(|s| s.to_string()).collect();
    let c = rcgen::generate_simple_self_signed(names.clone()).expect("rcgen");
    CertSpec {
        id: None,
        snis: names,
        cert: c.cert.pem(),
        key: c.key_pair.serialize_pem(),
        acme: None,
    }
}

pub fn self_signed(id: &str, snis: &[&str]) -> LoadedCert {
    load(id, &spec(snis), &KeyRing::new(&[]).expect("no keys"), "").expect("valid cert")
}
