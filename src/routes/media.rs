//! `GET|HEAD /media/<project>/<file>`: the exercise-GIF route (SPEC §1A), served from
//! `MEDIA_DIR/web` with the indexer's headers and none of its defects. `?still=1`
//! on a GIF asks for a poster, `?format=` for an MP4, WebM or WebP variant: the one GIF
//! representation path of [`super::gif`].

use std::path::Path;

use http::{HeaderValue, Request, Response};

use super::file_response::{self, FileHeaders};
use super::gif::{self, Representation, Source};
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
    let representation =
        match Representation::parse(request.uri().query(), state.gifs.widths(), is_gif) {
            Ok(representation) => representation,
            Err(refused) => return *refused,
        };
    let file =
        match file_response::open_or(&state.store, &state.web_root, relative, response::not_found)
            .await
        {
            Ok(file) => file,
            Err(refused) => return *refused,
        };
    let describe = FileHeaders::for_plain_file(relative, &file, CACHE_CONTROL);
    let source = Source {
        root: &state.web_root,
        relative,
        file: &file,
        describe,
    };
    // Bound before the await, so only the boxed future (not a whole response) is held
    // across it; the request's parts are borrowed in the call, not kept in locals.
    let later = match gif::respond(
        state,
        method,
        request.headers(),
        request.extensions(),
        source,
        representation,
        is_gif,
    ) {
        gif::Answer::Now(response) => return response,
        gif::Answer::Later(later) => later,
    };
    later.await
}
