//! TLS termination: certificates from etcd (or the file) kept in the
//! published snapshot, chosen by SNI without a lock, keys optionally
//! stored encrypted.
//!
//! - `cert.rs`: a stored certificate made ready (parse, decrypt, match).
//! - `keyring.rs`: `enc:v1:` private keys (AES-256-GCM).
//! - `table.rs`: certificates by name (exact, wildcard), persistent.
//! - `resolver.rs`: rustls' certificate choice, from the table.
//! - `acceptor.rs`: the shared server config and the timed handshake.

mod acceptor;
pub mod cert;
pub mod keyring;
mod resolver;
mod table;
#[cfg(test)]
pub(crate) mod test_certs;
pub mod upstream;

pub use acceptor::{AcceptorError, ListenerTls, TlsAcceptor, TlsVersion};
pub use cert::LoadedCert;
pub use keyring::KeyRing;
pub use resolver::SniResolver;
pub use table::{CertTable, Overlap};
