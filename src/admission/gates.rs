//! The gates of the service, built once from the configuration: [`GateId`] names the
//! gate a route is declared behind, [`Gates`] holds one [`Gate`] per bounded admission
//! point (and the budgets handlers charge themselves). The state (`state::gates`)
//! builds them from the configuration: this module imports no settings, so every
//! component may import it.

use std::sync::Arc;

use super::Gate;

/// Which bounded admission a request goes through; declared per route in the route
/// table (which may pick one by the request's query string or path, see
/// `routes::GateRule`).
///
/// A new admission point (resolves, transcodes…) is a variant here, a field of
/// [`Gates`] built from its settings in `state::gates`, and the route-table
/// lines that name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateId {
    /// No bound beyond the connection's own (health and metrics answer from memory;
    /// `/api/resolve` takes
    /// [`Gates::resolve`] itself, after reading the body).
    Open,
    /// The media gate: requests that send file bytes and wait on nothing else
    /// (`--max-in-flight`, `--max-queue`, `--queue-timeout`), metrics `oip_media_media_*`.
    Media,
    /// Still posters (`?still=1`), which may wait for a render (`--still-max-in-flight`,
    /// `--still-max-queue`, `--still-queue-timeout`), metrics `oip_media_still_*`.
    Still,
    /// `/api/media/<id>/info`, which may wait for a GIF parse (`--info-max-in-flight`,
    /// `--info-max-queue`, `--info-queue-timeout`), metrics `oip_media_info_*`.
    Info,
    /// `POST /gun-relay/put`: a buffered body and a relay call (`--gun-put-max-in-flight`,
    /// `--gun-put-max-queue`, `--gun-put-queue-timeout`), metrics `oip_media_gun_put_*`.
    GunPut,
    /// `GET /gun-relay/get`: an answer from the miss cache, or a wait for the relay
    /// (`--gun-get-max-in-flight`, `--gun-get-max-queue`, `--gun-get-queue-timeout`),
    /// metrics `oip_media_gun_get_*`.
    GunGet,
}

/// The gates behind [`GateId`]s, one per bounded admission, each registering its
/// metrics under its own prefix.
#[derive(Debug)]
pub struct Gates {
    /// [`GateId::Media`].
    pub media: Arc<Gate>,
    /// [`GateId::Still`].
    pub still: Arc<Gate>,
    /// [`GateId::Info`].
    pub info: Arc<Gate>,
    /// [`GateId::GunPut`].
    pub gun_put: Arc<Gate>,
    /// [`GateId::GunGet`].
    pub gun_get: Arc<Gate>,
    /// Resolutions at once and their queue (`--resolve-max-in-flight`,
    /// `--resolve-max-queue`, `--resolve-queue-timeout`), metrics `oip_media_resolve_*`.
    /// Taken by `/api/resolve`'s handler itself once the body has been read, not by
    /// the route table before it: a client trickling its body must hold no slot. So
    /// the route is declared [`GateId::Open`].
    pub resolve: Arc<Gate>,
    /// The budget of buffered request bodies, in KiB (`--request-body-budget`,
    /// `--request-body-queue`, `--request-body-queue-timeout`), metrics
    /// `oip_media_request_body_*` (in bytes). Charged by the shared body reader
    /// (`http::request_body::read_bounded`) as bytes arrive, not by the route table.
    pub request_body: Arc<Gate>,
    /// The share of that budget `/api/resolve` bodies may take, in KiB
    /// (`--resolve-body-budget`, with the body budget's queue and wait), metrics
    /// `oip_media_resolve_body_*` (in bytes). Taken by the resolve handler before the body
    /// budget itself.
    pub resolve_body: Arc<Gate>,
}

impl Gates {
    /// The gate of `id`, if it is bounded.
    pub fn gate(&self, id: GateId) -> Option<&Gate> {
        match id {
            GateId::Open => None,
            GateId::Media => Some(&self.media),
            GateId::Still => Some(&self.still),
            GateId::Info => Some(&self.info),
            GateId::GunPut => Some(&self.gun_put),
            GateId::GunGet => Some(&self.gun_get),
        }
    }
}
