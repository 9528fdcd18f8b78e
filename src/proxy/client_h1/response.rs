//! Writing the response of a plain request, as pingora-core's HTTP/1
//! session writes it but for a kept connection's `Connection: keep-alive`,
//! which HTTP/1.1 implies: `Date` set on the final header, `Connection:
//! close` when the connection ends after it, the body framed by that
//! header (`Content-Length`, chunked, or until the connection closes,
//! which ends keep-alive), nothing after a `HEAD`, `204` or `304` header,
//! interim (`1xx`) headers sent at once.

use http::{Method, StatusCode};
use pingora::http::ResponseHeader;
use pingora::protocols::http::date::get_cached_date;
use pingora::time::fast_timeout::fast_timeout;
use pingora::{Error, ErrorType, Result};
use std::future::Future;
use tokio::io::AsyncWriteExt;

use super::{ClientH1, Keepalive};
use crate::proxy::framing::chunk_size_line;
use crate::proxy::header_names::{self, write_line};
use crate::proxy::hop_by_hop;
use crate::proxy::vectored;

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOut {
    /// No final header yet.
    Unset,
    /// This many bytes in all, that many written.
    Length(usize, usize),
    Chunked,
    UntilClose,
    /// Ended (or never had one).
    Done,
}

/// What a response's framing fields declare, gathered while they are
/// written.
#[derive(Debug, PartialEq, Eq)]
pub struct Declared<'a> {
    /// The length every `Content-Length` value agrees on (`5` and `5, 5`
    /// alike); `Err` if they disagree or one is not a number.
    length: Result<Option<usize>, ()>,
    /// The last `Transfer-Encoding` field.
    coding: Option<&'a [u8]>,
}

impl Default for Declared<'_> {
    fn default() -> Self {
        Self {
            length: Ok(None),
            coding: None,
        }
    }
}

impl<'a> Declared<'a> {
    fn add_length(&mut self, value: &[u8]) {
        for part in value.split(|&b| b == b',') {
            let digits = part.trim_ascii();
            let n = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<usize>().ok())
                .flatten();
            self.length = match (&self.length, n) {
                (Ok(None), Some(n)) => Ok(Some(n)),
                (Ok(Some(l)), Some(n)) if *l == n => Ok(Some(n)),
                _ => Err(()),
            };
        }
    }

    /// Whether the last coding is `chunked` (pingora-core's rule).
    fn chunked(&self) -> bool {
        self.coding.is_some_and(|v| {
            let last = v.rsplit(|&b| b == b',').next().unwrap_or(v);
            last.trim_ascii().eq_ignore_ascii_case(b"chunked")
        })
    }

    /// The body framing of a final response to `method` (pingora-core's
    /// `init_body_writer`).
    fn framing(&self, status: StatusCode, method: &Method) -> BodyOut {
        if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
            || *method == Method::HEAD
        {
            return BodyOut::Done;
        }
        if self.chunked() {
            return BodyOut::Chunked;
        }
        match self.length {
            Ok(Some(0)) => BodyOut::Done,
            Ok(Some(n)) => BodyOut::Length(n, 0),
            Ok(None) | Err(()) => BodyOut::UntilClose,
        }
    }
}

/// Whether a final head's field is tollgate's own to write (`Date`) or
/// describes a connection rather than the message (`Connection`, which
/// tollgate writes, `Keep-Alive`, …): the map a plugin or the cache hands
/// over may carry one.
fn connections_own(name: &[u8]) -> bool {
    header_names::is(name, "date") || hop_by_hop::is_connections_own(name)
}

/// A final response head to write from an upstream's bytes rather than a
/// header map: its status line, its fields as the upstream sent them, and
/// the gateway's own fields, which replace any of the same name.
pub struct RawHead<'a, 'o, F> {
    pub status: StatusCode,
    pub reason: Option<&'a [u8]>,
    pub fields: F,
    pub ours: &'o [(&'o str, &'o [u8])],
}

/// Writes `fields` (but for a final header what is tollgate's to set or
/// the upstream connection's, [`connections_own`], and any of `ours`),
/// then `ours`; returns what the framing fields declare.
fn write_fields<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ours: &[(&str, &[u8])],
    last: bool,
    wire: &mut Vec<u8>,
) -> Declared<'a> {
    let mut declared = Declared::default();
    for (name, value) in fields {
        if header_names::is(name, "content-length") {
            declared.add_length(value);
        } else if header_names::is(name, "transfer-encoding") {
            declared.coding = Some(value);
        } else if (last && connections_own(name))
            || ours.iter().any(|(n, _)| header_names::is(name, n))
        {
            continue;
        }
        write_line(wire, name, value);
    }
    for (name, value) in ours {
        write_line(wire, name.as_bytes(), value);
    }
    declared
}

/// `resp`'s fields, the client's case where it has one, as [`write_fields`].
fn write_header_fields<'a>(
    resp: &'a ResponseHeader,
    last: bool,
    wire: &mut Vec<u8>,
) -> Declared<'a> {
    if resp.has_case() {
        let fields = resp.case_header_iter();
        write_fields(
            fields.map(|(n, v)| (n.as_slice(), v.as_bytes())),
            &[],
            last,
            wire,
        )
    } else {
        let fields = resp.headers.iter();
        write_fields(
            fields.map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            &[],
            last,
            wire,
        )
    }
}

/// The status line: HTTP/1.1 whatever the upstream spoke, as nginx
/// answers (the version is the connection's, RFC 9110 §2.5, and this one
/// is tollgate's: an upstream's `HTTP/1.0` would have a client close a
/// connection the gateway keeps).
fn status_line(wire: &mut Vec<u8>, status: StatusCode, reason: Option<&[u8]>) {
    wire.extend_from_slice(b"HTTP/1.1 ");
    wire.extend_from_slice(status.as_str().as_bytes());
    wire.push(b' ');
    if let Some(reason) = reason {
        wire.extend_from_slice(reason);
    }
    wire.extend_from_slice(b"\r\n");
}

/// A header that ends the interim ones (a final one, or a `101`).
fn is_last(status: StatusCode) -> bool {
    !status.is_informational() || status == StatusCode::SWITCHING_PROTOCOLS
}

impl ClientH1 {
    /// Whether a final header went out already (another is not sent).
    fn final_sent(&self) -> bool {
        let sent = self
            .response
            .as_ref()
            .is_some_and(|r| !r.status.is_informational());
        if sent {
            tracing::warn!("response header already sent, not sending another");
        }
        sent
    }

    pub(super) async fn send_header(&mut self, resp: Box<ResponseHeader>) -> Result<()> {
        if self.final_sent() {
            return Ok(());
        }
        let last = is_last(resp.status);
        let mut wire = std::mem::take(&mut self.wire);
        wire.clear();
        let reason = resp.get_reason_phrase().map(str::as_bytes);
        status_line(&mut wire, resp.status, reason);
        let declared = write_header_fields(&resp, last, &mut wire);
        let body = self.settle(&declared, resp.status, last);
        self.send_head(wire, last, body, resp).await
    }

    /// A final header written from an upstream's bytes ([`RawHead`]).
    /// The session keeps a header with the status only: what reads the
    /// response afterwards (logs, metrics, retries) reads its status.
    pub(super) async fn send_raw_header<'a>(
        &mut self,
        head: RawHead<'a, '_, impl Iterator<Item = (&'a [u8], &'a [u8])>>,
    ) -> Result<()> {
        if self.final_sent() {
            return Ok(());
        }
        let last = is_last(head.status);
        let mut wire = std::mem::take(&mut self.wire);
        wire.clear();
        status_line(&mut wire, head.status, head.reason);
        let declared = write_fields(head.fields, head.ours, last, &mut wire);
        let body = self.settle(&declared, head.status, last);
        let resp = match self.status_only.take() {
            Some(mut resp) => {
                resp.set_status(head.status)?;
                resp.set_reason_phrase(None)?;
                resp.set_version(http::Version::HTTP_11);
                resp
            }
            None => {
                let mut parts = http::Response::new(()).into_parts().0;
                parts.status = head.status;
                Box::new(ResponseHeader::from(parts))
            }
        };
        self.send_head(wire, last, body, resp).await
    }

    /// The body's framing after a header that declared `declared`.
    fn settle(&self, declared: &Declared, status: StatusCode, last: bool) -> BodyOut {
        if last {
            declared.framing(status, &self.req.method)
        } else {
            self.body
        }
    }

    /// Ends a head begun in `wire` (a final one with our `Date`, and our
    /// `Connection: close` when the connection ends), sends it (or leaves
    /// it to go out with the body's first bytes) and keeps `resp` as the
    /// response sent.
    async fn send_head(
        &mut self,
        mut wire: Vec<u8>,
        last: bool,
        body: BodyOut,
        resp: Box<ResponseHeader>,
    ) -> Result<()> {
        if last {
            self.body = body;
            if self.body == BodyOut::UntilClose {
                // Only the connection's end ends such a body.
                self.keepalive = Keepalive::Off;
            }
            wire.extend_from_slice(b"Date: ");
            wire.extend_from_slice(get_cached_date().as_bytes());
            // The codec serves HTTP/1.1 only, which keeps a connection
            // unless a side says `close`: `keep-alive` would be 24 bytes
            // every response and every client parses for nothing (HAProxy,
            // Envoy and Go's server leave it out too).
            wire.extend_from_slice(if self.will_keepalive() {
                b"\r\n"
            } else {
                b"\r\nConnection: close\r\n"
            });
        }
        wire.extend_from_slice(b"\r\n");
        self.wire = wire;
        self.head_pending = true;
        // Sent at once unless a known length of body follows (pingora-core's
        // rule: a body without one may be a live stream); then with the
        // body's first bytes, in one write.
        if !(last && matches!(self.body, BodyOut::Length(..))) {
            self.flush().await?;
        }
        self.response = Some(resp);
        Ok(())
    }

    /// One piece of the body, framed (bytes past a `Content-Length` are
    /// dropped, as pingora-core drops them).
    pub(super) async fn send_body(&mut self, data: &[u8]) -> Result<()> {
        let n = match self.body {
            BodyOut::Length(total, written) => {
                let n = data.len().min(total - written);
                self.body = BodyOut::Length(total, written + n);
                // Written once, even if this write fails.
                let head_pending = std::mem::replace(&mut self.head_pending, false);
                let head: &[u8] = if head_pending { &self.wire } else { b"" };
                let pieces = [head, &data[..n]];
                let write = vectored::write_all(&mut self.stream, &pieces);
                Self::within(self.write_timeout, write).await?;
                if written + n >= total {
                    self.flush().await?;
                }
                n
            }
            BodyOut::Chunked => {
                if data.is_empty() {
                    return Ok(());
                }
                let mut size = [0u8; 18];
                let size = chunk_size_line(data.len(), &mut size);
                let stream = &mut self.stream;
                let write = async {
                    vectored::write_all(stream, &[size, data, b"\r\n"]).await?;
                    stream.flush().await
                };
                Self::within(self.write_timeout, write).await?;
                data.len()
            }
            BodyOut::UntilClose => {
                let stream = &mut self.stream;
                let write = async {
                    stream.write_all(data).await?;
                    stream.flush().await
                };
                Self::within(self.write_timeout, write).await?;
                data.len()
            }
            BodyOut::Unset | BodyOut::Done => 0,
        };
        self.body_bytes_sent += n;
        Ok(())
    }

    /// A piece of the body (none when empty), then its end when `end`.
    pub(super) async fn send_piece(&mut self, data: &[u8], end: bool) -> Result<()> {
        if !data.is_empty() {
            self.send_body(data).await?;
        }
        if end {
            self.end_body().await?;
        }
        Ok(())
    }

    /// Ends the body: the last chunk, the flush. A `Content-Length` body
    /// ended short is an error (the client sees a cut response).
    pub(super) async fn end_body(&mut self) -> Result<()> {
        let body = std::mem::replace(&mut self.body, BodyOut::Done);
        match body {
            BodyOut::Chunked => {
                let stream = &mut self.stream;
                let write = async {
                    stream.write_all(b"0\r\n\r\n").await?;
                    stream.flush().await
                };
                Self::within(self.write_timeout, write).await?;
            }
            BodyOut::Length(total, written) if written < total => {
                // The client saw a cut response: the connection ends with it.
                self.keepalive = Keepalive::Off;
                self.flush().await?;
                return Error::e_explain(
                    ErrorType::H1Error,
                    format!("Content-Length {total}, {written} bytes written"),
                );
            }
            // Flushed when their last byte was written (or, for no body,
            // with the header): nothing is left to flush.
            BodyOut::Length(..) | BodyOut::Done => {}
            BodyOut::UntilClose => self.flush().await?,
            BodyOut::Unset => self.body = BodyOut::Unset,
        }
        Ok(())
    }

    /// Writes a head still pending (once, even if the write fails), then
    /// flushes.
    pub(super) async fn flush(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.head_pending, false) {
            let written = self.stream.write_all(&self.wire).await;
            written
                .map_err(|e| Error::because(ErrorType::WriteError, "writing response header", e))?;
        }
        self.stream
            .flush()
            .await
            .map_err(|e| Error::because(ErrorType::WriteError, "flushing the response", e))
    }

    /// A write, bounded by the write timeout if there is one (pingora's
    /// timer, made only if the write has to wait).
    async fn within(
        timeout: Option<std::time::Duration>,
        write: impl Future<Output = std::io::Result<()>>,
    ) -> Result<()> {
        match timeout {
            Some(t) => fast_timeout(t, write).await.map_err(|_| {
                Error::explain(ErrorType::WriteTimedout, "writing the response body")
            })?,
            None => write.await,
        }
        .map_err(|e| Error::because(ErrorType::WriteError, "writing the response body", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(pairs: &[(&str, &str)]) -> (Vec<u8>, BodyOut) {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (k, v) in pairs {
            resp.append_header(k.to_string(), *v).unwrap();
        }
        let mut wire = Vec::new();
        let framing =
            write_header_fields(&resp, true, &mut wire).framing(resp.status, &Method::GET);
        (wire, framing)
    }

    #[test]
    fn response_framing_is_read_as_pingora_reads_it() {
        let framing = |pairs: &[(&str, &str)]| declared(pairs).1;
        assert_eq!(framing(&[]), BodyOut::UntilClose);
        assert_eq!(framing(&[("Content-Length", "5")]), BodyOut::Length(5, 0));
        assert_eq!(
            framing(&[("content-length", "5, 5")]),
            BodyOut::Length(5, 0)
        );
        assert_eq!(framing(&[("content-length", "0")]), BodyOut::Done);
        let two = [("content-length", "5"), ("content-length", "6")];
        assert_eq!(framing(&two), BodyOut::UntilClose);
        assert_eq!(framing(&[("content-length", "+5")]), BodyOut::UntilClose);
        let te = [
            ("transfer-encoding", "gzip, Chunked"),
            ("content-length", "5"),
        ];
        assert_eq!(framing(&te), BodyOut::Chunked);
        let last = [("transfer-encoding", "chunked, gzip")];
        assert_eq!(framing(&last), BodyOut::UntilClose);
    }

    #[test]
    fn fields_keep_their_case_and_date_and_connection_are_ours() {
        let (wire, _) = declared(&[
            ("X-Mixed", "a"),
            ("date", "then"),
            ("Connection", "close"),
            ("Keep-Alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("content-length", "1"),
        ]);
        assert_eq!(wire, b"X-Mixed: a\r\ncontent-length: 1\r\n");
    }

    /// A response head written from the upstream's bytes with `ours`, and
    /// from its header map edited as the gateway edits it, as lines (name
    /// lowercased) in the order each writes them, with what each declared.
    fn both_ways(wire: &str, ours: &[(&str, &[u8])]) -> [(Vec<(String, String)>, BodyOut); 2] {
        use crate::proxy::upstream_h1::{parse_head, Asked};
        let head = parse_head(
            &mut bytes::BytesMut::from(wire.as_bytes()),
            Asked::default(),
        )
        .unwrap()
        .unwrap();
        let lines = |wire: &[u8]| -> Vec<(String, String)> {
            String::from_utf8_lossy(wire)
                .split("\r\n")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (n, v) = l.split_once(": ").unwrap();
                    (n.to_ascii_lowercase(), v.to_string())
                })
                .collect()
        };
        let mut direct = Vec::new();
        let framing = write_fields(head.fields().unwrap(), ours, true, &mut direct)
            .framing(head.status, &Method::GET);
        let mut header = head.header().unwrap();
        crate::proxy::header_edit::edit_response(&mut header, ours.len(), |p| {
            for (name, value) in ours {
                p.headers.insert(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_bytes(value).unwrap(),
                );
            }
        });
        let mut built = Vec::new();
        let built_framing =
            write_header_fields(&header, true, &mut built).framing(header.status, &Method::GET);
        assert_eq!(head.reason(), header.get_reason_phrase().map(str::as_bytes));
        [(lines(&direct), framing), (lines(&built), built_framing)]
    }

    #[test]
    fn a_head_from_the_upstreams_bytes_is_the_one_its_header_map_writes() {
        let ours: [(&str, &[u8]); 2] = [("x-request-id", b"abc"), ("x-ratelimit-limit", b"10")];
        for wire in [
            "HTTP/1.1 200 OK\r\nServer: o\r\nContent-Length: 2\r\n\r\n",
            // Ours replace the upstream's, Date and Connection are ours.
            "HTTP/1.1 200 OK\r\nX-Request-Id: spoof\r\nDate: then\r\nconnection: close\r\n\
             X-RateLimit-Limit: 1\r\nContent-Length: 0\r\n\r\n",
            // Duplicates, each kept in its order; a name's case.
            "HTTP/1.1 404 Not Here\r\nSet-Cookie: a\r\nVary: x\r\nset-cookie: b\r\n\
             Content-Length: 3, 3\r\n\r\n",
            // Transfer-Encoding wins over Content-Length, which is not sent.
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 1\r\n\r\n",
            "HTTP/1.1 200 \r\nX-Obs: caf\u{e9}\r\nContent-Length: 1\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ] {
            let [(direct, framing), (built, built_framing)] = both_ways(wire, &ours);
            assert_eq!(framing, built_framing, "{wire}");
            // The map groups a name's lines together; each name's values
            // are in the same order either way.
            let by_name = |mut l: Vec<(String, String)>| {
                l.sort_by(|a, b| a.0.cmp(&b.0));
                l
            };
            assert_eq!(by_name(direct.clone()), by_name(built), "{wire}");
            assert_eq!(
                direct.iter().filter(|(n, _)| n == "x-request-id").count(),
                1
            );
            assert!(!direct.iter().any(|(n, _)| n == "date" || n == "connection"));
        }
        // The upstream's order (the map's groups Set-Cookie's lines).
        let [(direct, _), _] = both_ways(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a\r\nVary: x\r\nset-cookie: b\r\nContent-Length: 0\r\n\r\n",
            &[],
        );
        let names: Vec<_> = direct.iter().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(
            names,
            ["set-cookie=a", "vary=x", "set-cookie=b", "content-length=0"]
        );
    }
}
