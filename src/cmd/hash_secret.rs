//! `tollgate hash-secret`: what a consumer stores instead of its secret.

use anyhow::{bail, Context};
use std::io::Read;

/// Arguments of `tollgate hash-secret`.
#[derive(Debug, clap::Args)]
pub struct HashSecretArgs {
    /// The secret; standard input (one line, its newline dropped) when
    /// absent, which keeps it out of the shell's history.
    pub secret: Option<String>,
}

/// The consumer JSON fragment for an API key: `{"key_sha256": "<hex>"}`.
pub fn hash_secret(args: &HashSecretArgs) -> anyhow::Result<String> {
    let secret = match &args.secret {
        Some(s) => s.clone(),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read standard input")?;
            s.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if secret.is_empty() {
        bail!("the secret is empty");
    }
    let hex: String = crate::plugins::consumer::sha256(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("{{\"key_sha256\": \"{hex}\"}}"))
}
