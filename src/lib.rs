//! oip-media: the media service that takes over byte-serving routes from the OIP indexer.
//!
//! Data flows one way: `routes` → `http` (pure RFC decisions) → `store` (mapped files) →
//! `body` (bounded zero-copy chunks). `server` owns sockets (which send mapped body
//! bytes with `sendfile`), connection limits and shutdown; `app` builds the shared state
//! from the one [`Config`]. Every filesystem call a request needs runs on `fs_pool`,
//! never on an async worker; every bounded admission point is a gate of `admission`.
//! Beside the byte path: `auth` (owner tokens), `manifest` (content-addressed media's
//! manifests) and `gif` (metadata and stills, read with `read()`, never through a
//! mapping).
//!
//! # What the library exports, and why
//! The library is the service; its callers are the `oip-media` binary, the integration
//! tests and the benches. It exports what they use and nothing else:
//! - [`start`], [`RunningServer`], [`App`], [`Config`], [`StartError`]: what `main` runs
//!   and what every test starts on `127.0.0.1:0`;
//! - `config` (settings and subcommands), `server` (start-up with a shutdown signal, the
//!   descriptor budget), `app`, `state`, `routes` (route families), `startup_log`,
//!   `request_log`, `metrics`: what `main`, the operations tests and the load bench read;
//! - `resolve`, `gun`, `transcode`, `gif`, `fs_pool`, `auth`: components the tests and
//!   benches drive directly (the resolver's memory accounting, the GUN client, the
//!   transcode CLI and its metrics, a GIF's played delay, the pool, token checks);
//! - `sample` (only with the `sample` feature): sample GIFs and corpora for `gen-media`,
//!   the tests and the benches — not part of the service.
//!
//! Everything else (`admission`, `body`, `outbox`, `store`, `http`, `response`, `cors`,
//! `manifest`, `replicas`, `access_log`, `exposition`, `error`, `flight`) is internal:
//! `pub(crate)`, free to change without touching a caller outside the crate.

pub mod access_log;
pub(crate) mod admission;
pub mod admission_settings;
pub mod app;
pub mod auth;
pub(crate) mod body;
pub mod check;
pub mod cli;
pub mod cli_docs;
pub mod config;
pub(crate) mod cors;
pub(crate) mod error;
pub(crate) mod exposition;
pub(crate) mod flight;
pub mod fs_pool;
pub mod gif;
pub mod gun;
pub(crate) mod http;
pub(crate) mod manifest;
pub mod metrics;
pub(crate) mod outbox;
pub(crate) mod replicas;
pub(crate) mod request_body;
pub mod request_log;
pub mod resolve;
pub(crate) mod response;
pub mod routes;
#[cfg(feature = "sample")]
pub mod sample;
pub mod secret;
pub mod server;
pub mod settings;
pub mod startup_log;
pub mod state;
pub(crate) mod store;
pub mod transcode;
pub mod version;

pub use app::App;
pub use config::Config;
pub use error::StartError;
pub use server::{RunningServer, start};
