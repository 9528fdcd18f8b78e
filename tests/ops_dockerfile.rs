//! The Dockerfile, without a Docker engine (these machines have none): its
//! build steps are the ones the rest of the project uses (Debian bookworm,
//! the build packages of scripts/deps.sh, the release build of the
//! benchmarks), the runtime stage is what the README promises, the config
//! the image ships passes `tollgate check`, and the HEALTHCHECK command
//! really tells a ready gateway from a missing one.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::etcd_gw::TempDir;
use common::{bin, start, upstream};
use testkit::{free_port, Backend};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One Dockerfile instruction: keyword (upper case) and its arguments,
/// continuation lines joined.
#[derive(Debug)]
struct Instr {
    op: String,
    args: String,
}

/// Instructions grouped by stage (one Vec per FROM).
fn parse_dockerfile(text: &str) -> Vec<Vec<Instr>> {
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') && cur.is_empty() {
            continue;
        }
        if t.starts_with('#') {
            continue; // comment inside a continued instruction
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        if !cur.trim().is_empty() {
            logical.push(std::mem::take(&mut cur));
        }
        cur.clear();
    }
    let mut stages: Vec<Vec<Instr>> = Vec::new();
    for l in logical {
        let (op, args) = l.trim().split_once(char::is_whitespace).unwrap_or((&l, ""));
        let instr = Instr {
            op: op.to_ascii_uppercase(),
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        };
        if instr.op == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(s) = stages.last_mut() {
            s.push(instr);
        }
    }
    stages
}

fn args<'a>(stage: &'a [Instr], op: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|i| i.op == op)
        .map(|i| i.args.as_str())
        .collect()
}

/// scripts/deps.sh's PACKAGES: (package, comment).
fn deps_packages() -> Vec<(String, String)> {
    let text = read("scripts/deps.sh");
    let body = text
        .split_once("PACKAGES=(")
        .and_then(|(_, rest)| rest.split_once("\n)"))
        .map(|(b, _)| b)
        .expect("PACKAGES=( ... ) in scripts/deps.sh");
    body.lines()
        .filter_map(|l| {
            let l = l.trim();
            let entry = l.strip_prefix('"')?.split('"').next()?;
            let pkg = entry.split(':').next()?.to_string();
            let comment = l
                .split_once('#')
                .map(|(_, c)| c.trim().to_string())
                .unwrap_or_default();
            Some((pkg, comment))
        })
        .collect()
}

#[test]
fn build_stage_matches_deps_and_the_benchmark_build() {
    let stages = parse_dockerfile(&read("Dockerfile"));
    assert_eq!(stages.len(), 2, "a builder and a runtime stage");
    let build = &stages[0];
    let from = args(build, "FROM")[0];
    assert!(
        from.starts_with("rust:") && from.contains("bookworm"),
        "the builder is Rust on Debian bookworm, like these machines: {from}"
    );

    // apt packages of the builder vs scripts/deps.sh.
    let run = args(build, "RUN").join(" && ");
    let installed: BTreeSet<String> = run
        .split("&&")
        .filter_map(|c| c.trim().strip_prefix("apt-get install"))
        .flat_map(|c| c.split_whitespace())
        .filter(|w| !w.starts_with('-'))
        .map(str::to_string)
        .collect();
    let deps = deps_packages();
    let known: BTreeSet<&str> = deps.iter().map(|(p, _)| p.as_str()).collect();
    for p in &installed {
        assert!(
            known.contains(p.as_str()),
            "the Dockerfile installs {p}, which scripts/deps.sh does not: {known:?}"
        );
    }
    let build_deps: Vec<&str> = deps
        .iter()
        .filter(|(_, c)| c.contains("build") && !c.contains("bench"))
        .map(|(p, _)| p.as_str())
        .collect();
    assert!(build_deps.contains(&"cmake") && build_deps.contains(&"protobuf-compiler"));
    for p in &build_deps {
        assert!(
            installed.contains(*p),
            "scripts/deps.sh needs {p} for the build; the Dockerfile does not install it ({installed:?})"
        );
    }

    // The build: scripts/pgo.sh's profile-guided release binary, exactly
    // what bench/proxy.sh measures as tollgate-pgo, with Cargo.lock enforced.
    let commands: Vec<&str> = run.split("&&").map(str::trim).collect();
    assert!(
        commands.contains(&"scripts/pgo.sh")
            && commands
                .contains(&"install -m 0755 target/pgo/release/tollgate /usr/local/bin/tollgate"),
        "the image installs scripts/pgo.sh's binary: {commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c.starts_with("cargo ")),
        "the image builds through scripts/pgo.sh only: {commands:?}"
    );
    let pgo = read("scripts/pgo.sh");
    assert!(
        pgo.contains("RUSTFLAGS=\"-Cprofile-use=$profile\" CARGO_TARGET_DIR=$use_dir")
            && pgo.contains("cargo build --release --locked --quiet -p tollgate --bin tollgate")
            && pgo.contains("use_dir=$base/pgo\n")
            && pgo.contains("base=${PGO_TARGET_DIR:-$ROOT/target}"),
        "scripts/pgo.sh no longer builds target/pgo/release/tollgate with the profile, --locked"
    );
    assert!(
        read("bench/proxy.sh")
            .contains("TOLLGATE_PGO=${TOLLGATE_PGO_BIN:-$ROOT/target/pgo/release/tollgate}"),
        "bench/proxy.sh no longer measures the binary the image ships"
    );
    assert!(repo().join("Cargo.lock").is_file());
    assert!(
        !read(".gitignore").lines().any(|l| l.trim() == "Cargo.lock"),
        "--locked needs Cargo.lock in the repository"
    );
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        "target/ must stay out of the build context"
    );
}

#[test]
fn runtime_stage_runs_the_shipped_config_unprivileged() {
    let stages = parse_dockerfile(&read("Dockerfile"));
    let rt = &stages[1];
    assert_eq!(args(rt, "FROM"), ["debian:bookworm-slim"]);
    let user = args(rt, "USER");
    assert_eq!(user.len(), 1);
    assert!(!["root", "0"].contains(&user[0]), "runs as {}", user[0]);
    assert!(
        args(rt, "RUN").join(" ").contains(&format!("useradd --system --uid 10001 --user-group --home-dir /var/lib/tollgate --shell /usr/sbin/nologin {}", user[0])),
        "the USER is created in the image"
    );
    let exposed: BTreeSet<&str> = args(rt, "EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .collect();
    assert_eq!(exposed, BTreeSet::from(["8080", "9180"]));
    assert_eq!(
        args(rt, "ENTRYPOINT"),
        [r#"["/usr/local/bin/tollgate", "run", "-c", "/etc/tollgate/tollgate.yaml"]"#]
    );
    assert!(args(rt, "COPY").contains(&"conf/ /etc/tollgate/"));
    assert!(
        args(rt, "COPY").contains(&"--from=build /usr/local/bin/tollgate /usr/local/bin/tollgate")
    );

    // The image rewrites the admin listener to 0.0.0.0 and checks the
    // result; do the same here with the real binary, and compare the
    // listeners with EXPOSE.
    let sed = "sed -i 's/127.0.0.1:9180/0.0.0.0:9180/' /etc/tollgate/*.yaml";
    assert!(args(rt, "RUN").iter().any(|r| r.contains(sed)), "{sed}");
    let dir = TempDir::new("image-conf");
    for name in ["tollgate.yaml", "tollgate-etcd.yaml"] {
        let text = read(&format!("conf/{name}")).replace("127.0.0.1:9180", "0.0.0.0:9180");
        assert!(
            text.contains("admin: { listen: \"0.0.0.0:9180\""),
            "{name}: {text}"
        );
        assert!(
            text.contains("listen: [\"0.0.0.0:8080\"]"),
            "{name}: {text}"
        );
        let path = dir.path().join(name);
        std::fs::write(&path, &text).unwrap();
        let (code, out, err) = testkit::run_cmd(bin(), &["check", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 0, "tollgate check {name}: {out}{err}");
    }
}

#[test]
fn healthcheck_command_tells_ready_from_down() {
    let stages = parse_dockerfile(&read("Dockerfile"));
    let hc = args(&stages[1], "HEALTHCHECK");
    assert_eq!(hc.len(), 1);
    let json = hc[0]
        .split_once("CMD ")
        .map(|(_, j)| j)
        .expect("HEALTHCHECK ... CMD [..]");
    let argv: Vec<String> = serde_json::from_str(json).expect("exec-form CMD");
    assert_eq!(argv[0], "bash");
    let script = &argv[argv.len() - 1];
    assert!(script.contains("/dev/tcp/127.0.0.1/9180"), "{script}");

    let run = |port: u16| {
        let s = script.replace("/9180", &format!("/{port}"));
        Command::new(&argv[0])
            .args(&argv[1..argv.len() - 1])
            .arg(s)
            .status()
            .expect("bash")
            .success()
    };
    let backend = Backend::start("b1");
    let gw = start(&format!(
        "routes:\n  - id: r\n    paths: [\"/r\"]\n    upstream: b\nupstreams:\n{}",
        upstream("b", &[&backend])
    ));
    assert!(
        run(gw.admin_addr().port()),
        "healthy gateway reported unhealthy"
    );
    assert!(!run(free_port()), "nothing listening, yet healthy");
    // A listener that is not ready: the proxy port answers 404 to /readyz.
    assert!(!run(gw.proxy_addr().port()), "404 counted as healthy");
}
