//! Counts the RST_STREAM frames a client sends, per second, by reading
//! the frame headers of the bytes on their way to the HTTP/2 codec.
//!
//! The h2 crate bounds streams reset *before* the server takes them up
//! (`max_pending_resets`), which is Rapid Reset against a server that
//! accepts lazily. Pingora accepts every stream at once and spawns its
//! request, so a client that opens and cancels streams at a steady pace
//! starts real work (routing, an upstream request) for each and is never
//! caught by that bound. Only the connection sees the frames, so the count
//! is taken here: the codec is not changed, the bytes pass untouched.

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const RST_STREAM: u8 = 0x3;
const WINDOW: Duration = Duration::from_secs(1);

/// Raised once when the client's resets pass the cap; the accept loop
/// waits on it and answers with GOAWAY.
#[derive(Default)]
pub struct ResetFlood {
    raised: AtomicBool,
    notify: Notify,
}

impl ResetFlood {
    fn raise(&self) {
        if !self.raised.swap(true, Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Relaxed)
    }

    /// Resolves once the cap has been passed.
    pub async fn raised(&self) {
        while !self.raised.load(Ordering::Relaxed) {
            self.notify.notified().await;
        }
    }
}

/// Where the reader is in the client's byte stream.
#[derive(Debug)]
struct FrameCursor {
    /// Preface bytes still to skip.
    preface_left: usize,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload_left: usize,
}

impl FrameCursor {
    fn new() -> Self {
        Self {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: 0,
        }
    }

    /// Walks `bytes`; returns how many RST_STREAM frame headers ended in it.
    fn feed(&mut self, mut bytes: &[u8]) -> u32 {
        let mut resets = 0;
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == FRAME_HEADER_LEN {
                    let h = self.header;
                    self.payload_left =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    self.header_len = 0;
                    if h[3] == RST_STREAM {
                        resets += 1;
                    }
                }
            }
        }
        resets
    }
}

/// A client connection speaking HTTP/2, with its resets counted.
#[derive(Debug)]
pub struct ResetMeter {
    inner: Stream,
    cursor: FrameCursor,
    /// Resets allowed per second.
    cap: u32,
    window_start: Option<Instant>,
    in_window: u32,
    flood: Arc<ResetFlood>,
}

impl std::fmt::Debug for ResetFlood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResetFlood")
            .field("raised", &self.raised.load(Ordering::Relaxed))
            .finish()
    }
}

impl ResetMeter {
    pub fn new(inner: Stream, cap: u32, flood: Arc<ResetFlood>) -> Self {
        Self {
            inner,
            cursor: FrameCursor::new(),
            cap,
            window_start: None,
            in_window: 0,
            flood,
        }
    }

    fn count(&mut self, resets: u32) {
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < WINDOW => {}
            _ => {
                self.window_start = Some(now);
                self.in_window = 0;
            }
        }
        self.in_window = self.in_window.saturating_add(resets);
        if self.in_window > self.cap {
            self.flood.raise();
        }
    }
}

impl AsyncRead for ResetMeter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let resets = self.cursor.feed(&buf.filled()[before..]);
            if resets > 0 {
                self.count(resets);
            }
        }
        polled
    }
}

impl AsyncWrite for ResetMeter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// Everything else is the connection's own.
#[async_trait]
impl Shutdown for ResetMeter {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for ResetMeter {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ResetMeter {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ResetMeter {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ResetMeter {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for ResetMeter {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for ResetMeter {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, len: usize) -> Vec<u8> {
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            0,
            0,
            0,
            0,
            1,
        ];
        f.extend(std::iter::repeat_n(0xAA, len));
        f
    }

    #[test]
    fn resets_are_found_whatever_the_read_boundaries() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 12)); // SETTINGS
        for _ in 0..5 {
            bytes.extend(frame(0x1, 30)); // HEADERS
            bytes.extend(frame(RST_STREAM, 4));
        }
        // A DATA frame whose payload looks like RST_STREAM headers.
        bytes.extend(frame(0x0, 0));
        let mut data = frame(0x0, 18);
        data[9..18].copy_from_slice(&frame(RST_STREAM, 0));
        data[18..27].copy_from_slice(&frame(RST_STREAM, 0));
        bytes.extend(data);
        for chunk in [1, 2, 7, 9, 10, 64, bytes.len()] {
            let mut cursor = FrameCursor::new();
            let found: u32 = bytes.chunks(chunk).map(|c| cursor.feed(c)).sum();
            assert_eq!(found, 5, "read in chunks of {chunk}");
        }
    }
}
