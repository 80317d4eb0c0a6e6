//! oip-media: the media service that takes over byte-serving routes from the OIP indexer.
//!
//! Data flows one way: `routes` → `http` (pure RFC decisions) → `store` (mapped files) →
//! `body` (bounded zero-copy chunks). `server` owns sockets (which send mapped body
//! bytes with `sendfile`), connection limits and shutdown; `app` builds the shared state
//! from the one [`Config`]. Every filesystem call a request needs runs on `fs_pool`,
//! never on an async worker. Beside the byte
//! path: `auth` (owner tokens), `manifest` (content-addressed media's manifests) and
//! `gif` (metadata and stills, read with `read()`, never through a mapping).

pub mod access_log;
pub mod admission;
pub mod app;
pub mod auth;
pub mod body;
pub mod config;
pub mod cors;
pub mod error;
pub mod exposition;
pub(crate) mod flight;
pub mod fs_pool;
pub mod gif;
pub mod gun;
pub mod http;

pub mod manifest;
pub mod metrics;
pub mod outbox;
pub mod replicas;
pub mod request_log;
pub mod resolve;
pub mod response;
pub mod routes;
pub mod sample;
pub mod server;

pub mod startup_log;
pub mod state;
pub mod store;
pub mod transcode;

pub use app::App;
pub use config::Config;
pub use error::StartError;
pub use server::{RunningServer, start};
