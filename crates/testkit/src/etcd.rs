//! Real etcd for tests: a single member ([`Etcd`]) or a loopback cluster
//! ([`EtcdCluster`]) of Debian's `etcd` binary (3.4), each with a temp data
//! dir and free ports, plus a blocking client ([`EtcdClient`]) whose every
//! operation retries briefly across reconnects, so tests survive restarts.
//!
//! The binary is `etcd` on PATH unless `TESTKIT_ETCD_BIN` names another.

use std::fs::OpenOptions;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, CompactionOptions, ConnectOptions, DeleteOptions, Error, GetOptions, PutOptions,
    StatusResponse,
};
use tempfile::TempDir;
use tokio::task::JoinHandle;

use crate::process::{kill_and_reap, tail_file};
use crate::rt::{block_on, rt};
use crate::wait::free_port;

/// Per-attempt timeout of one etcd call.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one blocking operation keeps retrying transient failures.
const RETRY_FOR: Duration = Duration::from_secs(15);
/// Deadline for a member to come up and elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- client

/// Blocking etcd client over one or more endpoints. Each call runs on the
/// harness runtime; transient failures (refused, unavailable, no leader,
/// timeouts) drop the connection, rotate to the next endpoint and retry for
/// up to 15s; other errors panic at once. Cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    endpoints: Vec<String>,
    conns: Mutex<Vec<Option<Client>>>,
    next: AtomicUsize,
}

fn retryable(e: &Error) -> bool {
    match e {
        Error::TransportError(_)
        | Error::IoError(_)
        | Error::LeaseKeepAliveError(_)
        | Error::EndpointError(_)
        | Error::Internal(_) => true,
        Error::GRpcStatus(s) => {
            let code: i32 = s.code().into();
            // Cancelled, Unknown, DeadlineExceeded, Unavailable
            matches!(code, 1 | 2 | 4 | 14)
        }
        _ => false,
    }
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map(|h| h.revision()).unwrap_or(0)
}

async fn connect(endpoint: &str) -> Result<Client, Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(OP_TIMEOUT);
    match tokio::time::timeout(OP_TIMEOUT, Client::connect([endpoint], Some(opts))).await {
        Ok(r) => r,
        Err(_) => Err(Error::Internal(format!("connect to {endpoint} timed out"))),
    }
}

/// One `status` call against one endpoint, on a fresh connection.
async fn probe(endpoint: &str, timeout: Duration) -> Result<StatusResponse, String> {
    let fut = async {
        let mut c = connect(endpoint).await.map_err(|e| e.to_string())?;
        c.status().await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("status on {endpoint} timed out")),
    }
}

impl EtcdClient {
    /// A client over these endpoints (`http://host:port`); connects lazily.
    pub fn new(endpoints: Vec<String>) -> EtcdClient {
        assert!(!endpoints.is_empty(), "EtcdClient needs an endpoint");
        let n = endpoints.len();
        EtcdClient {
            inner: Arc::new(ClientInner {
                endpoints,
                conns: Mutex::new(vec![None; n]),
                next: AtomicUsize::new(0),
            }),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The current endpoint's connection (connecting if needed).
    async fn conn(&self) -> Result<(usize, Client), Error> {
        let i = self.inner.next.load(Ordering::SeqCst) % self.inner.endpoints.len();
        if let Some(c) = self.inner.conns.lock().unwrap()[i].clone() {
            return Ok((i, c));
        }
        let c = connect(&self.inner.endpoints[i]).await?;
        self.inner.conns.lock().unwrap()[i] = Some(c.clone());
        Ok((i, c))
    }

    /// Forget endpoint `i`'s connection and move on to the next endpoint.
    fn invalidate(&self, i: usize) {
        self.inner.conns.lock().unwrap()[i] = None;
        let _ = self.inner.next.compare_exchange(
            i,
            (i + 1) % self.inner.endpoints.len(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Run `f` with retries (see the type's docs); async form.
    pub async fn run_async<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let start = Instant::now();
        loop {
            let (idx, err) = match self.conn().await {
                Ok((i, c)) => match tokio::time::timeout(OP_TIMEOUT, f(c)).await {
                    Ok(Ok(v)) => return v,
                    Ok(Err(e)) => (i, e),
                    Err(_) => (
                        i,
                        Error::Internal(format!("timed out after {OP_TIMEOUT:?}")),
                    ),
                },
                Err(e) => (
                    self.inner.next.load(Ordering::SeqCst) % self.inner.endpoints.len(),
                    e,
                ),
            };
            if !retryable(&err) {
                panic!("etcd {what} failed: {err}");
            }
            self.invalidate(idx);
            if start.elapsed() > RETRY_FOR {
                panic!(
                    "etcd {what} failed for {:.1?} (endpoints {:?}); last error: {err}",
                    start.elapsed(),
                    self.inner.endpoints
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Run `f(client)` with retries on the harness runtime and return its
    /// value; the escape hatch for calls this type does not wrap.
    pub fn run<T, F, Fut>(&self, what: &str, f: F) -> T
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        block_on(self.run_async(what, f))
    }

    /// Put; returns the header revision.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        self.put_opts(key, value, None)
    }

    /// Put attached to `lease`; returns the header revision.
    pub fn put_with_lease(&self, key: &str, value: &str, lease: i64) -> i64 {
        self.put_opts(key, value, Some(PutOptions::new().with_lease(lease)))
    }

    fn put_opts(&self, key: &str, value: &str, opts: Option<PutOptions>) -> i64 {
        self.run(&format!("put {key}"), |mut c| {
            let (k, v, o) = (key.to_string(), value.to_string(), opts.clone());
            async move { Ok(header_rev(c.put(k, v, o).await?.header())) }
        })
    }

    /// Grant a lease; returns its id.
    pub fn grant(&self, ttl_secs: i64) -> i64 {
        self.run("lease grant", |mut c| async move {
            Ok(c.lease_grant(ttl_secs, None).await?.id())
        })
    }

    /// One keep-alive round trip; returns the remaining TTL (0 = lease gone).
    pub fn keep_alive_ttl(&self, lease: i64) -> i64 {
        self.run("lease keep-alive", |mut c| async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            match stream.message().await? {
                Some(r) => Ok(r.ttl()),
                None => Err(Error::LeaseKeepAliveError("stream closed".into())),
            }
        })
    }

    pub fn keep_alive_once(&self, lease: i64) {
        self.keep_alive_ttl(lease);
    }

    pub fn revoke(&self, lease: i64) {
        self.run("lease revoke", |mut c| async move {
            c.lease_revoke(lease).await.map(|_| ())
        })
    }

    /// Delete one key; returns the header revision.
    pub fn delete(&self, key: &str) -> i64 {
        self.delete_opts(key, None)
    }

    /// Delete every key under `prefix`; returns the header revision.
    pub fn delete_prefix(&self, prefix: &str) -> i64 {
        self.delete_opts(prefix, Some(DeleteOptions::new().with_prefix()))
    }

    fn delete_opts(&self, key: &str, opts: Option<DeleteOptions>) -> i64 {
        self.run(&format!("delete {key}"), |mut c| {
            let (k, o) = (key.to_string(), opts.clone());
            async move { Ok(header_rev(c.delete(k, o).await?.header())) }
        })
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.get_opts(key, None).into_iter().next().map(|(_, v)| v)
    }

    /// Every (key, value) under `prefix`, sorted by key.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.get_opts(prefix, Some(GetOptions::new().with_prefix()))
    }

    fn get_opts(&self, key: &str, opts: Option<GetOptions>) -> Vec<(String, String)> {
        self.run(&format!("get {key}"), |mut c| {
            let (k, o) = (key.to_string(), opts.clone());
            async move {
                let resp = c.get(k, o).await?;
                Ok(resp
                    .kvs()
                    .iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(kv.key()).into_owned(),
                            String::from_utf8_lossy(kv.value()).into_owned(),
                        )
                    })
                    .collect())
            }
        })
    }

    /// Physical compaction up to `revision`.
    pub fn compact(&self, revision: i64) {
        self.run("compact", |mut c| async move {
            c.compact(revision, Some(CompactionOptions::new().with_physical()))
                .await
                .map(|_| ())
        })
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.run("get revision", |mut c| async move {
            let r = c
                .get("/", Some(GetOptions::new().with_count_only()))
                .await?;
            Ok(header_rev(r.header()))
        })
    }

    /// Grant a `ttl_secs` lease and keep it alive from a background task
    /// (every ttl/3, reconnecting as needed) until the [`KeptLease`] is
    /// dropped or stopped.
    pub fn keep_alive(&self, ttl_secs: i64) -> KeptLease {
        let id = self.grant(ttl_secs);
        let period = Duration::from_millis((ttl_secs.max(1) as u64 * 1000 / 3).clamp(100, 5000));
        let client = self.clone();
        let task = rt().spawn(async move {
            loop {
                if let Ok((i, mut c)) = client.conn().await {
                    if let Ok(Ok((mut keeper, mut stream))) =
                        tokio::time::timeout(OP_TIMEOUT, c.lease_keep_alive(id)).await
                    {
                        loop {
                            let round = async {
                                keeper.keep_alive().await?;
                                stream.message().await
                            };
                            match tokio::time::timeout(OP_TIMEOUT, round).await {
                                Ok(Ok(Some(_))) => tokio::time::sleep(period).await,
                                _ => break,
                            }
                        }
                    }
                    client.invalidate(i);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        KeptLease {
            id,
            task: Some(task),
        }
    }
}

/// A lease kept alive by a background task until dropped or
/// [`KeptLease::stop_keepalive`] (to simulate a crashed service). Neither
/// revokes it: the lease then expires after its TTL.
pub struct KeptLease {
    pub id: i64,
    task: Option<JoinHandle<()>>,
}

impl KeptLease {
    /// Stop sending keep-alives; the lease expires after its TTL.
    pub fn stop_keepalive(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = block_on(t);
        }
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------- process

fn etcd_bin() -> String {
    std::env::var("TESTKIT_ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

fn unique_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("testkit-{}-{nanos}", std::process::id())
}

/// One etcd process and everything needed to start it again identically.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    initial_cluster: String,
    token: String,
    heartbeat_ms: u32,
    election_ms: u32,
    child: Option<Child>,
}

impl Member {
    fn new(dir: &Path, name: &str, heartbeat_ms: u32, election_ms: u32) -> Member {
        Member {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: dir.join(format!("{name}.etcd")),
            log_path: dir.join(format!("{name}.log")),
            initial_cluster: String::new(),
            token: String::new(),
            heartbeat_ms,
            election_ms,
            child: None,
        }
    }

    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd {} already running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("etcd log file");
        let (client, peer) = (self.client_url(), self.peer_url());
        let child = Command::new(etcd_bin())
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg("--initial-cluster-state=new")
            .arg(format!("--heartbeat-interval={}", self.heartbeat_ms))
            .arg(format!("--election-timeout={}", self.election_ms))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e} (is etcd installed?)", etcd_bin()));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
    }

    /// Some(log tail) if the process has exited on its own.
    fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => {
                self.child = None;
                Some(format!(
                    "etcd {} exited ({st}); log {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    tail_file(&self.log_path, 40)
                ))
            }
            _ => None,
        }
    }

    fn port_clash(&self) -> bool {
        std::fs::read_to_string(&self.log_path)
            .map(|l| l.contains("address already in use"))
            .unwrap_or(false)
    }

    /// Poll until this member answers `status` and knows a leader.
    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let ep = self.client_url();
        loop {
            if let Some(log) = self.exited() {
                return Err(log);
            }
            let last = match block_on(probe(&ep, Duration::from_secs(1))) {
                Ok(s) if s.leader() != 0 => return Ok(()),
                Ok(_) => "no leader yet".to_string(),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd {} not healthy after {timeout:?} ({last}); log:\n{}",
                    self.name,
                    tail_file(&self.log_path, 40)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn print_tail_if_panicking(what: &str, path: &Path) {
    if std::thread::panicking() {
        eprintln!(
            "----- last lines of {what} ({}) -----\n{}\n-----",
            path.display(),
            tail_file(path, 20)
        );
    }
}

// ---------------------------------------------------------------- single

/// A single-member etcd on free loopback ports with a temp data dir; killed
/// on drop. Fast timings (heartbeat 25ms, election 250ms) so that start-up is
/// quick and a 1s lease really expires after about 1s.
pub struct Etcd {
    _dir: TempDir,
    member: Member,
    client: EtcdClient,
}

impl Etcd {
    pub fn start() -> Etcd {
        let mut last_err = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("testkit-etcd-")
                .tempdir()
                .expect("temp dir");
            let mut m = Member::new(dir.path(), "tg0", 25, 250);
            m.initial_cluster = format!("tg0={}", m.peer_url());
            m.token = unique_token();
            m.spawn();
            match m.wait_healthy(START_TIMEOUT) {
                Ok(()) => {
                    let client = EtcdClient::new(vec![m.client_url()]);
                    return Etcd {
                        _dir: dir,
                        member: m,
                        client,
                    };
                }
                Err(e) => {
                    m.kill();
                    if !m.port_clash() {
                        panic!("{e}");
                    }
                    last_err = e; // a port was taken under us: try new ones
                }
            }
        }
        panic!("etcd did not start: {last_err}");
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        self.member.client_url()
    }

    /// The blocking client the methods below delegate to.
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    /// SIGKILL the process; data dir and ports are kept for [`Etcd::restart`].
    pub fn stop(&mut self) {
        self.member.kill();
    }

    pub fn is_running(&mut self) -> bool {
        self.member.child.is_some() && self.member.exited().is_none()
    }

    /// Start again on the same ports and data dir; waits until healthy.
    pub fn restart(&mut self) {
        self.member.kill();
        self.member.spawn();
        if let Err(e) = self.member.wait_healthy(START_TIMEOUT) {
            panic!("etcd restart failed: {e}");
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.member.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.member.log_path
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.member.log_path).unwrap_or_default()
    }

    pub fn put(&self, key: &str, value: &str) -> i64 {
        self.client.put(key, value)
    }
    pub fn put_with_lease(&self, key: &str, value: &str, lease: i64) -> i64 {
        self.client.put_with_lease(key, value, lease)
    }
    pub fn grant(&self, ttl_secs: i64) -> i64 {
        self.client.grant(ttl_secs)
    }
    pub fn keep_alive_once(&self, lease: i64) {
        self.client.keep_alive_once(lease)
    }
    pub fn revoke(&self, lease: i64) {
        self.client.revoke(lease)
    }
    pub fn delete(&self, key: &str) -> i64 {
        self.client.delete(key)
    }
    pub fn delete_prefix(&self, prefix: &str) -> i64 {
        self.client.delete_prefix(prefix)
    }
    pub fn get(&self, key: &str) -> Option<String> {
        self.client.get(key)
    }
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.client.get_prefix(prefix)
    }
    pub fn compact(&self, revision: i64) {
        self.client.compact(revision)
    }
    pub fn revision(&self) -> i64 {
        self.client.revision()
    }
    pub fn keep_alive(&self, ttl_secs: i64) -> KeptLease {
        self.client.keep_alive(ttl_secs)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.member.kill();
        print_tail_if_panicking("etcd log", &self.member.log_path);
    }
}

// ---------------------------------------------------------------- cluster

/// An n-member etcd cluster on loopback (distinct free ports, fresh cluster
/// token), heartbeat 50ms / election 500ms. Members are indexed 0..n.
/// Dropping it kills every member.
pub struct EtcdCluster {
    _dir: TempDir,
    members: Vec<Member>,
    client: EtcdClient,
}

impl EtcdCluster {
    pub fn start(n: usize) -> EtcdCluster {
        assert!(n >= 1);
        let mut last_err = String::new();
        'attempt: for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("testkit-etcd-cluster-")
                .tempdir()
                .expect("temp dir");
            let mut members: Vec<Member> = (0..n)
                .map(|i| Member::new(dir.path(), &format!("m{i}"), 50, 500))
                .collect();
            let initial = members
                .iter()
                .map(|m| format!("{}={}", m.name, m.peer_url()))
                .collect::<Vec<_>>()
                .join(",");
            let token = unique_token();
            for m in &mut members {
                m.initial_cluster = initial.clone();
                m.token = token.clone();
                m.spawn();
            }
            for i in 0..n {
                if let Err(e) = members[i].wait_healthy(START_TIMEOUT) {
                    let clash = members.iter().any(|m| m.port_clash());
                    members.iter_mut().for_each(Member::kill);
                    if !clash {
                        panic!("etcd cluster did not start: {e}");
                    }
                    last_err = e;
                    continue 'attempt;
                }
            }
            let client = EtcdClient::new(members.iter().map(Member::client_url).collect());
            return EtcdCluster {
                _dir: dir,
                members,
                client,
            };
        }
        panic!("etcd cluster did not start: {last_err}");
    }

    /// Client URLs of all members (dead or alive), by index.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// A client over all members, rotating past dead ones.
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    /// Index of the current leader, as reported by a live member that is
    /// itself the leader (polls up to 15s, e.g. during an election).
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                if let Ok(s) = block_on(probe(&m.client_url(), Duration::from_secs(1))) {
                    if s.header().is_some_and(|h| h.member_id() == s.leader()) {
                        return i;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("etcd cluster: no leader among live members after 15s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL member `i` (data dir and ports kept).
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Start member `i` again and wait until it is healthy and sees a leader.
    pub fn restart(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.kill();
        m.spawn();
        if let Err(e) = m.wait_healthy(START_TIMEOUT) {
            panic!("etcd member {i} restart failed: {e}");
        }
    }

    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log_path
    }

    /// Put via any live member; returns the header revision.
    pub fn client_put(&self, key: &str, value: &str) -> i64 {
        self.client.put(key, value)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
            print_tail_if_panicking(&format!("etcd {} log", m.name), &m.log_path);
        }
    }
}
