//! A minimal HTTP/1.1 GET for health checks: connect, send, read the
//! status line. Used by active upstream checks and `tollgate register
//! --health-url`; a full client would be more code to trust, not less.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// True when `GET path` on `addr` answers 2xx within `timeout`.
pub async fn get_ok(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> bool {
    let check = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: tollgate-health\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut head = [0u8; 12];
        let mut n = 0;
        while n < head.len() {
            let read = s.read(&mut head[n..]).await?;
            if read == 0 {
                break;
            }
            n += read;
        }
        Ok::<bool, std::io::Error>(n == 12 && head.starts_with(b"HTTP/1.") && head[9] == b'2')
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Ok(true)))
}

/// [`get_ok`] for a URL (`http://host:port/path`), resolving the host.
pub async fn url_ok(url: &str, timeout: Duration) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return false;
    };
    let Ok(Some(addr)) = tokio::net::lookup_host((host, port))
        .await
        .map(|mut a| a.next())
    else {
        return false;
    };
    get_ok(
        addr,
        &format!("{host}:{port}"),
        &parsed[url::Position::BeforePath..],
        timeout,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(answer: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn only_2xx_is_healthy() {
        let ok = server(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let bad = server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let t = Duration::from_secs(2);
        assert!(get_ok(ok, "h", "/healthz", t).await);
        assert!(!get_ok(bad, "h", "/healthz", t).await);
        assert!(url_ok(&format!("http://{ok}/x"), t).await);
        assert!(!url_ok("not a url", t).await);
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!get_ok(closed, "h", "/", t).await);
    }
}
