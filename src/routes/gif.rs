//! GIF representations: the one path both GIF routes (`/media/<project>/<file>` and
//! `/api/media/<mediaId>`) take once they have found and described their file — the
//! still poster (`?still=1`, [`super::still`]), a variant (`?format=`,
//! [`super::variant`]), the WebP a browser negotiated (`--auto-format`), or the plain
//! bytes ([`file_response::respond`]).
//!
//! A route parses the query with [`Representation::parse`] (the `400`s for a bad
//! width, format, or a still or variant of something that is not a GIF), opens its
//! file, describes it as a [`Source`], and hands both to [`respond`].
//!
//! # Where a GIF response's headers are set
//! One place builds them: [`file_response::respond`], from a [`FileHeaders`]
//! (`Content-Type`, `Cache-Control`, `ETag`, `Last-Modified`, the extra headers such as
//! `Vary`, plus `Content-Length`, `Accept-Ranges` and `Content-Range`). What goes into
//! that `FileHeaders` is decided by the route and this module's callees:
//! - the route describes the GIF: `media::handle` (`FileHeaders::for_plain_file`, a year
//!   of `immutable`), `api_media::describe` (the manifest's type, private caching,
//!   `Vary: Authorization`, `Content-Disposition`);
//! - a still derives its type and ETag from the GIF's (`still::respond`), a variant its
//!   type, ETag and `Last-Modified` (`variant::describe`, `variant::serve`), and
//!   negotiation adds `Vary: Accept` (`variant::negotiate`);
//! - answers that are not the file (400, 404, 422, 503) come from `still`, `variant`
//!   and `errors`-style helpers beside them, and every `503` from
//!   `admission::retry_later`.

use std::path::Path;
use std::sync::Arc;

use http::{Extensions, HeaderMap, Method, Response};

use super::file_response::{self, FileHeaders};
use super::still::{self, StillAsk, StillQuery};
use super::variant::{self, Negotiated, VariantQuery};
use crate::body::Body;
use crate::state::AppState;
use crate::store::{MappedFile, Root};
use crate::transcode::VariantFormat;

/// The GIF a representation is made from, as its route found and described it.
pub struct Source<'a> {
    /// The media root it lives under.
    pub root: &'a Root,
    /// Its checked path under that root.
    pub relative: &'a Path,
    /// The file as the store mapped it (its identity keys stills and variants).
    pub file: &'a Arc<MappedFile>,
    /// How the route describes the GIF: a still or a variant keeps its `Cache-Control`
    /// and extra headers and derives its ETag from the GIF's.
    pub describe: FileHeaders,
}

/// Which representation of the file a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// The file's own bytes (or, with `--auto-format`, the WebP a browser accepts).
    Plain,
    /// A still poster.
    Still(StillAsk),
    /// A transcoded variant.
    Variant(VariantFormat),
}

impl Representation {
    /// Reads `still`, `w` and `format` from `query`; `is_gif` says whether the route
    /// takes the item for a GIF (by its name, or by its manifest's type). A still is
    /// read first: with it, `format` names the still's encoding. The error is the
    /// route's `400`.
    pub fn parse(
        query: Option<&str>,
        widths: &[u32],
        is_gif: bool,
    ) -> Result<Representation, Box<Response<Body>>> {
        match StillQuery::parse(query, widths) {
            StillQuery::NotAsked => {}
            StillQuery::BadWidth => return Err(Box::new(still::bad_width(widths))),
            StillQuery::BadFormat => return Err(Box::new(still::bad_format())),
            StillQuery::Asked(_) if !is_gif => return Err(Box::new(still::not_a_gif())),
            StillQuery::Asked(ask) => return Ok(Representation::Still(ask)),
        }
        match VariantQuery::parse(query) {
            VariantQuery::NotAsked => Ok(Representation::Plain),
            VariantQuery::BadFormat => Err(Box::new(variant::bad_format())),
            VariantQuery::Asked(_) if !is_gif => Err(Box::new(variant::not_a_gif())),
            VariantQuery::Asked(format) => Ok(Representation::Variant(format)),
        }
    }
}

/// Answers `representation` of `source`. `negotiable`: a plain request may get the WebP variant with `--auto-format` (the
/// route knows the item is a GIF without sniffing it). `extensions` are the request's:
/// they hold its GIF-serving lease, given back while a variant is made.
pub async fn respond(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    extensions: &Extensions,
    source: Source<'_>,
    representation: Representation,
    negotiable: bool,
) -> Response<Body> {
    match representation {
        // Boxed: a still's render state would otherwise size every GIF request's future.
        Representation::Still(ask) => {
            Box::pin(still::respond(state, method, headers, source, ask)).await
        }
        // Boxed for the same reason: a transcode wait is rare and large.
        Representation::Variant(format) => {
            Box::pin(variant::respond(
                state, method, headers, extensions, source, format,
            ))
            .await
        }
        Representation::Plain => {
            // Boxed and only with `--auto-format`: its wait on a variant's mapping would
            // otherwise size every GIF request's future (~1,000 bytes, copied as hyper
            // moves it).
            let describe = if negotiable && state.config.transcode.auto_format {
                match Box::pin(variant::negotiate(state, method, headers, &source)).await {
                    Negotiated::Variant(webp) => return webp,
                    Negotiated::Gif(describe) => describe,
                }
            } else {
                source.describe
            };
            file_response::respond(method, headers, source.file, describe, state.chunk)
        }
    }
}
