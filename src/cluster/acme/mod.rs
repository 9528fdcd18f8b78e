//! Managed certificates (ACME, RFC 8555): the protocol client and the
//! fleet-wide orderer that runs it under an etcd lock.

pub mod client;
pub mod error;
pub mod manager;
mod transport;

/// The bootstrap file's `acme` defaults.
pub type Defaults = crate::config::AcmeConfig;
