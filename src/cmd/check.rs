//! `tollgate check -c FILE`: validate like `nginx -t`.

use std::path::Path;

use crate::config::load_file;

/// Exit code 0 and a summary when the file is good; 1 and the bad field
/// otherwise.
pub fn check(path: &Path) -> i32 {
    match load_file(path) {
        Ok(m) => {
            let mode = if m.bootstrap.etcd.is_some() {
                "etcd"
            } else {
                "standalone"
            };
            println!(
                "{}: ok ({mode}: {} routes, {} upstreams)",
                path.display(),
                m.routes.len(),
                m.upstreams.len()
            );
            0
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            1
        }
    }
}
