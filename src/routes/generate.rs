//! Generated audio (SPEC §1C): `GET|HEAD /api/generate/media?id=<file>`,
//! `/api/generate/media/<path>` and `/api/media?id=<file>`, all served from the
//! generated-media folder with the same ranges and preconditions as `/media`.
//!
//! The indexer's `?id=` form joined the value onto its folder as given, so `../` walked
//! out of it. Here the decoded value goes through the same segment rules as a URL path
//! (no empty, dot or hidden segments, no `\` or NUL) and the store's confinement check.

use std::path::PathBuf;

use http::request::Parts;
use http::{HeaderValue, Request, Response};

use super::file_response::{self, FileHeaders};
use crate::body::Body;
use crate::http::path::{PathRejection, safe_relative_decoded, safe_relative_path};
use crate::http::query;
use crate::response;
use crate::state::AppState;

/// Path of the route; `<path>` forms continue after a `/`.
pub const PREFIX: &str = "/api/generate/media";

/// Generated files keep their names when regenerated, so clients must revalidate every
/// time; the ETag and `Last-Modified` make that a 304. The indexer sent the same.
const CACHE_CONTROL: HeaderValue = HeaderValue::from_static("public, max-age=0");

/// Answers `/api/generate/media…`.
pub async fn handle<B>(state: &AppState, request: Request<B>) -> Response<Body> {
    let path = request.uri().path();
    let relative = match path.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('/')) {
        Some(tail) => safe_relative_path(tail),
        None => from_query(request.uri().query()),
    };
    serve(state, request.into_parts().0, relative).await
}

/// Answers `/api/media?id=<file>` (the same folder and rules).
pub async fn handle_query<B>(state: &AppState, request: Request<B>) -> Response<Body> {
    let relative = from_query(request.uri().query());
    serve(state, request.into_parts().0, relative).await
}

fn from_query(query: Option<&str>) -> Result<PathBuf, PathRejection> {
    let id = query::param(query, "id").ok_or(PathRejection::EmptySegment)?;
    safe_relative_decoded(&id)
}

async fn serve(
    state: &AppState,
    request: Parts,
    relative: Result<PathBuf, PathRejection>,
) -> Response<Body> {
    let method = &request.method;
    let relative = match relative {
        Ok(relative) => relative,
        Err(reason) => {
            tracing::debug!(uri = %request.uri, %reason, "refused generated-media path");
            return response::not_found();
        }
    };
    let root = match state.generated_root.open(&state.fs).await {
        Ok(Some(root)) => root,
        Ok(None) => return response::not_found(),
        Err(busy) => return file_response::filesystem_unavailable(busy),
    };
    let file =
        match file_response::open_or(&state.store, root, &relative, response::not_found).await {
            Ok(file) => file,
            Err(refused) => return *refused,
        };
    let describe = FileHeaders::for_plain_file(&relative, &file, CACHE_CONTROL);
    file_response::respond(method, &request.headers, &file, describe, state.chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_ids_are_confined() {
        assert_eq!(from_query(Some("id=abc.mp3")), Ok(PathBuf::from("abc.mp3")));
        assert_eq!(
            from_query(Some("id=jfk%2Fa.mp3")),
            Ok(PathBuf::from("jfk/a.mp3"))
        );
        for hostile in [
            None,
            Some("x=1"),
            Some("id="),
            Some("id=../x"),
            Some("id=%2e%2e/x"),
            Some("id=%2E%2E%2Fx"),
            Some("id=/etc/passwd"),
            Some("id=%2Fetc%2Fpasswd"),
            Some("id=a/../../x"),
            Some("id=..%5Cx"),
            Some("id=.env"),
        ] {
            assert!(from_query(hostile).is_err(), "{hostile:?}");
        }
    }
}
