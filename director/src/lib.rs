//! The control plane of Director and its two binaries.
//!
//! - `config`: the TOML file → serde structs → `validate()` → `forwarder::model` types;
//!   every error names file, line and column.
