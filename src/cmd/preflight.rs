//! Checks made before the server starts, so that a machine-level problem
//! fails the start at once with a message naming the setting.
//!
//! Pingora binds its listeners only once the services start, and on
//! "address in use" it retries for 30 s, then panics the service's thread
//! while the rest of the process runs on (a gateway without its admin
//! listener, or without its proxy). A daemon whose port is taken should
//! instead exit non-zero, naming the address, as nginx and Envoy do.

use std::net::TcpListener;

use crate::config::Bootstrap;

/// Binds every listen address of `b` (proxy and admin), all at once, then
/// releases them. Skipped on `--upgrade`: there the sockets are handed over
/// by the running process, which still holds them.
///
/// A port taken between this check and Pingora's own bind is still possible,
/// but it is a window of microseconds, not the whole life of the process.
pub fn listeners_are_free(b: &Bootstrap) -> anyhow::Result<()> {
    let mut held = Vec::new();
    for (field, addr) in b.listen_addresses() {
        match TcpListener::bind(addr) {
            Ok(l) => held.push(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
                "{field}: {addr} is already in use by another process (address already in use)"
            ),
            Err(e) => anyhow::bail!("{field}: cannot listen on {addr}: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap(listen: &[&str], admin: &str) -> Bootstrap {
        let mut b: Bootstrap = serde_yaml_ng::from_str("{}").unwrap();
        b.listen = listen
            .iter()
            .map(|s| crate::config::Listener::plain(*s))
            .collect();
        b.admin.listen = admin.to_string();
        b
    }

    #[test]
    fn free_addresses_pass_and_stay_free() {
        let b = bootstrap(&["127.0.0.1:0", "127.0.0.1:0"], "127.0.0.1:0");
        listeners_are_free(&b).unwrap();
        // Nothing is kept: the same check passes again.
        listeners_are_free(&b).unwrap();
    }

    #[test]
    fn a_taken_port_names_the_field_and_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = listeners_are_free(&bootstrap(&["127.0.0.1:0"], &addr)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("admin.listen: "), "{msg}");
        assert!(
            msg.contains(&addr) && msg.contains("already in use"),
            "{msg}"
        );

        let b = bootstrap(&["127.0.0.1:0", &addr], "127.0.0.1:0");
        let msg = listeners_are_free(&b).unwrap_err().to_string();
        assert!(msg.starts_with("listen[1]: "), "{msg}");
    }

    #[test]
    fn an_address_not_on_this_host_is_refused() {
        // TEST-NET-1 (RFC 5737) is never a local address.
        let msg = listeners_are_free(&bootstrap(&["192.0.2.1:8080"], "127.0.0.1:0"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("listen[0]: cannot listen on 192.0.2.1:8080"),
            "{msg}"
        );
    }
}
