//! `tollgate encrypt-key -c FILE [KEY.pem]`: a private key as stored in
//! `<prefix>/certs/<id>` `key` when `tls.key_encryption_keys` is set.

use anyhow::{bail, Context};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Arguments of `tollgate encrypt-key`.
#[derive(Debug, clap::Args)]
pub struct EncryptKeyArgs {
    /// The PEM private key; standard input when absent.
    pub key_file: Option<PathBuf>,
}

/// Prints `enc:v1:…` of the key, encrypted under the first of the config's
/// `tls.key_encryption_keys`.
pub fn encrypt_key(config: &Path, args: &EncryptKeyArgs) -> anyhow::Result<String> {
    let model = crate::config::load_file(config)
        .with_context(|| format!("{} is not a valid config", config.display()))?;
    if !model.keys.is_enabled() {
        bail!(
            "{}: tls.key_encryption_keys is empty; add a key (openssl rand -base64 32)",
            config.display()
        );
    }
    let mut pem = Vec::new();
    match &args.key_file {
        Some(p) => {
            pem = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut pem)
                .context("cannot read standard input")?;
        }
    }
    // Refuse what would be rejected later, while the operator is here.
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(_)) => {}
        _ => bail!("the input holds no PEM private key"),
    }
    Ok(model.keys.encrypt(&pem)?)
}
