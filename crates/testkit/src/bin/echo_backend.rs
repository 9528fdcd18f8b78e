//! `echo-backend --name NAME --listen ADDR [--fixed-body]`: the test
//! backend as a standalone server (demo script, benchmarks). Runs forever.

use std::net::SocketAddr;
use std::process::exit;

fn usage(msg: &str) -> ! {
    eprintln!("echo-backend: {msg}\nusage: echo-backend --name NAME --listen ADDR [--fixed-body]");
    exit(2)
}

fn main() {
    let mut name = None;
    let mut listen: Option<SocketAddr> = None;
    let mut fixed_body = false;
    let mut flags = testkit::cli::Flags::from_env();
    while let Some((flag, inline)) = flags.next_flag() {
        let mut value = || {
            flags
                .value(&inline)
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--name" => name = Some(value()),
            "--listen" => {
                let v = value();
                listen = Some(
                    v.parse()
                        .unwrap_or_else(|e| usage(&format!("bad --listen {v}: {e}"))),
                )
            }
            "--fixed-body" => fixed_body = true,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let name = name.unwrap_or_else(|| usage("--name is required"));
    let listen = listen.unwrap_or_else(|| usage("--listen is required"));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| {
                eprintln!("echo-backend: cannot bind {listen}: {e}");
                exit(1)
            });
        eprintln!(
            "echo-backend {name} listening on {}",
            listener.local_addr().unwrap()
        );
        testkit::backend::serve(listener, &name, fixed_body).await
    });
}
