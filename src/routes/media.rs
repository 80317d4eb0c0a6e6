//! `GET|HEAD /media/<project>/<file>`: the exercise-GIF route (SPEC §1A), served from
//! `MEDIA_DIR/web` with the indexer's headers and none of its defects. `?still=1`
//! on a GIF hands over to [`super::still`] for a poster, `?format=` to
//! [`super::variant`] for an MP4, WebM or WebP variant.

use std::path::Path;

use http::{HeaderValue, Request, Response};

use super::file_response::{self, FileHeaders};
use super::still::StillQuery;
use super::variant::{self, Negotiated, VariantQuery};
use crate::body::Body;
use crate::http::path::safe_relative;
use crate::response;
use crate::state::AppState;

/// Path prefix of this route.
pub const PREFIX: &str = "/media/";

/// The GIFs never change under a name (new content gets a new file name), so a year and
/// `immutable`, exactly as the indexer sent.
const CACHE_CONTROL: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");

/// Answers one `/media/…` request (GET or HEAD: the route table gates methods).
pub async fn handle<B>(state: &AppState, request: Request<B>) -> Response<Body> {
    let method = request.method();
    let tail = request
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .unwrap_or_default();
    // Borrowed from the URI for every name with nothing percent-encoded in it.
    let relative = match safe_relative(tail) {
        Ok(relative) => relative,
        Err(reason) => {
            tracing::debug!(path = request.uri().path(), %reason, "refused media path");
            return response::not_found();
        }
    };
    let relative = Path::new(relative.as_ref());
    // The query string is ignored, except for a still poster of a GIF (`?still=1`) or
    // a variant of one (`?format=`).
    let is_gif = file_response::is_gif(relative);
    let still = match StillQuery::parse(request.uri().query(), state.gifs.widths()) {
        StillQuery::NotAsked => None,
        StillQuery::BadWidth => return super::still::bad_width(state.gifs.widths()),
        StillQuery::BadFormat => return super::still::bad_format(),
        StillQuery::Asked(_) if !is_gif => return super::still::not_a_gif(),
        StillQuery::Asked(ask) => Some(ask),
    };
    let variant = match still.map_or_else(
        || VariantQuery::parse(request.uri().query()),
        |_| VariantQuery::NotAsked,
    ) {
        VariantQuery::NotAsked => None,
        VariantQuery::BadFormat => return variant::bad_format(),
        VariantQuery::Asked(_) if !is_gif => return variant::not_a_gif(),
        VariantQuery::Asked(format) => Some(format),
    };
    let file =
        match file_response::open_or(&state.store, &state.web_root, relative, response::not_found)
            .await
        {
            Ok(file) => file,
            Err(refused) => return *refused,
        };
    let describe = FileHeaders::for_plain_file(relative, &file, CACHE_CONTROL);
    let source = super::still::Source {
        root: &state.web_root,
        relative,
        file: &file,
        describe,
    };
    let headers = request.headers();
    if let Some(ask) = still {
        // Boxed: a still's render state would otherwise size every GIF request's future.
        return Box::pin(super::still::respond(state, method, headers, source, ask)).await;
    }
    if let Some(format) = variant {
        // Boxed for the same reason: a transcode wait is rare and large.
        let extensions = request.extensions();
        return Box::pin(variant::respond(
            state, method, headers, extensions, source, format,
        ))
        .await;
    }
    // Boxed and only with `--auto-format`: its wait on a variant's mapping would
    // otherwise size every GIF request's future (~1,000 bytes, copied as hyper moves it).
    let describe = if is_gif && state.config.transcode.auto_format {
        match Box::pin(variant::negotiate(state, method, headers, &source)).await {
            Negotiated::Variant(webp) => return webp,
            Negotiated::Gif(describe) => describe,
        }
    } else {
        source.describe
    };
    file_response::respond(method, headers, &file, describe, state.chunk)
}
