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
//! The library is the service; its callers are the `oip-media` binary (`src/main.rs`),
//! `gen-media` (`src/bin/`), the integration tests and the benches. It exports what they
//! use and nothing else:
//! - [`start`], [`RunningServer`], [`Config`], [`StartError`]: what `main` runs and what
//!   every test starts on `127.0.0.1:0`;
//! - for `main`: `cli` and `cli_docs` (the command line, completions, man page), `check`,
//!   `startup_log`, `request_log`, `access_log`, `app` (the sample URL it logs), `version`;
//! - `config` (the settings groups a test changes), `server` (start-up with a shutdown
//!   signal), `state` and `routes` (the route families the operations tests and the load
//!   bench read), `metrics`: for `main`, the tests and the benches;
//! - `resolve`, `gun`, `transcode`, `gif`, `fs_pool`, `auth`: components the tests and
//!   benches drive directly (the resolver's memory accounting, the GUN client, the
//!   transcode CLI and its metrics, a GIF's played delay, the pool, token checks);
//! - `sample` (only with the `sample` feature): sample GIFs and corpora for `gen-media`,
//!   the tests and the benches — not part of the service.
//!
//! Inside those modules, only what these callers name is `pub`, with the types their
//! signatures need; the rest is `pub(crate)`. Every other module (`admission`,
//! `admission_settings`, `body`, `outbox`, `store`, `http`, `response`, `cors`,
//! `manifest`, `replicas`, `exposition`, `error`, `flight`, `request_body`, `secret`,
//! `settings`) is internal: `pub(crate)`, free to change without touching a caller outside
//! the crate.

pub mod access_log;
pub(crate) mod admission;
pub(crate) mod admission_settings;
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
pub(crate) mod secret;
pub mod server;
pub(crate) mod settings;
pub mod startup_log;
pub mod state;
pub(crate) mod store;
pub mod transcode;
pub mod version;

pub use config::Config;
pub use error::StartError;
pub use server::{RunningServer, start};
