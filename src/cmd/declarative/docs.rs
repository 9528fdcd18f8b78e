//! The files `tollgate apply` reads and `tollgate export` writes: YAML
//! documents (`---` between them), each one resource:
//!
//! ```yaml
//! kind: route          # route | upstream | consumer | cert | settings
//! id: users            # not for settings
//! spec: {paths: ["/users/*rest"], upstream: users}
//! ```

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

use crate::source::document::Kind;

/// One resource, and where it was read.
#[derive(Debug, Clone)]
pub struct Doc {
    pub kind: Kind,
    pub id: String,
    pub spec: Value,
    /// `file.yaml[3]`, for errors.
    pub origin: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    spec: Value,
}

fn kind_named(name: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| k.name() == name)
}

/// Every `.yaml`, `.yml` and `.json` file under `path` (sorted), or `path`.
fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))?
    {
        let p = entry?.path();
        if p.is_dir() {
            out.extend(files(&p)?);
        } else if p
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every document under `paths`; the first bad one is an error
/// naming its file and place.
pub fn read(paths: &[PathBuf]) -> anyhow::Result<Vec<Doc>> {
    let mut docs: Vec<Doc> = Vec::new();
    for path in paths {
        for file in files(path)? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
                let origin = format!("{}[{i}]", file.display());
                let raw = match crate::field_error::deserialize_at::<_, Raw>(de) {
                    Ok(r) => r,
                    Err(e) if e.message.contains("EOF") || e.message.contains("empty") => continue,
                    Err(e) => bail!("{origin}: {e}"),
                };
                let Some(kind) = kind_named(&raw.kind) else {
                    bail!(
                        "{origin}: kind: {:?} is not route, upstream, consumer, cert or settings",
                        raw.kind
                    );
                };
                let id = match (kind, raw.id) {
                    (Kind::Settings, None) => String::new(),
                    (Kind::Settings, Some(_)) => bail!("{origin}: id: settings have no id"),
                    (_, Some(id)) if !id.is_empty() => id,
                    _ => bail!("{origin}: id: every {} needs one", kind.name()),
                };
                if let Some(prev) = docs.iter().find(|d| d.kind == kind && d.id == id) {
                    bail!(
                        "{origin}: {} {id:?} is also in {}",
                        kind.name(),
                        prev.origin
                    );
                }
                docs.push(Doc {
                    kind,
                    id,
                    spec: raw.spec,
                    origin,
                });
            }
        }
    }
    Ok(docs)
}

/// `docs` as the YAML stream [`read`] accepts.
pub fn write(docs: &[Doc]) -> anyhow::Result<String> {
    let mut out = String::new();
    for d in docs {
        let raw = Raw {
            kind: d.kind.name().to_string(),
            id: (d.kind != Kind::Settings).then(|| d.id.clone()),
            spec: d.spec.clone(),
        };
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&raw)?);
    }
    Ok(out)
}
