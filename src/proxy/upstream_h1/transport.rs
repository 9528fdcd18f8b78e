//! What an upstream HTTP/1.1 connection runs over: a TCP socket the core
//! engine opened itself (a plain `http://` node), or pingora-core's stream
//! (TLS, and whatever its connector opened).
//!
//! pingora-core's stream is four layers deep (a boxed `dyn IO` over a
//! wrapper that times every read with two clock reads, over a buffered
//! reader and writer, over the socket): ~800 instructions a proxied
//! request on the upstream side alone (bench/README.md, "Per-core cost").
//! A plain node's connection needs none of it: each send (a request head,
//! a body piece, a chunk with its size line and end) is one vectored
//! write, and reads land in the exchange's own buffer.

use pingora::protocols::Stream;
use pingora::{Error, ErrorType::*, Result};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::proxy::vectored;

pub enum Transport {
    Tcp(TcpStream),
    Pingora(Stream),
}

impl Transport {
    /// A new TCP connection to a plain node, as pingora-core's connector
    /// makes one for such a peer (no delay, no TLS), its failures the
    /// error types that connector gives them (`ConnectTimedout` is what
    /// answers 504).
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let context = || format!("connecting to {addr}");
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| Error::because(InternalError, context(), e))?;
        let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
            Ok(connected) => {
                connected.map_err(|e| Error::because(connect_error(&e), context(), e))?
            }
            Err(_) => {
                return Err(Error::explain(
                    ConnectTimedout,
                    format!("timeout {timeout:?} connecting to {addr}"),
                ))
            }
        };
        stream
            .set_nodelay(true)
            .map_err(|e| Error::because(ConnectError, context(), e))?;
        Ok(Self::Tcp(stream))
    }

    /// Writes `pieces` whole and flushes them: one `writev` (one `send` for
    /// a single piece) on a socket of ours, pingora-core's buffered
    /// writer's single send otherwise.
    pub async fn send_all(&mut self, pieces: &[&[u8]]) -> io::Result<()> {
        match self {
            Self::Tcp(s) => vectored::write_all(s, pieces).await,
            Self::Pingora(s) => {
                vectored::write_all(s, pieces).await?;
                s.flush().await
            }
        }
    }
}

/// pingora-core's connector's error type for a failed connect (its
/// `l4::ext`, with the connector's own `BindError` → `InternalError`).
fn connect_error(e: &io::Error) -> pingora::ErrorType {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectRefused,
        io::ErrorKind::TimedOut => ConnectTimedout,
        io::ErrorKind::AddrNotAvailable
        | io::ErrorKind::PermissionDenied
        | io::ErrorKind::AddrInUse => InternalError,
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => ConnectNoRoute,
        _ => ConnectError,
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Pingora(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Pingora(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Pingora(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Pingora(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Pingora(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Pingora(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn pieces_arrive_whole_and_in_order_nothing_is_nothing() {
        rt().block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (conn, peer) = tokio::join!(
                Transport::connect(addr, Duration::from_secs(5)),
                listener.accept()
            );
            let (mut conn, mut peer) = (conn.unwrap(), peer.unwrap().0);
            conn.send_all(&[]).await.unwrap();
            conn.send_all(&[b"", b""]).await.unwrap();
            // Big enough that the socket takes it in several writes.
            let big = vec![b'x'; 4 << 20];
            let pieces: [&[u8]; 3] = [b"5\r\n", &big, b"\r\n"];
            let sent = async {
                conn.send_all(&pieces).await.unwrap();
                conn.send_all(&[b"a", b"", b"b", b"c", b"d", b"e"])
                    .await
                    .unwrap();
                drop(conn);
            };
            let mut got = Vec::new();
            let read = peer.read_to_end(&mut got);
            let ((), read) = tokio::join!(sent, read);
            read.unwrap();
            let mut want = b"5\r\n".to_vec();
            want.extend_from_slice(&big);
            want.extend_from_slice(b"\r\nabcde");
            assert!(got == want, "{} bytes, {} wanted", got.len(), want.len());
        });
    }

    #[test]
    fn a_refused_connect_is_connect_refused() {
        rt().block_on(async {
            let addr = TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap()
                .local_addr()
                .unwrap();
            // The listener is gone: nothing listens there.
            let e = Transport::connect(addr, Duration::from_secs(5))
                .await
                .err()
                .unwrap();
            assert_eq!(e.etype(), &ConnectRefused, "{e}");
        });
    }
}
