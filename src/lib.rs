//! oip-media: the media service that takes over byte-serving routes from the OIP indexer.
//!
//! Data flows one way: `routes` → `http` (pure RFC decisions) → `store` (mapped files) →
//! `body` (bounded zero-copy chunks). `server` owns sockets and connection limits.

pub mod body;
pub mod config;
pub mod sample;

pub use config::Config;
