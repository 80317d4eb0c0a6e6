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
//! One place builds them: [`file_response::respond`], from a [`FileHeaders`](file_response::FileHeaders)
//! (`Content-Type`, `Cache-Control`, `ETag`, `Last-Modified`, the extra headers such as
//! `Vary`, plus `Content-Length`, `Accept-Ranges` and `Content-Range`). What goes into
//! that `FileHeaders` is decided by the route and this module's callees:
//! - the route describes the GIF: `media::handle` (`FileHeaders::for_plain_file`, a year
//!   of `immutable`), `api_media::describe` (the manifest's type, private caching,
//!   `Vary: Authorization`, `Content-Disposition`);
//! - a still derives its type and ETag from the GIF's (`still::respond`), a variant its
//!   type, ETag and `Last-Modified` (`variant::describe`, `variant::serve`), and
//!   negotiation adds `Vary: Accept` (`variant::negotiate`);
//! - answers that are not the file: the `400`s from `still` and `variant` (through
//!   [`Representation::parse`]), a component's failure from [`gif_error`] and
//!   [`variant_error`](super::gif_source::variant_error) (the one place a `GifError` or a `VariantError` becomes a
//!   response), a file that cannot be opened or resolved from `file_response`
//!   (`open_or`, `resolve_or`), and every `503` from `admission::retry_later`.

use futures_util::future::BoxFuture;
use http::{Extensions, HeaderMap, Method, Response};

use super::file_response;
pub use super::gif_source::{Source, gif_error};
use super::still::{self, StillAsk, StillQuery};
use super::variant::{self, Negotiated, VariantQuery};
use crate::body::Body;
use crate::state::AppState;
use crate::transcode::VariantFormat;

/// Which representation of the file a request asks for. Not `Copy`: moved into
/// [`respond`], it takes no room in the route's future while the answer is awaited.
#[derive(Debug, PartialEq, Eq)]
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
    // Inlined: one call per GIF request, as the two parses it replaced were.
    #[inline(always)]
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

/// The answer to a representation: at once (the plain bytes, no await), or a future
/// to await. The future is boxed, so a route that awaits it grows by a pointer: a
/// still's render state or a transcode wait would otherwise size every GIF request's
/// future (and `--auto-format`'s wait on a variant's mapping ~1,000 bytes, copied as
/// hyper moves it), which `app::future_size` keeps small.
// Not boxed: `Now` is every plain GIF answer, returned at once and (inlined) never moved;
// a box would be an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Answer<'a> {
    /// The response, built without waiting.
    Now(Response<Body>),
    /// The response once this future is done.
    Later(BoxFuture<'a, Response<Body>>),
}

/// Answers `representation` of `source`. `negotiable`: a plain request may get the
/// WebP variant with `--auto-format` (the route knows the item is a GIF without
/// sniffing it). `extensions` are the request's: they hold its GIF-serving lease,
/// given back while a variant is made.
// Inlined into both routes: out of line, the plain answer was built and then copied out
// through `Answer` (callgrind: +93 instructions of memcpy and +45 of call per request).
#[inline(always)]
pub fn respond<'a>(
    state: &'a AppState,
    method: &'a Method,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
    source: Source<'a>,
    representation: Representation,
    negotiable: bool,
) -> Answer<'a> {
    match representation {
        Representation::Still(ask) => Answer::Later(Box::pin(still::respond(
            state, method, headers, source, ask,
        ))),
        Representation::Variant(format) => Answer::Later(Box::pin(variant::respond(
            state, method, headers, extensions, source, format,
        ))),
        Representation::Plain if negotiable && state.config.transcode.auto_format => {
            Answer::Later(Box::pin(async move {
                let describe = match variant::negotiate(state, method, headers, &source).await {
                    Negotiated::Variant(webp) => return webp,
                    Negotiated::Gif(describe) => describe,
                };
                file_response::respond(method, headers, source.file, describe, state.chunk)
            }))
        }
        Representation::Plain => Answer::Now(file_response::respond(
            method,
            headers,
            source.file,
            source.describe,
            state.chunk,
        )),
    }
}
