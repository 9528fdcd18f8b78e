//! Client and upstream connection lifecycles on both proxy engines
//! (`proxy.engine: core | pingora`): graceful shutdown (idle connections
//! closed, the one in flight answered, a just-accepted one served), idle
//! and stalled clients given up after their timeouts, a refused request
//! costing no upstream connection, every framing passed through with both
//! connections reused, a departed client freeing its upstream connection,
//! and the idle upstream pool kept, bounded and never handing out a
//! connection the upstream closed.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::engines::{gateway, gateway_full, gateway_with, gw_get, post, ENGINES};
use common::raw_http::{
    connect, expect_closed, one_shot_backend, read_framed, read_response, scripted_backend, IO,
};
use testkit::{Backend, Mode, SIGTERM};

#[test]
fn sigterm_closes_idle_connections_and_ends_the_one_in_flight_after_its_answer() {
    for engine in ENGINES {
        let b = Backend::start("slow");
        let mut gw = gateway(engine, &[b.url()]);
        // An idle keep-alive connection...
        let mut idle = connect(gw.proxy_addr());
        let mut buf = Vec::new();
        idle.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (status, _, _) = read_response(&mut idle, &mut buf);
        assert_eq!(status, 200, "{engine}");
        // ...and a request in flight when the signal comes.
        b.set_mode(Mode::Stall(Duration::from_secs(6)));
        let mut busy = connect(gw.proxy_addr());
        let hits = b.hits();
        busy.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        testkit::wait_for("the request reaches the backend", IO, || b.hits() > hits);
        gw.signal(SIGTERM);
        // The idle connection is closed at once, not when the process ends.
        expect_closed(&mut idle, &format!("{engine}: the idle connection"));
        // ... while the request in flight still waits for its answer.
        busy.set_nonblocking(true).unwrap();
        let waiting = busy.peek(&mut [0u8; 1]);
        busy.set_nonblocking(false).unwrap();
        assert!(
            matches!(&waiting, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{engine}: the idle connection was closed only after the busy one was answered ({waiting:?})"
        );
        // The request in flight is answered, and told the connection ends.
        let mut buf = Vec::new();
        let (status, head, _) = read_response(&mut busy, &mut buf);
        assert_eq!(status, 200, "{engine}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{engine}: {head}"
        );
        assert_eq!(gw.wait_exit(IO), Some(0), "{engine}: exit after the drain");
    }
}

#[test]
fn idle_client_connections_are_closed_after_client_keepalive_secs() {
    for engine in ENGINES {
        let b = Backend::start("b");
        let gw = gateway_full(
            engine,
            &[b.url()],
            "",
            "proxy: { client_keepalive_secs: 1 }\n",
        );
        // One connection that never sends a request, one idle after its first.
        let mut silent = connect(gw.proxy_addr());
        let mut idle = connect(gw.proxy_addr());
        idle.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (status, head, _) = read_response(&mut idle, &mut Vec::new());
        assert_eq!(status, 200, "{engine}: {head}");
        // Each ends with the gateway closing it, well within the read
        // deadline (IO); Pingora alone keeps both open forever.
        for (name, c) in [("silent", &mut silent), ("idle", &mut idle)] {
            expect_closed(c, &format!("{engine}: the {name} connection"));
        }
    }
}

#[test]
fn a_client_that_stops_reading_is_given_up_after_client_timeout_secs() {
    for engine in ENGINES {
        // A response far larger than the socket buffers; the backend's
        // thread ends once the gateway hangs up on it.
        let (url, backend) = one_shot_backend(|mut s, _, _| {
            let total = 256usize << 20;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..total / chunk.len() {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        let gw = gateway_full(engine, &[url], "", "proxy: { client_timeout_secs: 1 }\n");
        // Asks, then never reads.
        let mut c = connect(gw.proxy_addr());
        c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // Without a client write timeout the gateway would wait on this
        // client, and the upstream on the gateway, forever.
        testkit::wait_for(
            &format!("{engine}: the gateway gives up on the client and the upstream"),
            IO,
            || backend.is_finished(),
        );
        backend.join().expect("backend");
        drop(c);
    }
}

#[test]
fn a_connection_accepted_before_sigterm_has_its_first_request_served() {
    for engine in ENGINES {
        let b = Backend::start("b");
        let mut gw = gateway(engine, &[b.url()]);
        // Connected, request not yet sent (a client between connect() and
        // write(), or a slow network) ...
        let mut late = connect(gw.proxy_addr());
        // ... and accepted: the listener accepts in order, so a request
        // answered on a later connection means `late` was taken too.
        let mut probe = connect(gw.proxy_addr());
        probe
            .write_all(b"GET /probe HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (status, _, _) = read_response(&mut probe, &mut Vec::new());
        assert_eq!(status, 200, "{engine}");

        gw.signal(SIGTERM);
        testkit::wait_for(&format!("{engine}: the listener closes"), IO, || {
            std::net::TcpStream::connect(gw.proxy_addr()).is_err()
        });
        // The listeners are closed and idle connections with them; the
        // request sent now is still served, and told the connection ends.
        late.write_all(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let (status, head, body) = read_response(&mut late, &mut buf);
        assert_eq!(status, 200, "{engine}: {head}");
        assert!(String::from_utf8_lossy(&body).contains("/late"), "{engine}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{engine}: {head}"
        );
        assert_eq!(gw.wait_exit(IO), Some(0), "{engine}: exit after the drain");
    }
}

#[test]
fn a_request_refused_for_its_connection_header_costs_no_upstream_connection() {
    for engine in ENGINES {
        // An upstream that must never be connected to.
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        upstream.set_nonblocking(true).unwrap();
        let url = format!("http://{}", upstream.local_addr().unwrap());
        let gw = gateway(engine, &[url]);
        for nominated in ["Host", "X-Forwarded-For", "bad token"] {
            let mut c = connect(gw.proxy_addr());
            c.write_all(
                format!("GET /x HTTP/1.1\r\nHost: x\r\nConnection: {nominated}\r\n\r\n").as_bytes(),
            )
            .unwrap();
            let (status, head, _) = read_response(&mut c, &mut Vec::new());
            assert_eq!(status, 400, "{engine}: Connection: {nominated}: {head}");
        }
        let accepted = upstream.accept();
        assert!(
            matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{engine}: the upstream was connected to for a refused request: {accepted:?}"
        );
    }
}

#[test]
fn every_framing_passes_through_and_both_connections_are_reused_when_clean() {
    use std::sync::atomic::Ordering;
    for engine in ENGINES {
        let (url, upstream_conns) = scripted_backend();
        let gw = gateway(engine, &[url]);
        let mut c = connect(gw.proxy_addr());
        let mut buf = Vec::new();
        let mut exchange = |req: &[u8], head_request: bool| {
            c.write_all(req).unwrap();
            read_framed(&mut c, &mut buf, head_request)
        };
        // One client connection throughout: each answer leaves it reusable.
        let (s, h, b) = exchange(b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n", false);
        assert_eq!(
            (s, b.as_slice()),
            (200, &b"hello world"[..]),
            "{engine}: {h}"
        );
        assert!(h.contains("transfer-encoding: chunked"), "{engine}: {h}");
        // HEAD, 204 and 304 carry no body, whatever their headers say.
        let (s, h, _) = exchange(b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n", true);
        assert_eq!(s, 200, "{engine}: {h}");
        assert!(h.contains("content-length: 100"), "{engine}: {h}");
        let (s, h, _) = exchange(b"GET /nocontent HTTP/1.1\r\nHost: x\r\n\r\n", false);
        assert_eq!(s, 204, "{engine}: {h}");
        let (s, h, _) = exchange(b"GET /notmod HTTP/1.1\r\nHost: x\r\n\r\n", false);
        assert_eq!(s, 304, "{engine}: {h}");
        // Request bodies, chunked and sized, arrive whole.
        let (s, h, b) = exchange(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n",
            false,
        );
        assert_eq!(
            (s, b.as_slice()),
            (200, &b"8:abcdefgh"[..]),
            "{engine}: {h}"
        );
        let (s, h, b) = exchange(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            false,
        );
        assert_eq!((s, b.as_slice()), (200, &b"5:hello"[..]), "{engine}: {h}");
        // So far one upstream connection, pooled between requests.
        assert_eq!(upstream_conns.load(Ordering::SeqCst), 1, "{engine}");
        // A body that ends with the upstream connection reaches the client
        // re-framed, and the client keeps its connection...
        let (s, h, b) = exchange(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n", false);
        assert_eq!(
            (s, b.as_slice()),
            (200, &b"streamed until close"[..]),
            "{engine}: {h}"
        );
        assert!(!h.contains("connection: close"), "{engine}: {h}");
        // ...while that upstream connection is not reused.
        let (s, h, b) = exchange(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n", false);
        assert_eq!((s, b.as_slice()), (200, &b"0:"[..]), "{engine}: {h}");
        assert_eq!(upstream_conns.load(Ordering::SeqCst), 2, "{engine}");
    }
}

#[test]
fn a_client_that_goes_away_frees_its_upstream_connection_at_once() {
    for engine in ENGINES {
        // Never answers; returns once the gateway hangs up.
        let (reached, reached_rx) = std::sync::mpsc::channel();
        let (url, backend) = one_shot_backend(move |mut s, _, _| {
            let _ = reached.send(());
            let mut tmp = [0u8; 1024];
            while matches!(s.read(&mut tmp), Ok(n) if n > 0) {}
        });
        // The upstream read timeout is far beyond the deadline below: only
        // noticing the client can free the upstream connection in time.
        let gw = gateway_with(engine, &[url], ", timeout: { read_ms: 120000 }");
        let mut c = connect(gw.proxy_addr());
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        reached_rx
            .recv_timeout(IO)
            .expect("the request reaches the upstream");
        drop(c);
        testkit::wait_for(
            &format!("{engine}: the gateway closes the upstream connection"),
            IO,
            || backend.is_finished(),
        );
        backend.join().expect("backend");
    }
}

#[test]
fn idle_upstream_connections_are_kept_up_to_keepalive_pool_and_reused() {
    for engine in ENGINES {
        let backend = Backend::start("b");
        // Slow enough that five requests at once need five connections.
        backend.set_mode(Mode::Stall(Duration::from_millis(300)));
        let gw = gateway_full(
            engine,
            &[backend.url()],
            "",
            "proxy: { keepalive_pool: 2 }\n",
        );
        let gw_ref = &gw;
        std::thread::scope(|s| {
            let answers: Vec<_> = (0..5)
                .map(|i| s.spawn(move || gw_get(gw_ref, &format!("/r{i}"))))
                .collect();
            for a in answers {
                assert_eq!(a.join().unwrap(), 200, "{engine}");
            }
        });
        assert_eq!(backend.hits(), 5, "{engine}");
        // Two are kept for reuse; the three over the bound are closed.
        testkit::wait_for(
            &format!("{engine}: the gateway to keep 2 idle upstream connections"),
            Duration::from_secs(5),
            || backend.open_connections() == 2,
        );
        // The next requests go over a kept one: no new connection.
        backend.set_mode(Mode::Normal);
        for i in 0..3 {
            assert_eq!(gw_get(&gw, &format!("/again{i}")), 200, "{engine}");
        }
        assert_eq!(backend.open_connections(), 2, "{engine}");
        assert_eq!(backend.hits(), 8, "{engine}");
    }
}

#[test]
fn an_idle_upstream_connection_the_upstream_closed_is_not_used() {
    for engine in ENGINES {
        let backend = Backend::start("b");
        let gw = gateway_full(engine, &[backend.url()], ", retry: { attempts: 0 }", "");
        assert_eq!(post(&gw, "/first"), 200, "{engine}");
        assert_eq!(backend.open_connections(), 1, "{engine}");
        // The upstream drops its connections (as one restarting does). A
        // POST is not retried once sent (and no retry is allowed): only a
        // gateway that saw the kept connection closed answers it 200.
        backend.set_mode(Mode::Refuse);
        testkit::wait_for(
            &format!("{engine}: the backend to drop its connections"),
            Duration::from_secs(5),
            || backend.open_connections() == 0,
        );
        backend.set_mode(Mode::Normal);
        for i in 0..3 {
            assert_eq!(post(&gw, &format!("/after{i}")), 200, "{engine}");
        }
        assert_eq!(backend.hits(), 4, "{engine}");
    }
}
