//! systemd readiness notification (`Type=notify`) without libsystemd: one
//! datagram to the unix socket named by `$NOTIFY_SOCKET` (a path, or
//! `@name` for the abstract namespace), as sd_notify(3) does.
//!
//! What the daemon sends:
//! - `READY=1` + `MAINPID=<pid>` once the first snapshot is applied and the
//!   admin listener accepts connections. `MAINPID` is a no-op on a normal
//!   start; after `tollgate run --upgrade` (systemd `ExecReload`) it tells
//!   systemd that this process is now the service's main process (that
//!   needs `NotifyAccess=all`; see `systemd/tollgate.service`).
//! - `STOPPING=1` on SIGTERM / SIGINT. Never on SIGQUIT: that is the
//!   upgrade hand-over, and `STOPPING=1` would make systemd stop the whole
//!   service, the new process included.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd) all of this is a no-op.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::ffi::OsStr;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use crate::snapshot::SnapshotCell;

const ENV: &str = "NOTIFY_SOCKET";
/// How often the readiness watcher looks at the snapshot status.
const POLL: Duration = Duration::from_millis(50);

/// Sends `msg` (newline-separated `KEY=VALUE` lines) to the socket at
/// `socket`: a filesystem path, or `@name` for an abstract socket.
pub fn notify_to(socket: &OsStr, msg: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let sock = UnixDatagram::unbound()?;
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr)?
        }
        None if bytes.first() == Some(&b'/') => sock.send_to(msg.as_bytes(), socket)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ENV} must be an absolute path or @abstract, not {socket:?}"),
            ))
        }
    };
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to the notify socket",
        ));
    }
    Ok(())
}

/// Sends `msg` to `$NOTIFY_SOCKET`. `Ok(false)` when the variable is unset
/// (not started by systemd, or `NotifyAccess` denies this process).
pub fn notify(msg: &str) -> io::Result<bool> {
    match std::env::var_os(ENV) {
        Some(s) if !s.is_empty() => notify_to(&s, msg).map(|()| true),
        _ => Ok(false),
    }
}

/// Whether systemd (or anything else) asked for notifications.
pub fn wanted() -> bool {
    std::env::var_os(ENV).is_some_and(|s| !s.is_empty())
}

/// The `READY=1` message: also names this process as the main PID.
pub fn ready_message(status: &str) -> String {
    format!("READY=1\nMAINPID={}\nSTATUS={status}\n", std::process::id())
}

/// A loopback address to probe a listener on: `0.0.0.0` / `::` become
/// the loopback of the same family.
fn probe_addr(listen: &str) -> Option<SocketAddr> {
    let mut addr = listen.to_socket_addrs().ok()?.next()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(addr)
}

/// Starts a thread that sends `READY=1` once the first snapshot is applied
/// and `admin_listen` accepts TCP connections (Pingora binds its listeners
/// when `Server::run` starts the services, after this is called), then
/// exits. Does nothing when `$NOTIFY_SOCKET` is unset.
pub fn spawn_ready_watcher(cell: Arc<SnapshotCell>, admin_listen: String) {
    if !wanted() {
        return;
    }
    let probe = probe_addr(&admin_listen);
    let spawned = std::thread::Builder::new()
        .name("sd-notify".into())
        .spawn(move || {
            loop {
                let listening = probe.is_none_or(|a| TcpStream::connect_timeout(&a, POLL).is_ok());
                if cell.status.is_ready() && listening {
                    break;
                }
                std::thread::sleep(POLL);
            }
            let v = cell.status.view();
            let status = format!("serving revision {} ({} routes)", v.revision, v.routes);
            match notify(&ready_message(&status)) {
                Ok(_) => tracing::info!("notified systemd: READY=1"),
                Err(e) => tracing::warn!(error = %e, "cannot notify systemd (READY=1)"),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the systemd notify thread");
    }
}

/// Wraps the process's shutdown watcher to tell systemd `STOPPING=1` on a
/// terminate / fast shutdown (never on the SIGQUIT upgrade hand-over).
pub struct NotifyOnShutdown<W>(pub W);

#[async_trait]
impl<W: ShutdownSignalWatch + Send + Sync> ShutdownSignalWatch for NotifyOnShutdown<W> {
    async fn recv(&self) -> ShutdownSignal {
        let sig = self.0.recv().await;
        // Nothing on the upgrade hand-over: the old process is no longer
        // the main one, and its status would overwrite the new one's.
        if matches!(
            sig,
            ShutdownSignal::GracefulTerminate | ShutdownSignal::FastShutdown
        ) {
            if let Err(e) = notify("STOPPING=1\nSTATUS=shutting down\n") {
                tracing::warn!(error = %e, "cannot notify systemd");
            }
        }
        sig
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_ready_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("tollgate-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();

        notify_to(path.as_os_str(), &ready_message("ok")).unwrap();
        let got = recv(&sock);
        let lines: Vec<&str> = got.lines().collect();
        assert!(lines.contains(&"READY=1"), "{got:?}");
        let pid = format!("MAINPID={}", std::process::id());
        assert!(lines.contains(&pid.as_str()), "{got:?}");
        assert!(lines.contains(&"STATUS=ok"), "{got:?}");

        notify_to(path.as_os_str(), "STOPPING=1\n").unwrap();
        assert_eq!(recv(&sock), "STOPPING=1\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tollgate-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        let env = format!("@{name}");
        notify_to(OsStr::from_bytes(env.as_bytes()), "READY=1\n").unwrap();
        assert_eq!(recv(&sock), "READY=1\n");
    }

    #[test]
    fn refuses_a_relative_path_and_reports_a_missing_listener() {
        let e = notify_to(OsStr::new("relative.sock"), "READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(notify_to(OsStr::new("/nonexistent/tollgate/notify.sock"), "READY=1").is_err());
    }

    #[test]
    fn probes_loopback_for_wildcard_listeners() {
        assert_eq!(
            probe_addr("0.0.0.0:9180"),
            Some("127.0.0.1:9180".parse().unwrap())
        );
        assert_eq!(probe_addr("[::]:9180"), Some("[::1]:9180".parse().unwrap()));
        assert_eq!(
            probe_addr("127.0.0.2:1"),
            Some("127.0.0.2:1".parse().unwrap())
        );
    }
}
