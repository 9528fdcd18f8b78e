//! The harness' private tokio runtime, shared by every helper in the process.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// The shared multi-thread runtime (two worker threads, created on first use).
/// Backends, lease keep-alives and etcd calls all run here.
pub fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("testkit-rt")
            .enable_all()
            .build()
            .expect("testkit: cannot build tokio runtime")
    })
}

/// Run `fut` to completion on the shared runtime from blocking test code.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    rt().block_on(fut)
}
