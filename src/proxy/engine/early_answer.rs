//! A request-body write that gives way to the upstream's answer.
//!
//! An upstream that refuses an upload (413) often stops reading it: once
//! the socket buffers fill, the next write to it waits, and a proxy that
//! only reads the response between writes waits with it, until the write
//! timeout (pingora-proxy's halves do; 30 s by default). pingora-core's
//! `HttpSession` owns both directions and cannot be split, so while a write
//! is stuck this watches the socket itself (a duplicate of its descriptor
//! on tokio's reactor): when the upstream starts answering, the write is
//! abandoned and the answer is read. The connection is not reused then.
//!
//! Costs nothing when the write completes at once (the usual case); a dup
//! and a reactor registration when it does not.

use std::future::{poll_fn, Future};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::pin::pin;
use std::task::Poll;

use pingora::protocols::http::v1::client::HttpSession as Upstream;
use pingora::protocols::UniqueID;
use pingora::Result;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Writes `data` upstream: `Ok(true)` when written, `Ok(false)` when the
/// upstream began to answer while the write was stuck (the write was
/// abandoned part-way: send nothing more on this connection).
pub(super) async fn write_unless_answered(up: &mut Upstream, data: &[u8]) -> Result<bool> {
    let fd = up.id();
    let mut write = pin!(up.write_body(data));
    let first = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    if let Poll::Ready(written) = first {
        return written.map(|_| true);
    }
    let Some(answer) = watch_readable(fd) else {
        return write.await.map(|_| true);
    };
    tokio::select! {
        biased;
        written = &mut write => written.map(|_| true),
        _ = answer.readable() => Ok(false),
    }
}

/// The upstream socket, duplicated and registered for readability.
fn watch_readable(fd: i32) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is the upstream connection's descriptor, open while the
    // caller's session (borrowed by the pending write) lives; it is only
    // duplicated here, and the duplicate is ours to close.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().ok()?;
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, so its descriptor
    // stays open and the same until the `AsyncFd` drops (and closes) it.
    unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }.ok()
}
