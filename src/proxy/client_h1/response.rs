//! Writing the response of a plain request, as pingora-core's HTTP/1
//! session writes it: `Date` and `Connection` set on the final header,
//! the body framed by that header (`Content-Length`, chunked, or until the
//! connection closes, which ends keep-alive), nothing after a `HEAD`, `204`
//! or `304` header, interim (`1xx`) headers sent at once.

use http::{header, Method, StatusCode};
use pingora::http::ResponseHeader;
use pingora::protocols::http::date::get_cached_date;
use pingora::time::fast_timeout::fast_timeout;
use pingora::{Error, ErrorType, Result};
use std::future::Future;
use tokio::io::AsyncWriteExt;

use super::{ClientH1, Keepalive};
use crate::proxy::framing::chunk_size_line;

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

/// Writes `resp`'s fields (the client's case where it has one), but for a
/// final header its own `Date` and `Connection`, which are tollgate's to
/// set; returns what its framing fields declare.
fn write_fields<'a>(resp: &'a ResponseHeader, last: bool, wire: &mut Vec<u8>) -> Declared<'a> {
    let mut declared = Declared::default();
    let mut field = |name: &http::HeaderName, spelled: &[u8], value: &'a http::HeaderValue| {
        if *name == header::CONTENT_LENGTH {
            declared.add_length(value.as_bytes());
        } else if *name == header::TRANSFER_ENCODING {
            declared.coding = Some(value.as_bytes());
        } else if last && (*name == header::DATE || *name == header::CONNECTION) {
            return;
        }
        wire.extend_from_slice(spelled);
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value.as_bytes());
        wire.extend_from_slice(b"\r\n");
    };
    if resp.has_case() {
        for ((name, value), (spelled, _)) in resp.headers.iter().zip(resp.case_header_iter()) {
            field(name, spelled.as_slice(), value);
        }
    } else {
        for (name, value) in resp.headers.iter() {
            field(name, name.as_str().as_bytes(), value);
        }
    }
    declared
}

impl ClientH1 {
    pub(super) async fn send_header(&mut self, resp: Box<ResponseHeader>) -> Result<()> {
        let last =
            !resp.status.is_informational() || resp.status == StatusCode::SWITCHING_PROTOCOLS;
        if self
            .response
            .as_ref()
            .is_some_and(|r| !r.status.is_informational())
        {
            tracing::warn!("response header already sent, not sending another");
            return Ok(());
        }
        let mut wire = std::mem::take(&mut self.wire);
        wire.clear();
        let version = match resp.version {
            http::Version::HTTP_10 => "HTTP/1.0 ",
            http::Version::HTTP_09 => "HTTP/0.9 ",
            _ => "HTTP/1.1 ",
        };
        wire.extend_from_slice(version.as_bytes());
        wire.extend_from_slice(resp.status.as_str().as_bytes());
        wire.push(b' ');
        if let Some(reason) = resp.get_reason_phrase() {
            wire.extend_from_slice(reason.as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        let declared = write_fields(&resp, last, &mut wire);
        let has_length = declared.length != Ok(None);
        if last {
            self.body = declared.framing(resp.status, &self.req.method);
            if self.body == BodyOut::UntilClose {
                // Only the connection's end ends such a body.
                self.keepalive = Keepalive::Off;
            }
            wire.extend_from_slice(b"Date: ");
            wire.extend_from_slice(get_cached_date().as_bytes());
            wire.extend_from_slice(if self.will_keepalive() {
                b"\r\nConnection: keep-alive\r\n"
            } else {
                b"\r\nConnection: close\r\n"
            });
        }
        wire.extend_from_slice(b"\r\n");
        let written = self.stream.write_all(&wire).await;
        self.wire = wire;
        written.map_err(|e| Error::because(ErrorType::WriteError, "writing response header", e))?;
        // Sent at once unless a known length of body follows (pingora-core's
        // rule: a body without one may be a live stream).
        if !last || !has_length || self.body == BodyOut::Done {
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
                Self::within(self.write_timeout, self.stream.write_all(&data[..n])).await?;
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
                    stream.write_all(size).await?;
                    stream.write_all(data).await?;
                    stream.write_all(b"\r\n").await?;
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

    async fn flush(&mut self) -> Result<()> {
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
        let framing = write_fields(&resp, true, &mut wire).framing(resp.status, &Method::GET);
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
            ("content-length", "1"),
        ]);
        assert_eq!(wire, b"X-Mixed: a\r\ncontent-length: 1\r\n");
    }
}
