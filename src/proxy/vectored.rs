//! Several pieces of a message (a head and a body piece, a chunk with its
//! size line and end) written with one vectored write instead of one
//! write each: a syscall, or a copy into a buffered writer, per piece
//! saved.

use std::io::{self, IoSlice};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes `pieces` whole, in order, without flushing: one `writev` when
/// the writer takes them all at once, one plain write when only one piece
/// has bytes.
pub async fn write_all<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    pieces: &[&[u8]],
) -> io::Result<()> {
    let mut full = pieces.iter().filter(|p| !p.is_empty());
    match (full.next(), full.next()) {
        // Nothing to send is not a writer that took nothing.
        (None, _) => return Ok(()),
        // One piece is a plain write: a socket's `send`, not a `writev`
        // of one slice (the kernel's vectored path costs more for it).
        (Some(piece), None) => return w.write_all(piece).await,
        _ => {}
    }
    let mut slices = [IoSlice::new(&[]); 4];
    if pieces.len() > slices.len() {
        for piece in pieces {
            w.write_all(piece).await?;
        }
        return Ok(());
    }
    for (slot, piece) in slices.iter_mut().zip(pieces) {
        *slot = IoSlice::new(piece);
    }
    let mut left = &mut slices[..pieces.len()];
    while !left.is_empty() {
        let n = w.write_vectored(left).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut left, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Takes at most 3 bytes a write, from the first non-empty slice only
    /// (what a writer without vectored writes does), counting the writes.
    #[derive(Default)]
    struct Stingy {
        got: Vec<u8>,
        writes: usize,
    }

    impl AsyncWrite for Stingy {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(3);
            self.got.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_resume_where_they_stopped_across_pieces() {
        let mut w = Stingy::default();
        write_all(&mut w, &[b"HTTP/1.1", b"", b"\r\n", b"body"])
            .await
            .unwrap();
        assert_eq!(w.got, b"HTTP/1.1\r\nbody");
        // More pieces than one vectored write holds: one piece at a time.
        let mut w = Stingy::default();
        write_all(&mut w, &[b"a", b"b", b"c", b"d", b"e"])
            .await
            .unwrap();
        assert_eq!(w.got, b"abcde");
        // Nothing is no write at all.
        let mut w = Stingy::default();
        write_all(&mut w, &[b"", b""]).await.unwrap();
        assert_eq!(w.writes, 0);
    }

    /// Takes everything, counting plain and vectored writes.
    #[derive(Default)]
    struct Counting {
        got: Vec<u8>,
        plain: usize,
        vectored: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.got.extend_from_slice(buf);
            self.plain += 1;
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let n = bufs.iter().map(|b| b.len()).sum();
            for b in bufs {
                self.got.extend_from_slice(b);
            }
            self.vectored += 1;
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn one_piece_is_a_plain_write_and_more_one_vectored_write() {
        // A head without a body (the empty piece beside it) is one `send`.
        let mut w = Counting::default();
        write_all(&mut w, &[b"", b"GET / HTTP/1.1\r\n\r\n", b""])
            .await
            .unwrap();
        assert_eq!(
            (w.got.as_slice(), w.plain, w.vectored),
            (&b"GET / HTTP/1.1\r\n\r\n"[..], 1, 0)
        );
        // A head and a body piece: one `writev`.
        let mut w = Counting::default();
        write_all(&mut w, &[b"HTTP/1.1 200 OK\r\n\r\n", b"ok"])
            .await
            .unwrap();
        assert_eq!(
            (w.got.as_slice(), w.plain, w.vectored),
            (&b"HTTP/1.1 200 OK\r\n\r\nok"[..], 0, 1)
        );
    }

    #[tokio::test]
    async fn a_writer_that_takes_nothing_is_an_error_not_a_loop() {
        struct Full;
        impl AsyncWrite for Full {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(0))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let e = write_all(&mut Full, &[b"x", b"y"]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }
}
