mod common;
use common::*;
use std::time::{Duration, Instant};
use testkit::{raw_request, Backend, Mode};

#[test]
fn probe() {
    let b = Backend::start("b");
    let stall = Backend::start("stall");
    let close = Backend::start("close");
    let gw = start(&format!(
        "routes:\n- {{ id: r, paths: [\"/*rest\"], upstream: b }}\n- {{ id: s, paths: [\"/stall\"], upstream: s, timeout: {{read_ms: 300}} }}\n- {{ id: c, paths: [\"/close\"], upstream: c }}\nupstreams:\n{}{}{}",
        upstream("b", &[&b]), upstream("s", &[&stall]), upstream("c", &[&close])
    ));
    let addr = gw.proxy_addr();
    for (name, req) in [
        ("garbage", b"GARBAGE\r\n\r\n".to_vec()),
        ("garbage2", b"\x00\x01\x02 hello world\r\n\r\n".to_vec()),
        ("badversion", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("nohost", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        (
            "bad header",
            b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_vec(),
        ),
        (
            "ok",
            b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
    ] {
        let t = Instant::now();
        let out = raw_request(addr, &req, Duration::from_secs(5));
        eprintln!(
            "{name}: {:?} in {:?}: {:?}",
            out.len(),
            t.elapsed(),
            String::from_utf8_lossy(&out[..out.len().min(400)])
        );
    }
    for size in [60_000usize, 1_000_000, 2_000_000] {
        let mut req = b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat(b'a').take(size));
        req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let t = Instant::now();
        let out = raw_request(addr, &req, Duration::from_secs(5));
        eprintln!(
            "big {size}: {:?} in {:?}: {:?}",
            out.len(),
            t.elapsed(),
            String::from_utf8_lossy(&out[..out.len().min(400)])
        );
    }
    let t = Instant::now();
    let r = gw.request("GET", "/stall", &[], None);
    eprintln!("stall ok-mode: {r:?} {:?}", t.elapsed());
    stall.set_mode(Mode::Stall(Duration::from_secs(2)));
    let t = Instant::now();
    let r = gw.request("GET", "/stall", &[], None);
    eprintln!("stall: {r:?} {:?}", t.elapsed());
    close.set_mode(Mode::CloseMidResponse);
    for _ in 0..3 {
        let t = Instant::now();
        let r = gw.request("GET", "/close", &[], None);
        eprintln!("close: {r:?} {:?}", t.elapsed());
        let out = raw_request(
            addr,
            b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(3),
        );
        eprintln!("close raw: {:?}", String::from_utf8_lossy(&out));
    }
    eprintln!(
        "after: {:?}",
        gw.request("GET", "/x", &[], None).map(|r| r.status)
    );
    eprintln!("LOGS:\n{}", gw.logs());
}
