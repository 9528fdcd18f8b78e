//! The last-known-good file (sync rule 6): every applied etcd state is
//! written to `state_dir` with an atomic rename, so a gateway started while
//! etcd is down serves what it served before.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What is persisted: the raw accepted values (a map of key to value),
/// re-validated on load. `K` lets the writer serialise its own map of
/// them without copying it into this one.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LastKnownGood<K = BTreeMap<String, String>> {
    pub revision: i64,
    pub cluster_id: u64,
    pub saved_unix_ms: u64,
    pub kvs: K,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("last-known-good.json")
}

/// Writes `lkg` next to its final name and renames it into place, so a
/// crash mid-write never leaves a torn file.
pub fn save<K: Serialize>(state_dir: &Path, lkg: &LastKnownGood<K>) -> std::io::Result<()> {
    let final_path = path(state_dir);
    let tmp = state_dir.join(".last-known-good.json.tmp");
    // Owner-only: the file holds every certificate's private key (in clear
    // unless tls.key_encryption_keys is set).
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
    };
    let mut f = std::io::BufWriter::with_capacity(256 * 1024, file);
    serde_json::to_writer(&mut f, lkg)?;
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &final_path)?;
    if let Ok(dir) = std::fs::File::open(state_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Reads the file; `Ok(None)` when there is none yet.
pub fn load(state_dir: &Path) -> anyhow::Result<Option<LastKnownGood>> {
    let p = path(state_dir);
    match std::fs::read(&p) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!("{} is not a valid last-known-good file: {e}", p.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = std::env::temp_dir().join(format!("tollgate-lkg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap().is_none());
        let mut lkg: LastKnownGood = LastKnownGood {
            revision: 5,
            ..Default::default()
        };
        lkg.kvs.insert("/tollgate/routes/a".into(), "{}".into());
        save(&dir, &lkg).unwrap();
        lkg.revision = 6;
        save(&dir, &lkg).unwrap();
        let back = load(&dir).unwrap().unwrap();
        assert_eq!(back.revision, 6);
        assert_eq!(back.kvs.len(), 1);
        std::fs::write(path(&dir), b"{torn").unwrap();
        assert!(load(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
