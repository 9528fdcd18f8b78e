//! `tollgate hash-secret`: what a consumer stores instead of its secret.

use anyhow::{bail, Context};
use std::io::Read;

/// Arguments of `tollgate hash-secret`.
#[derive(Debug, clap::Args)]
pub struct HashSecretArgs {
    /// The secret; standard input (one line, its newline dropped) when
    /// absent, which keeps it out of the shell's history.
    pub secret: Option<String>,
    /// Hash a basic-auth password (argon2id) instead of an API key.
    #[arg(long)]
    pub password: bool,
}

/// The consumer JSON fragment: `{"key_sha256": "<hex>"}` for an API key,
/// `{"password_hash": "$argon2id$..."}` for a password.
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
    if args.password {
        let phc = crate::plugins::consumer::hash_password(secret.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
        return Ok(format!("{{\"password_hash\": \"{phc}\"}}"));
    }
    let hex = crate::plugins::consumer::sha256_hex(secret.as_bytes());
    Ok(format!("{{\"key_sha256\": \"{hex}\"}}"))
}
