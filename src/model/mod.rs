//! What operators write: routes, upstream policies and registered
//! instances, with validation that names the bad field. Nothing here knows
//! where a value came from (file or etcd) or how it is served.

pub mod acme;
pub mod cache;
pub mod cert;
pub mod consumer;
pub mod error;
pub mod header_policy;
pub mod instance;
pub mod path_policy;
pub mod pattern;
pub mod pem;
pub mod policy;
pub mod preservation;
pub mod rate_limit;
pub mod route;
pub mod settings;
pub mod timeout;
pub mod upstream;
pub mod upstream_tls;

pub use error::FieldError;
pub use route::{Route, RouteSpec};
pub use timeout::{TimeoutSpec, Timeouts};
pub use upstream::{Node, UpstreamSpec};
