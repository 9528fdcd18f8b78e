//! ACME orders against a real CA: Debian's pebble (testkit::Pebble), with
//! this test's own HTTP-01 responder on the port pebble validates on. The
//! responder answers from an in-memory map, and that map is the
//! [`ChallengeBoard`] the client publishes to.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use testkit::{free_port, Pebble, PebbleOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tollgate::cluster::acme::client::{AcmeClient, AcmeError, ChallengeBoard, Directory};

const DEADLINE: Duration = Duration::from_secs(60);

/// The test's board: publish puts the token in the map the responder reads
/// (unless `publishes` is false: a board that says it did but did not).
#[derive(Default)]
struct MapBoard {
    publishes: bool,
    tokens: Mutex<HashMap<String, String>>,
    published: Mutex<Vec<String>>,
    withdrawn: Mutex<Vec<String>>,
}

impl MapBoard {
    fn new(publishes: bool) -> Arc<MapBoard> {
        Arc::new(MapBoard {
            publishes,
            ..MapBoard::default()
        })
    }
}

#[async_trait::async_trait]
impl ChallengeBoard for MapBoard {
    async fn publish(&self, token: &str, key_authorization: &str) -> anyhow::Result<()> {
        self.published.lock().unwrap().push(token.to_string());
        if self.publishes {
            self.tokens
                .lock()
                .unwrap()
                .insert(token.to_string(), key_authorization.to_string());
        }
        Ok(())
    }

    async fn withdraw(&self, token: &str) {
        self.withdrawn.lock().unwrap().push(token.to_string());
        self.tokens.lock().unwrap().remove(token);
    }
}

/// A minimal HTTP/1.1 responder on 127.0.0.1:`port`: GET
/// /.well-known/acme-challenge/<token> answers the board's key
/// authorization, anything else 404.
async fn serve_challenges(port: u16, board: Arc<MapBoard>) {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the HTTP-01 port");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let board = board.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let answer = path
                    .strip_prefix("/.well-known/acme-challenge/")
                    .and_then(|t| board.tokens.lock().unwrap().get(t).cloned());
                let response = match answer {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string(),
                };
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
}

/// Pebble plus a responder, and a runtime for the async client.
struct Ca {
    rt: Runtime,
    pebble: Pebble,
    url: String,
    roots: PathBuf,
}

impl Ca {
    fn start(board: Arc<MapBoard>) -> Ca {
        Ca::start_with(board, PebbleOptions::default())
    }

    fn start_with(board: Arc<MapBoard>, opts: PebbleOptions) -> Ca {
        let port = free_port();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(serve_challenges(port, board));
        let pebble = Pebble::start_with(port, opts);
        let (url, roots) = (pebble.directory_url(), pebble.tls_roots_pem());
        Ca {
            rt,
            pebble,
            url,
            roots,
        }
    }

    fn dir(&self) -> Directory<'_> {
        Directory {
            url: &self.url,
            email: Some("ops@test.example"),
            tls_roots_pem: Some(&self.roots),
        }
    }

    fn create(&self) -> (AcmeClient, String) {
        self.rt
            .block_on(AcmeClient::create(&self.dir()))
            .expect("create an account")
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The leaf's DNS SANs, and the chain verified (names included) against
/// pebble's issuing root.
fn check_chain(cert_pem: &str, issuer_root_pem: &str, want: &[&str]) {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("chain parses");
    assert!(
        chain.len() >= 2,
        "leaf and intermediate, got {}",
        chain.len()
    );
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).expect("leaf parses");
    let mut sans: Vec<String> = leaf
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("leaf has SANs")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    sans.sort();
    assert_eq!(sans, want);

    let mut roots = rustls::RootCertStore::empty();
    for root in rustls_pemfile::certs(&mut issuer_root_pem.as_bytes()) {
        roots.add(root.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    for name in want {
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("chain does not verify for {name}: {e}"));
    }
}

#[test]
fn order_issues_a_chain_for_both_names_and_withdraws_the_tokens() {
    let board = MapBoard::new(true);
    let ca = Ca::start(board.clone());
    let (client, credentials) = ca.create();
    assert!(credentials.contains(&ca.url), "{credentials}");

    let started = Instant::now();
    let issued = ca
        .rt
        .block_on(client.order(
            &names(&["a.test.example", "b.test.example"]),
            &*board,
            DEADLINE,
        ))
        .expect("order");
    eprintln!("order for 2 names took {:?}", started.elapsed());

    check_chain(
        &issued.cert_pem,
        &ca.pebble.issuer_roots_pem(),
        &["a.test.example", "b.test.example"],
    );
    assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let published = board.published.lock().unwrap().clone();
    assert_eq!(published.len(), 2, "one token per name");
    let mut withdrawn = board.withdrawn.lock().unwrap().clone();
    withdrawn.sort();
    let mut published_sorted = published;
    published_sorted.sort();
    assert_eq!(withdrawn, published_sorted);
    assert!(board.tokens.lock().unwrap().is_empty());
}

#[test]
fn a_restored_account_orders_again() {
    let board = MapBoard::new(true);
    let ca = Ca::start(board.clone());
    let (first, credentials) = ca.create();

    let restored = ca
        .rt
        .block_on(AcmeClient::restore(&credentials, &ca.dir()))
        .expect("restore");
    assert_eq!(restored.account_id(), first.account_id());
    let issued = ca
        .rt
        .block_on(restored.order(&names(&["c.test.example"]), &*board, DEADLINE))
        .expect("order with the restored account");
    check_chain(
        &issued.cert_pem,
        &ca.pebble.issuer_roots_pem(),
        &["c.test.example"],
    );

    // Credentials of another directory are refused before any request.
    let other = Directory {
        url: "https://127.0.0.1:1/dir",
        ..ca.dir()
    };
    let err = ca
        .rt
        .block_on(AcmeClient::restore(&credentials, &other))
        .unwrap_err();
    assert!(
        matches!(err, AcmeError::Invalid(ref m) if m.contains("not https://127.0.0.1:1/dir")),
        "{err}"
    );
}

#[test]
fn a_token_nobody_serves_fails_as_an_invalid_challenge_within_the_deadline() {
    let board = MapBoard::new(false);
    let ca = Ca::start(board.clone());
    let (client, _) = ca.create();

    let started = Instant::now();
    let err = ca
        .rt
        .block_on(client.order(&names(&["d.test.example"]), &*board, DEADLINE))
        .unwrap_err();
    let took = started.elapsed();
    eprintln!("failed order took {took:?}: {err}");
    match &err {
        AcmeError::ChallengeInvalid { name, reason } => {
            assert_eq!(name, "d.test.example");
            assert!(reason.contains("urn:ietf:params:acme:error:"), "{reason}");
        }
        other => panic!("expected ChallengeInvalid, got {other:?}"),
    }
    assert!(took < DEADLINE, "{took:?}");
    assert_eq!(
        *board.withdrawn.lock().unwrap(),
        *board.published.lock().unwrap(),
        "the token is withdrawn after a failure too"
    );
}

#[test]
fn a_wildcard_is_refused_without_contacting_the_ca() {
    let board = MapBoard::new(true);
    let mut ca = Ca::start(board.clone());
    let (client, _) = ca.create();
    // With the CA gone, any request would fail as Unreachable.
    ca.pebble.kill();

    let err = ca
        .rt
        .block_on(client.order(
            &names(&["e.test.example", "*.test.example"]),
            &*board,
            DEADLINE,
        ))
        .unwrap_err();
    assert!(
        matches!(err, AcmeError::Invalid(ref m) if m.contains("*.test.example") && m.contains("DNS-01")),
        "{err:?}"
    );
    assert!(board.published.lock().unwrap().is_empty());
}

#[test]
fn a_ca_that_is_down_or_answers_errors_is_told_apart() {
    let board = MapBoard::new(true);
    let mut ca = Ca::start(board.clone());
    let (_, credentials) = ca.create();

    ca.pebble.kill();
    let err = ca.rt.block_on(AcmeClient::create(&ca.dir())).unwrap_err();
    assert!(matches!(err, AcmeError::Unreachable { .. }), "{err:?}");

    // Up again, but every signed request is answered with badNonce.
    ca.pebble.restart_with(PebbleOptions {
        nonce_reject_percent: 100,
        ..PebbleOptions::default()
    });
    let err = ca.rt.block_on(AcmeClient::create(&ca.dir())).unwrap_err();
    match &err {
        AcmeError::Ca { problem, .. } => assert_eq!(
            problem.r#type.as_deref(),
            Some("urn:ietf:params:acme:error:badNonce"),
            "{err}"
        ),
        other => panic!("expected Ca, got {other:?}"),
    }

    // A restarted pebble has forgotten every account.
    ca.pebble.restart_with(PebbleOptions::default());
    let err = ca
        .rt
        .block_on(AcmeClient::restore(&credentials, &ca.dir()))
        .unwrap_err();
    match &err {
        AcmeError::Ca { problem, .. } => assert_eq!(
            problem.r#type.as_deref(),
            Some("urn:ietf:params:acme:error:accountDoesNotExist"),
            "{err}"
        ),
        other => panic!("expected Ca, got {other:?}"),
    }
}

#[test]
fn pebble_issues_with_the_validity_asked_for() {
    let board = MapBoard::new(true);
    let ca = Ca::start_with(
        board.clone(),
        PebbleOptions {
            cert_validity: Some(Duration::from_secs(3600)),
            ..PebbleOptions::default()
        },
    );
    let (client, _) = ca.create();
    let issued = ca
        .rt
        .block_on(client.order(&names(&["f.test.example"]), &*board, DEADLINE))
        .expect("order");
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let v = leaf.validity();
    let secs = v.not_after.timestamp() - v.not_before.timestamp();
    assert!((3599..=3601).contains(&secs), "validity {secs}s");
}
