//! Intentionally empty: this crate only adds features to shared dependencies (see its Cargo.toml).
