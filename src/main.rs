//! The `tollgate` binary: the allocator and CLI parsing, nothing else.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options, read once at start-up (`_RJEM_MALLOC_CONF` in the
/// environment overrides them). A proxy allocates and frees ~100 small
/// objects per request; with jemalloc's defaults its thread cache is
/// garbage-collected every 64 KiB allocated (thousands of times a second
/// under load) and refilled from the arena right after, which cost ~1 µs
/// of a ~24 µs request in bench/proxy.sh. Collecting every 4 MiB and
/// keeping at least 64 objects per size class removes most of that, for
/// some memory the cache keeps (a few MiB per thread at worst; 0.8 MiB
/// more RSS at 10,000 routes + 10,000 instances). Pingora's HTTP/1 client
/// (the `pingora` engine's) allocates a 64 KiB buffer for every response
/// body, and the core engine's reads room for 64 KiB of a big one; past
/// jemalloc's default thread-cache limit (32 KiB), each took the arena's
/// large-extent path, ~2,600 instructions of a ~50,000-instruction request
/// (callgrind). Caching sizes up to 128 KiB per thread keeps them there.
#[cfg(not(target_env = "msvc"))]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(
    c"tcache_gc_incr_bytes:4194304,tcache_nslots_small_min:64,tcache_max:131072".as_ptr(),
);

/// A C string pointer jemalloc can read as its `malloc_conf` symbol.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: it points at a static, immutable C string literal.
unsafe impl Sync for MallocConf {}

#[derive(Parser)]
#[command(name = "tollgate", version, about = "An etcd-native API gateway")]
struct Cli {
    #[command(subcommand)]
    verb: Option<Verb>,
    /// Bootstrap file (for `run`, the default verb, and `check`).
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "conf/tollgate.yaml"
    )]
    config: PathBuf,
    /// Take over the listening sockets of a running tollgate (zero-downtime upgrade).
    #[arg(long, global = true)]
    upgrade: bool,
}

#[derive(Subcommand)]
enum Verb {
    /// Run the gateway (the default).
    Run,
    /// Validate the bootstrap file and exit: 0 if good, 1 naming the bad field.
    Check,
    /// Register a service instance in etcd and keep it registered.
    Register(tollgate::cmd::register::RegisterArgs),
    /// Encrypt a PEM private key with the config's tls.key_encryption_keys
    /// (prints `enc:v1:…`, the value to store as a certificate's `key`).
    EncryptKey(tollgate::cmd::encrypt_key::EncryptKeyArgs),
    /// Print what a consumer stores for an API key (`{"key_sha256": …}`),
    /// or with --password for a password.
    HashSecret(tollgate::cmd::hash_secret::HashSecretArgs),
    /// Check YAML documents, print the diff against etcd, write them.
    Apply(tollgate::cmd::declarative::ApplyArgs),
    /// Check YAML documents and print the diff against etcd; write nothing.
    Diff(tollgate::cmd::declarative::ApplyArgs),
    /// Print routes, upstreams, consumers, certs or settings from etcd.
    Get(tollgate::cmd::declarative::GetArgs),
    /// Print everything in etcd as documents `apply` accepts.
    Export(tollgate::cmd::declarative::TargetArgs),
    /// Print every live gateway's applied revision and lag (from etcd).
    Status(tollgate::cmd::declarative::TargetArgs),
    /// Purge a route's cached answers on every gateway (through etcd).
    Purge(tollgate::cmd::declarative::PurgeArgs),
}

/// Prints `out` or the error, as exit code 0 or 1.
fn print_or_fail(verb: &str, out: anyhow::Result<String>) -> i32 {
    match out {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("tollgate {verb}: {e:#}");
            1
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.verb.unwrap_or(Verb::Run) {
        Verb::Run => match tollgate::cmd::run::run(&cli.config, cli.upgrade) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tollgate: {e:#}");
                1
            }
        },
        Verb::Check => tollgate::cmd::check::check(&cli.config),
        Verb::Register(args) => {
            tollgate::cmd::logging::init(&tollgate::config::LogConfig::default());
            match tollgate::cmd::register::register(args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("tollgate register: {e:#}");
                    1
                }
            }
        }
        Verb::EncryptKey(args) => {
            match tollgate::cmd::encrypt_key::encrypt_key(&cli.config, &args) {
                Ok(sealed) => {
                    println!("{sealed}");
                    0
                }
                Err(e) => {
                    eprintln!("tollgate encrypt-key: {e:#}");
                    1
                }
            }
        }
        Verb::Apply(args) => match tollgate::cmd::declarative::apply(&args, &cli.config) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("tollgate apply: {e:#}");
                1
            }
        },
        Verb::Diff(mut args) => {
            args.dry_run = true;
            match tollgate::cmd::declarative::apply(&args, &cli.config) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("tollgate diff: {e:#}");
                    1
                }
            }
        }
        Verb::Purge(args) => match tollgate::cmd::declarative::purge(&args, &cli.config) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("tollgate purge: {e:#}");
                1
            }
        },
        Verb::Get(args) => {
            print_or_fail("get", tollgate::cmd::declarative::get(&args, &cli.config))
        }
        Verb::Export(args) => print_or_fail(
            "export",
            tollgate::cmd::declarative::export(&args, &cli.config),
        ),
        Verb::Status(args) => print_or_fail(
            "status",
            tollgate::cmd::declarative::status(&args, &cli.config),
        ),
        Verb::HashSecret(args) => match tollgate::cmd::hash_secret::hash_secret(&args) {
            Ok(line) => {
                println!("{line}");
                0
            }
            Err(e) => {
                eprintln!("tollgate hash-secret: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}
