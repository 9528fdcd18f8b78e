//! Validation errors that name the field: shared with the plugins, which
//! validate their own configs (see [`crate::field_error`]).

pub use crate::field_error::*;
