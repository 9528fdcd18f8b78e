//! The `tollgate` binary: CLI parsing and nothing else.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    };
    std::process::exit(code);
}
