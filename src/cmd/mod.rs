//! The CLI verbs: `run` (the default), `check`, `register`.

pub mod check;
pub mod logging;
pub mod notify;
mod preflight;
pub mod register;
pub mod run;
mod shutdown;
