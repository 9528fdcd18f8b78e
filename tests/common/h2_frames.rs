//! Hand-made HTTP/2 frames, for what no well-behaved client sends: rapid
//! resets, CONTINUATION floods. Only what those tests need.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
/// RST_STREAM / GOAWAY error codes.
pub const CANCEL: u32 = 0x8;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK block for `GET <path>` to `authority`, http scheme: indexed
/// `:method GET`, `:scheme http`, literal `:path` and `:authority`
/// without indexing.
pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    for (index, value) in [(4u8, path), (1u8, authority)] {
        b.push(index); // literal without indexing, indexed name (4-bit prefix)
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// [`get_block`] with `:method HEAD` (a literal: HEAD has no static entry).
pub fn head_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x02, 4];
    b.extend_from_slice(b"HEAD");
    b.extend_from_slice(&get_block(authority, path)[1..]);
    b
}

/// A client connection: preface and an empty SETTINGS sent, and a reader
/// thread noting any GOAWAY (its error code) and the close.
pub struct RawH2 {
    pub stream: TcpStream,
    pub goaway: Arc<AtomicU32>,
    pub closed: Arc<AtomicBool>,
    /// HEADERS frames received: responses begun.
    pub responses: Arc<AtomicU32>,
    /// Frames that ended a stream (`END_STREAM`), and DATA bytes received.
    pub ended: Arc<AtomicU32>,
    pub data_bytes: Arc<AtomicU32>,
}

/// No GOAWAY seen yet.
pub const NO_GOAWAY: u32 = u32::MAX;

impl RawH2 {
    pub fn connect(addr: SocketAddr) -> RawH2 {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(PREFACE).unwrap();
        stream.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
        let goaway = Arc::new(AtomicU32::new(NO_GOAWAY));
        let closed = Arc::new(AtomicBool::new(false));
        let mut reader = stream.try_clone().unwrap();
        let responses = Arc::new(AtomicU32::new(0));
        let ended = Arc::new(AtomicU32::new(0));
        let data_bytes = Arc::new(AtomicU32::new(0));
        let (g, c, r) = (goaway.clone(), closed.clone(), responses.clone());
        let (e, d) = (ended.clone(), data_bytes.clone());
        std::thread::spawn(move || {
            let mut head = [0u8; 9];
            loop {
                if reader.read_exact(&mut head).is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; len];
                if reader.read_exact(&mut payload).is_err() {
                    break;
                }
                if head[3] == HEADERS {
                    r.fetch_add(1, Ordering::SeqCst);
                }
                if head[3] == DATA {
                    d.fetch_add(len as u32, Ordering::SeqCst);
                }
                if matches!(head[3], HEADERS | DATA) && head[4] & END_STREAM != 0 {
                    e.fetch_add(1, Ordering::SeqCst);
                }
                if head[3] == GOAWAY && payload.len() >= 8 {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    g.store(code, Ordering::SeqCst);
                }
            }
            c.store(true, Ordering::SeqCst);
        });
        RawH2 {
            stream,
            goaway,
            closed,
            responses,
            ended,
            data_bytes,
        }
    }

    /// Sends bytes; false once the gateway has closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    pub fn goaway_code(&self) -> Option<u32> {
        let c = self.goaway.load(Ordering::SeqCst);
        (c != NO_GOAWAY).then_some(c)
    }

    pub fn responses(&self) -> u32 {
        self.responses.load(Ordering::SeqCst)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}
