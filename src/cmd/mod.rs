//! The CLI verbs: `run` (the default), `check`, `register`, `encrypt-key`,
//! `hash-secret`, and the declarative ones (`apply`, `diff`, `get`,
//! `export`, `status`).

pub mod check;
pub mod declarative;
pub mod encrypt_key;
pub mod hash_secret;
pub mod logging;
pub mod notify;
mod preflight;
pub mod register;
pub mod run;
mod shutdown;
