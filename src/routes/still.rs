//! `?still=1[&w=<width>][&format=png|webp|jpeg]` on the GIF routes: the first frame as
//! a PNG (default), lossless WebP or JPEG, rendered once into the derived folder and
//! then served through the same mapped path as any file, with an ETag derived from the
//! source's and the source's caching headers.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::file_response::{self, FileHeaders};
use super::gif::{Source, gif_error};
use crate::body::Body;
use crate::gif::still::StillFormat;
use crate::http::query;
use crate::response;
use crate::state::AppState;
use crate::store::{MappedFile, StoreError};

/// A still as asked for: its width (`None`: the GIF's own) and format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StillAsk {
    /// An allowed width, or the GIF's own size.
    pub width: Option<u32>,
    /// The encoding (`&format=`, PNG by default).
    pub format: StillFormat,
}

/// What the query string asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StillQuery {
    /// No `still=1` (or `still=true`): serve the file itself.
    NotAsked,
    /// A still.
    Asked(StillAsk),
    /// A still at a width that is not on the allow-list: 400.
    BadWidth,
    /// A still in a format that is not `png`, `webp` or `jpeg`: 400.
    BadFormat,
}

/// True when `query` asks for a still (`still=1` or `still=true`), whatever else it
/// says. The route table admits such a request as a still ([`crate::admission::GateId::Still`])
/// and [`StillQuery::parse`] answers it as one: one test, so the two never disagree.
pub fn asks_for_still(query: Option<&str>) -> bool {
    query::param_is_one_of(query, "still", &["1", "true"])
}

impl StillQuery {
    /// Reads `still`, `w` and `format` from `query`; `w` and `format` only count with
    /// `still` (without it, `format` asks for a video variant).
    pub fn parse(query: Option<&str>, allowed: &[u32]) -> StillQuery {
        if !asks_for_still(query) {
            return StillQuery::NotAsked;
        }
        let format = match query::param(query, "format") {
            None => StillFormat::Png,
            Some(name) => match StillFormat::parse(&name) {
                Some(format) => format,
                None => return StillQuery::BadFormat,
            },
        };
        let width = match query::param(query, "w") {
            None => None,
            Some(w) => match w.parse::<u32>() {
                Ok(w) if allowed.contains(&w) => Some(w),
                _ => return StillQuery::BadWidth,
            },
        };
        StillQuery::Asked(StillAsk { width, format })
    }
}

/// 400 naming the still formats that are allowed.
pub fn bad_format() -> Response<Body> {
    let list = StillFormat::ALL
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(", ");
    response::json_error(
        StatusCode::BAD_REQUEST,
        &format!("format must be one of: {list} (with still=1)"),
    )
}

/// 400 naming the widths that are allowed.
pub fn bad_width(allowed: &[u32]) -> Response<Body> {
    let list = allowed
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    response::json_error(
        StatusCode::BAD_REQUEST,
        &format!("w must be one of: {list}"),
    )
}

/// 400 for `still=1` on something that is not a GIF.
pub fn not_a_gif() -> Response<Body> {
    response::json_error(
        StatusCode::BAD_REQUEST,
        "Still frames are only available for GIFs",
    )
}

/// Answers a still request for `source`.
pub async fn respond(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    source: Source<'_>,
    ask: StillAsk,
) -> Response<Body> {
    let StillAsk { width, format } = ask;
    let resolved = file_response::resolve_or(
        &state.fs,
        source.root,
        source.relative,
        response::not_found,
        |_| (),
    )
    .await;
    let path = match resolved {
        Ok((path, ())) => path,
        Err(refused) => return *refused,
    };
    let mut suffix = match width {
        Some(w) => format!("-still-w{w}"),
        None => "-still".to_owned(),
    };
    // PNG keeps the tags it always had; other formats are other representations.
    if format != StillFormat::Png {
        suffix.push('-');
        suffix.push_str(format.name());
    }
    let describe = FileHeaders {
        content_type: HeaderValue::from_static(format.content_type()),
        cache_control: source.describe.cache_control,
        etag: source.describe.etag.derived(&suffix),
        extra: source.describe.extra,
        last_modified: None,
    };
    let chunk = state.chunk;
    // Twice at most: a still found on disk may be evicted before we map it; the second
    // pass renders it again and keeps the bytes in hand.
    for _ in 0..2 {
        let still = match state
            .gifs
            .still(path.clone(), source.file.identity, width, format)
            .await
        {
            Ok(still) => still,
            Err(error) => return gif_error(&error),
        };
        match state
            .store
            .open(state.gifs.derived_root(), Path::new(&still.name))
            .await
        {
            Ok(file) => return file_response::respond(method, headers, &file, describe, chunk),
            Err(StoreError::Busy(busy)) => {
                return match still.fresh {
                    Some(png) => {
                        file_response::respond(method, headers, &in_memory(png), describe, chunk)
                    }
                    None => file_response::filesystem_unavailable(busy),
                };
            }
            Err(StoreError::NotFound) => {
                if let Some(image) = still.fresh {
                    // Evicted the moment it was written (a derived bound smaller than
                    // one still), never written (the folder is unusable, read-only or
                    // full), or refused: answer from the bytes we rendered.
                    let file = in_memory(image);
                    return file_response::respond(method, headers, &file, describe, chunk);
                }
            }
            Err(error) => {
                if let Some(image) = still.fresh {
                    // Rendered by this request: the bytes in hand are the answer, whatever
                    // became of the file.
                    let file = in_memory(image);
                    return file_response::respond(method, headers, &file, describe, chunk);
                }
                tracing::error!(name = %still.name, %error, "cannot serve still");
                return response::json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Cannot read still",
                );
            }
        }
    }
    response::json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Still not available; try again",
    )
}

fn in_memory(png: Bytes) -> Arc<MappedFile> {
    Arc::new(MappedFile::in_memory(png, SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_still_and_width() {
        let allowed = [90, 180, 360];
        let p = |q: &str| StillQuery::parse(Some(q), &allowed);
        let png = |width| {
            StillQuery::Asked(StillAsk {
                width,
                format: StillFormat::Png,
            })
        };
        assert_eq!(StillQuery::parse(None, &allowed), StillQuery::NotAsked);
        assert_eq!(p("w=90"), StillQuery::NotAsked, "w alone changes nothing");
        assert_eq!(
            p("format=webp"),
            StillQuery::NotAsked,
            "a variant, not a still"
        );
        assert_eq!(p("still=0"), StillQuery::NotAsked);
        assert_eq!(p("still=1"), png(None));
        assert_eq!(p("still=true&w=180"), png(Some(180)));
        assert_eq!(p("w=360&still=1"), png(Some(360)));
        assert_eq!(p("still=1&w=91"), StillQuery::BadWidth);
        assert_eq!(p("still=1&w="), StillQuery::BadWidth);
        assert_eq!(p("still=1&w=-90"), StillQuery::BadWidth);
        assert_eq!(p("still=1&w=090"), png(Some(90)));
        assert_eq!(
            p("still=1&w=90&format=jpeg"),
            StillQuery::Asked(StillAsk {
                width: Some(90),
                format: StillFormat::Jpeg
            })
        );
        assert_eq!(
            p("still=1&format=webp"),
            StillQuery::Asked(StillAsk {
                width: None,
                format: StillFormat::Webp
            })
        );
        assert_eq!(p("still=1&format=mp4"), StillQuery::BadFormat);
        assert_eq!(p("still=1&format="), StillQuery::BadFormat);
    }
}
