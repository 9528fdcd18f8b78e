//! Integration-test harness for Tollgate: real etcd, real HTTP backends and
//! the real `tollgate` binary, no mocks.
//!
//! Everything here is blocking: tests are plain `#[test]` functions and the
//! harness runs its async parts on its own tokio runtime (see [`rt`]). Do not
//! call it from inside another tokio runtime. Everything binds free loopback
//! ports and uses temp dirs, so tests can run in parallel.

pub mod backend;
pub mod cli;
pub mod etcd;
pub mod gateway;
pub mod http_client;
pub mod pebble;
pub mod process;
pub mod relay;
pub mod rt;
pub mod wait;

pub use backend::{Backend, Mode};
pub use etcd::{Etcd, EtcdClient, EtcdCluster, KeptLease};
pub use gateway::Gateway;
pub use http_client::{http_get, http_request, raw_request, status_code, Resp};
pub use pebble::{Pebble, PebbleOptions};
pub use process::run_cmd;
pub use relay::Relay;
pub use wait::{free_port, wait_for};

/// Signal numbers for [`Gateway::signal`], so tests need no libc dependency.
pub use libc::{SIGHUP, SIGINT, SIGKILL, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
