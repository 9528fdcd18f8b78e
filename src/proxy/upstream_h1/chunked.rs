//! A chunked response body (RFC 9112 §7.1), decoded in place: data is
//! split off the connection's read buffer, never copied; chunk sizes,
//! extensions and trailers are consumed and dropped (HTTP/1.1 clients are
//! sent the body re-framed by the server session, without trailers).
//!
//! Every length is bounded: a size line or the trailers past their limit
//! are an error rather than an ever-growing buffer, and a size that does
//! not fit in 64 bits is refused by the parser.

use bytes::{Bytes, BytesMut};

/// The longest chunk-size line (size and extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// The most trailer bytes accepted (they are discarded).
const MAX_TRAILERS: usize = 64 * 1024;

/// Where the decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes to go.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines (this many bytes so far) until
    /// an empty one.
    Trailers(usize),
    /// The body ended.
    Done,
}

/// What one [`Chunked::step`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A piece of the body.
    Data(Bytes),
    /// The buffer holds no more to decode: read more.
    NeedMore,
    /// The body ended (bytes after it stay in the buffer).
    Done,
}

/// A malformed chunked body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkedError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk size line longer than {MAX_SIZE_LINE} bytes")]
    SizeLineTooLong,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("trailers longer than {MAX_TRAILERS} bytes")]
    TrailersTooLong,
}

impl Chunked {
    /// Decodes from the front of `buf` until a piece of data or the end,
    /// consuming the framing.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkedError> {
        loop {
            match *self {
                Chunked::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        let _ = buf.split_to(used);
                        *self = Chunked::Trailers(0);
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = buf.split_to(used);
                        *self = Chunked::Data(size);
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_SIZE_LINE => {
                        return Err(ChunkedError::SizeLineTooLong)
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::NeedMore),
                    Err(_) => return Err(ChunkedError::Size),
                },
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let (n, rest) = super::take(left, buf.len());
                    *self = if rest == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(rest)
                    };
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkedError::DataEnd);
                    }
                    let _ = buf.split_to(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers(seen) => {
                    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
                        if seen + buf.len() > MAX_TRAILERS {
                            return Err(ChunkedError::TrailersTooLong);
                        }
                        return Ok(Step::NeedMore);
                    };
                    let empty = lf == 0 || (lf == 1 && buf[0] == b'\r');
                    let _ = buf.split_to(lf + 1);
                    if empty {
                        *self = Chunked::Done;
                    } else if seen + lf + 1 > MAX_TRAILERS {
                        return Err(ChunkedError::TrailersTooLong);
                    } else {
                        *self = Chunked::Trailers(seen + lf + 1);
                    }
                }
                Chunked::Done => return Ok(Step::Done),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body `wire` decodes to when fed `piece` bytes at a time, and
    /// what is left in the buffer after its end.
    fn decode(wire: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkedError> {
        let mut st = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match st.step(&mut buf)? {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::Done => return Ok((body, buf.to_vec())),
                Step::NeedMore => {
                    assert!(fed < wire.len(), "ran out of input");
                    let end = (fed + piece).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn decodes_the_same_body_however_the_bytes_arrive() {
        let wire =
            b"5\r\nhello\r\n1;ext=\"a b\"\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 64] {
            let (body, rest) = decode(wire, piece).unwrap();
            assert_eq!(body, b"hello 0123456789", "piece {piece}");
            // Bytes after the body stay for the caller (not reusable).
            assert!(b"NEXT".starts_with(&rest), "piece {piece}: {rest:?}");
        }
    }

    #[test]
    fn an_empty_body_is_the_last_chunk_alone() {
        assert_eq!(decode(b"0\r\n\r\n", 1).unwrap(), (vec![], vec![]));
    }

    #[test]
    fn malformed_framing_is_an_error_not_a_guess() {
        assert_eq!(decode(b"zz\r\n", 64), Err(ChunkedError::Size));
        assert_eq!(decode(b"-1\r\n", 64), Err(ChunkedError::Size));
        // Overflowing 64 bits.
        assert_eq!(
            decode(b"1ffffffffffffffff\r\n", 64),
            Err(ChunkedError::Size)
        );
        // Data longer than its size says.
        assert_eq!(decode(b"2\r\nabc\r\n", 64), Err(ChunkedError::DataEnd));
    }

    #[test]
    fn endless_size_lines_and_trailers_are_bounded() {
        let mut line = b"5;".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE + 10));
        assert_eq!(decode(&line, 1024), Err(ChunkedError::SizeLineTooLong));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..(MAX_TRAILERS / 8 + 1) {
            trailers.extend_from_slice(b"X-T: 1\r\n");
        }
        assert_eq!(decode(&trailers, 4096), Err(ChunkedError::TrailersTooLong));
        let mut endless = b"0\r\nX: ".to_vec();
        endless.extend(std::iter::repeat_n(b'a', MAX_TRAILERS + 10));
        assert_eq!(decode(&endless, 4096), Err(ChunkedError::TrailersTooLong));
    }
}
