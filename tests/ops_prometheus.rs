//! The Grafana dashboard and the alert rules against a real Prometheus
//! (Debian's `prometheus` package) scraping two real gateways in etcd mode
//! under mixed traffic (200, 404, 429, 502, 503) with a rejected config
//! value: every dashboard expression and every alert `expr` must evaluate,
//! the traffic / latency / etcd panels must return data, the alerts that
//! the scenario should trip must trip, and `promtool check rules` must
//! pass.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::etcd_gw::{
    put_route, start_gw, wait_ok, wait_revision, wait_status, TempDir, ROUTES, SERVICES,
};
use common::tls::{cert_value, make_cert_days};
use serde_json::{json, Value};
use testkit::process::{kill_and_reap, tail_file};
use testkit::{free_port, http_request, Backend, Etcd, Gateway};

/// Go starts slowly, TSDB replay included; be generous.
const PROM_READY: Duration = Duration::from_secs(90);
const DATA: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found: run scripts/deps.sh (Debian package `prometheus`)");
}

// ------------------------------------------------------------ prometheus

/// A Prometheus server on a free loopback port with a temp TSDB; killed
/// (and reaped) on drop, log printed if the test is failing.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Prometheus {
    fn start(targets: &[String], rules: &Path) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: tollgate\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let f = File::create(&log).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("prometheus exited ({st}):\n{}", tail_file(&p.log, 40));
            }
            if http_request("GET", &format!("{}/-/ready", p.url), &[], None)
                .is_ok_and(|r| r.status == 200)
            {
                return p;
            }
            if start.elapsed() > PROM_READY {
                kill_and_reap(&mut p.child);
                panic!(
                    "prometheus not ready within {PROM_READY:?}:\n{}",
                    tail_file(&p.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let mut url = url::Url::parse(&format!("{}{path}", self.url)).unwrap();
        for (k, v) in params {
            url.query_pairs_mut().append_pair(k, v);
        }
        let r = http_request("GET", url.as_str(), &[], None)
            .unwrap_or_else(|e| panic!("prometheus {path}: {e}"));
        serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("prometheus {path}: {e}: {} {}", r.status, r.body))
    }

    /// `/api/v1/query`: Ok(result array) on status success, Err(body) otherwise.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let v = self.api("/api/v1/query", &[("query", expr)]);
        if v["status"] != "success" {
            return Err(v.to_string());
        }
        match &v["data"]["result"] {
            Value::Array(a) => Ok(a.clone()),
            // scalar / string results: one value
            other => Ok(vec![other.clone()]),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if std::thread::panicking() {
            eprintln!("----- prometheus log -----\n{}", tail_file(&self.log, 40));
        }
    }
}

// ------------------------------------------------------------ traffic

/// Requests from a background thread, round-robin over gateways and paths.
struct Traffic {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<BTreeMap<u16, usize>>>,
}

impl Traffic {
    fn start(bases: Vec<String>, paths: &'static [&'static str]) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = BTreeMap::new();
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let url = format!(
                    "{}{}",
                    bases[i % bases.len()],
                    paths[(i / bases.len()) % paths.len()]
                );
                if let Ok(r) = http_request("GET", &url, &[], None) {
                    *seen.entry(r.status).or_insert(0) += 1;
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        });
        Traffic {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> BTreeMap<u16, usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ------------------------------------------------------------ dashboard

/// Grafana variables as the test resolves them: "All" everywhere.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "5s")
        .replace("$__range", "1m")
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$route", ".*")
        .replace("$service", ".*")
}

/// Every (panel title, expr) of the dashboard, rows' nested panels included.
fn dashboard_exprs(dash: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((title.clone(), e.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// Panels that are legitimately empty in this scenario (nothing ejected,
/// no panic picks, no unleased keys, no access-log drops in a second of
/// scraping, ...). Every other panel must return data.
const MAY_BE_EMPTY: &[&str] = &[
    "Ejections and panic picks",
    "Unleased registry keys",
    "Cache purges, flushes, evictions, coalesced misses",
    "Managed certificates: failed attempts, orders",
];

fn check_importable(dash: &Value) {
    assert_eq!(dash["uid"], "tollgate");
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["name"] == "DS_PROMETHEUS"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a DS_PROMETHEUS datasource variable"
    );
    let mut ids = std::collections::HashSet::new();
    fn panels(v: &Value) -> Vec<&Value> {
        let mut out = Vec::new();
        for p in v.as_array().into_iter().flatten() {
            out.push(p);
            out.extend(panels(&p["panels"]));
        }
        out
    }
    for p in panels(&dash["panels"]) {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {p}"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "gridPos: {p}");
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {} datasource",
                p["title"]
            );
            for t in p["targets"].as_array().expect("targets") {
                assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{t}");
            }
        }
    }
}

// ------------------------------------------------------------ the test

#[test]
fn dashboard_and_alerts_evaluate_on_a_real_prometheus() {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/tollgate.json")).unwrap(),
    )
    .expect("dashboard is JSON");
    check_importable(&dash);
    let rules_path = repo().join("deploy/prometheus/alerts.yml");
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&rules_path).unwrap()).unwrap();

    // promtool comes with the package.
    let out = Command::new(tool("promtool"))
        .arg("check")
        .arg("rules")
        .arg(&rules_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // --- two gateways on one etcd, routes for every status we want
    let mut etcd = Etcd::start();
    let b1 = Backend::start("b1");
    let lease = etcd.keep_alive(30);
    etcd.put_with_lease(&format!("{SERVICES}svc/i1"), &b1.url(), lease.id);
    let closed = format!("http://127.0.0.1:{}", free_port());
    etcd.put(
        "/tollgate/upstreams/dead",
        &json!({ "nodes": [closed] }).to_string(),
    );
    put_route(etcd.client(), "echo", &["/echo"], "svc");
    put_route(etcd.client(), "dead", &["/dead"], "dead");
    put_route(etcd.client(), "empty", &["/empty"], "ghost");
    etcd.put(
        &format!("{ROUTES}cached"),
        &json!({ "paths": ["/cached"], "upstream": "svc", "cache": {} }).to_string(),
    );
    // ghost had an instance, and its lease is gone (revoked below).
    let ghost_lease = etcd.grant(30);
    etcd.put_with_lease(&format!("{SERVICES}ghost/i1"), &b1.url(), ghost_lease);
    etcd.put(
        &format!("{ROUTES}limited"),
        &json!({ "paths": ["/limited"], "upstream": "svc", "rate_limit": { "rate": 1, "burst": 1 } })
            .to_string(),
    );
    // One certificate about to expire, one not.
    let certs = common::etcd_gw::TempDir::new("prom-certs");
    for (id, days) in [("soon", 7), ("later", 90)] {
        let c = make_cert_days(certs.path(), id, &format!("{id}.test"), days);
        etcd.put(
            &format!("/tollgate/certs/{id}"),
            &cert_value(&[&format!("{id}.test")], &c),
        );
    }
    let gws: Vec<Gateway> = ["gw-a", "gw-b"]
        .iter()
        .map(|n| start_gw(n, &[etcd.endpoint()]))
        .collect();
    // A bad value: rejected (and counted) by every node.
    let rev = etcd.put(
        &format!("{ROUTES}broken"),
        r#"{"paths": ["no-slash"], "upstream": "svc"}"#,
    );
    for gw in &gws {
        wait_revision(gw, rev, Duration::from_secs(10));
        wait_status(gw, "4 routes", Duration::from_secs(10), |s| {
            s["routes"] == 5
        });
    }

    etcd.revoke(ghost_lease);
    for gw in &gws {
        wait_ok(
            "ghost has no live instance",
            Duration::from_secs(10),
            || match gw.request("GET", "/empty", &[], None) {
                Ok(r) if r.status == 503 => Ok(()),
                Ok(r) => Err(format!("{} {}", r.status, r.body)),
                Err(e) => Err(e),
            },
        );
    }

    let traffic = Traffic::start(
        gws.iter().map(|g| g.url("")).collect(),
        &[
            "/echo", "/echo", "/echo", "/nope", "/limited", "/dead", "/empty", "/cached",
        ],
    );

    let targets: Vec<String> = gws.iter().map(|g| g.admin_addr().to_string()).collect();
    let prom = Prometheus::start(&targets, &rules_path);

    // --- samples: both targets up and at least a few scrapes in
    wait_ok("both targets scraped", DATA, || {
        let up = prom.query(r#"sum(up{job="tollgate"})"#)?;
        let n = up
            .first()
            .and_then(|s| s["value"][1].as_str())
            .unwrap_or("0")
            .to_string();
        if n != "2" {
            return Err(format!("up = {n}"));
        }
        let scrapes = prom.query("min(count_over_time(tollgate_build_info[1m]))")?;
        match scrapes.first().and_then(|s| s["value"][1].as_str()) {
            Some(v) if v.parse::<f64>().unwrap_or(0.0) >= 5.0 => Ok(()),
            other => Err(format!("scrapes: {other:?}")),
        }
    });

    // A second bad value while Prometheus watches: increase() only counts
    // what happens between samples, not a series' first appearance.
    let rev = etcd.put(
        &format!("{ROUTES}broken"),
        r#"{"paths": ["/ok"], "upstream": ""}"#,
    );
    for gw in &gws {
        wait_revision(gw, rev, Duration::from_secs(10));
    }

    // --- every dashboard expression
    let exprs = dashboard_exprs(&dash);
    assert!(
        exprs.len() >= 25,
        "only {} dashboard expressions",
        exprs.len()
    );
    for (title, raw) in &exprs {
        let expr = substitute(raw);
        assert!(
            !expr.contains('$'),
            "unsubstituted variable in {title}: {expr}"
        );
        if MAY_BE_EMPTY.contains(&title.as_str()) {
            prom.query(&expr)
                .unwrap_or_else(|e| panic!("panel {title:?}: {expr}\n{e}"));
        } else {
            wait_ok(
                &format!("panel {title:?} has data: {expr}"),
                DATA,
                || match prom.query(&expr) {
                    Ok(r) if !r.is_empty() => Ok(()),
                    Ok(_) => Err("empty result".into()),
                    Err(e) => panic!("panel {title:?}: {expr}\n{e}"),
                },
            );
        }
    }

    // Template variables: label_values(SELECTOR, LABEL) must find values.
    for v in dash["templating"]["list"].as_array().unwrap() {
        let Some(q) = v["query"]["query"].as_str() else {
            continue;
        };
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: unexpected query {q}", v["name"]));
        let (selector, label) = inner.rsplit_once(", ").unwrap();
        let selector = substitute(selector);
        let r = prom.api(
            &format!("/api/v1/label/{label}/values"),
            &[("match[]", &selector)],
        );
        assert_eq!(r["status"], "success", "variable {}: {r}", v["name"]);
        assert!(
            r["data"].as_array().is_some_and(|a| !a.is_empty()),
            "variable {} ({q}) has no values: {r}",
            v["name"]
        );
    }

    // --- every alert expression evaluates, and every rule is healthy
    let mut alert_names = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr");
            let name = rule["alert"].as_str().expect("alert name");
            prom.query(expr)
                .unwrap_or_else(|e| panic!("alert {name}: {expr}\n{e}"));
            alert_names.push(name.to_string());
        }
    }
    wait_ok("every rule evaluated and healthy", DATA, || {
        let r = prom.api("/api/v1/rules", &[]);
        let rules: Vec<&Value> = r["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        if rules.len() != alert_names.len() {
            return Err(format!(
                "{} rules loaded, want {}",
                rules.len(),
                alert_names.len()
            ));
        }
        match rules.iter().find(|r| r["health"] != "ok") {
            Some(bad) => Err(bad.to_string()),
            None => Ok(()),
        }
    });

    // --- the alerts this scenario must trip
    let alert_state = |name: &str, label: (&str, &str)| -> Option<String> {
        let r = prom.api("/api/v1/alerts", &[]);
        r["data"]["alerts"].as_array().and_then(|a| {
            a.iter()
                .find(|x| x["labels"]["alertname"] == name && x["labels"][label.0] == label.1)
                .and_then(|x| x["state"].as_str().map(str::to_string))
        })
    };
    let tripped = |name: &str, label: (&str, &str), want: &[&str]| {
        wait_ok(
            &format!("alert {name} {label:?} in {want:?}"),
            DATA,
            || match alert_state(name, label) {
                Some(s) if want.contains(&s.as_str()) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
    };
    tripped("TollgateConfigRejected", ("kind", "route"), &["firing"]);
    tripped(
        "TollgateHigh5xxShare",
        ("job", "tollgate"),
        &["pending", "firing"],
    );
    tripped(
        "TollgateServiceNoLiveInstance",
        ("service", "ghost"),
        &["pending", "firing"],
    );
    assert_eq!(
        alert_state("TollgateServiceNoLiveInstance", ("service", "svc")),
        None
    );
    tripped(
        "TollgateCertificateExpiresSoon",
        ("cert", "soon"),
        &["pending", "firing"],
    );
    assert_eq!(
        alert_state("TollgateCertificateExpiresSoon", ("cert", "later")),
        None
    );
    assert_eq!(
        alert_state("TollgateEtcdDisconnected", ("job", "tollgate")),
        None
    );

    let seen = traffic.finish();
    for status in [200, 404, 429, 502, 503] {
        assert!(
            seen.get(&status).is_some_and(|n| *n > 0),
            "no {status} in the traffic: {seen:?}"
        );
    }

    // etcd goes away: the nodes notice, and the disconnect alert goes pending.
    etcd.stop();
    tripped(
        "TollgateEtcdDisconnected",
        ("job", "tollgate"),
        &["pending", "firing"],
    );
    drop(lease);
}
