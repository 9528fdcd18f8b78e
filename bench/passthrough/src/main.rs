//! Bare Pingora passthrough: every request goes to one fixed upstream.
//!
//! This is the floor any Pingora-based gateway pays (accept, parse, pooled
//! upstream connection, forward, relay the response) with no routing, no
//! config snapshot and no plugins. `bench/proxy.sh` runs it beside nginx and
//! tollgate so tollgate's own overhead can be read off the difference.
//!
//! Usage: `passthrough --listen ADDR --upstream HOST:PORT [--threads N]
//! [--work-stealing true|false] [--timeouts true|false] [--engine proxy|core]`
//!
//! `--timeouts true` gives the upstream peer tollgate's default connect,
//! read, write and idle timeouts. Pingora arms a timer per pending read and
//! per pooled connection for them, so this variant shows how much of
//! tollgate's cost over the bare floor is those timers rather than routing.
//!
//! `--engine core` replaces pingora-proxy's `ProxyHttp` with a straight loop
//! on pingora-core (`core_loop.rs`), to measure what `ProxyHttp` itself
//! costs.

mod core_loop;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USAGE: &str = "usage: passthrough --listen ADDR --upstream HOST:PORT \
                     [--threads N] [--work-stealing true|false] [--timeouts true|false] \
                     [--engine proxy|core]";

/// Command line options, parsed by hand (no clap: keep the binary minimal).
#[derive(Debug)]
struct Args {
    listen: String,
    upstream: SocketAddr,
    threads: usize,
    work_stealing: bool,
    timeouts: bool,
    /// `ProxyHttp` (false) or the pingora-core loop (true).
    core: bool,
}

fn parse_bool(flag: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("{flag}: expected true or false, got {other:?}")),
    }
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut threads = 1usize;
    let mut work_stealing = true;
    let mut timeouts = false;
    let mut core = false;

    while let Some(arg) = argv.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| format!("{flag}: missing value"))
        };
        match flag.as_str() {
            "--listen" => listen = Some(value()?),
            "--upstream" => upstream = Some(value()?),
            "--threads" => {
                let v = value()?;
                threads =
                    v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("--threads: expected a positive integer, got {v:?}")
                    })?;
            }
            "--work-stealing" => work_stealing = parse_bool("--work-stealing", &value()?)?,
            "--timeouts" => timeouts = parse_bool("--timeouts", &value()?)?,
            "--engine" => {
                core = match value()?.as_str() {
                    "proxy" => false,
                    "core" => true,
                    other => {
                        return Err(format!("--engine: expected proxy or core, got {other:?}"))
                    }
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }

    let listen = listen.ok_or("--listen is required")?;
    let upstream = upstream.ok_or("--upstream is required")?;
    // Resolve once at start-up; the request path never touches DNS.
    let upstream = upstream
        .to_socket_addrs()
        .map_err(|e| format!("--upstream {upstream:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--upstream {upstream:?}: resolves to no address"))?;

    Ok(Args {
        listen,
        upstream,
        threads,
        work_stealing,
        timeouts,
        core,
    })
}

/// The proxy: one pre-built plain-HTTP peer, cloned per request.
struct Passthrough {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            if msg.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("passthrough: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let conf = ServerConf {
        threads: args.threads,
        work_stealing: args.work_stealing,
        // Benchmarks stop us with SIGTERM; do not linger in a grace period.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        // As tollgate: timeouts of a second or more on tokio's timer wheel.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut peer = HttpPeer::new(args.upstream, false, String::new());
    if args.timeouts {
        // tollgate's defaults (src/model/timeout.rs).
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.read_timeout = Some(Duration::from_secs(30));
        peer.options.write_timeout = Some(Duration::from_secs(30));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
    }
    if args.core {
        let mut service = pingora::services::listening::Service::new(
            "core".into(),
            core_loop::CoreLoop::new(peer),
        );
        service.add_tcp(&args.listen);
        server.add_service(service);
    } else {
        let mut service = http_proxy_service(&server.configuration, Passthrough { peer });
        service.add_tcp(&args.listen);
        server.add_service(service);
    }

    eprintln!(
        "passthrough: listening on {} -> {} (threads={}, work_stealing={}, timeouts={}, engine={})",
        args.listen,
        args.upstream,
        args.threads,
        args.work_stealing,
        args.timeouts,
        if args.core { "core" } else { "proxy" }
    );
    server.run_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_all_flags() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:8080",
            "--upstream=127.0.0.1:9000",
            "--threads",
            "2",
            "--work-stealing",
            "false",
            "--timeouts=true",
            "--engine",
            "core",
        ])
        .unwrap();
        assert_eq!(a.listen, "127.0.0.1:8080");
        assert_eq!(a.upstream, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(a.threads, 2);
        assert!(!a.work_stealing);
        assert!(a.timeouts);
        assert!(a.core);
    }

    #[test]
    fn defaults_and_errors() {
        let a = parse(&["--listen", "127.0.0.1:1", "--upstream", "127.0.0.1:2"]).unwrap();
        assert_eq!(a.threads, 1);
        assert!(a.work_stealing);
        assert!(!a.timeouts);
        assert!(!a.core);
        assert!(parse(&[
            "--listen",
            "x",
            "--upstream",
            "127.0.0.1:2",
            "--timeouts",
            "maybe"
        ])
        .is_err());
        assert!(parse(&["--listen", "127.0.0.1:1"]).is_err());
        assert!(parse(&["--upstream", "127.0.0.1:2"]).is_err());
        assert!(parse(&[
            "--listen",
            "x",
            "--upstream",
            "127.0.0.1:2",
            "--threads",
            "0"
        ])
        .is_err());
        assert!(parse(&["--listen", "x", "--upstream", "127.0.0.1:2", "--bogus"]).is_err());
        assert!(parse(&[
            "--listen",
            "x",
            "--upstream",
            "127.0.0.1:2",
            "--engine",
            "h3"
        ])
        .is_err());
        assert!(parse(&["--listen"]).is_err());
    }
}
