//! Builds the response for a mapped file from an [`crate::http::FileOutcome`] — the second half
//! of "decide, then build". Shared by every route that sends file bytes, so they all get
//! the same ranges, preconditions and headers.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::body::Body;
use crate::http::conditional::EntityTag;
use crate::http::file_head::{Described, FULL_RESPONSE_HEADERS};
use crate::http::{self as rfc, FileOutcome, Validators, multipart};
use crate::response;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::fs_pool::{FsPool, FsPoolError};
use crate::store::{MappedFile, Root, Store, StoreError};

/// How one route describes its files.
#[derive(Debug, Clone)]
pub struct FileHeaders {
    /// `Content-Type` of the representation.
    pub content_type: HeaderValue,
    /// `Cache-Control` (also sent on 304).
    pub cache_control: HeaderValue,
    /// The entity tag.
    pub etag: EntityTag,
    /// Route-specific extras (e.g. `Content-Disposition`, `Vary`), sent on 200/206/304.
    pub extra: HeaderMap,
    /// `Last-Modified` to send instead of the file's own modification time: a derived
    /// file (a variant made again after an eviction) keeps its source's validators.
    pub last_modified: Option<SystemTime>,
}

impl FileHeaders {
    /// How a plain file on disk is described: type by extension, the indexer's weak
    /// ETag from size and mtime (the file version's, shared), and the route's
    /// `Cache-Control`. `cache_control` is a constant of the route's, so no request validates its bytes
    /// again (`HeaderValue::from_static` checks them at run time when not in a const).
    pub fn for_plain_file(relative: &Path, file: &MappedFile, cache_control: HeaderValue) -> Self {
        FileHeaders {
            content_type: content_type_for(relative),
            cache_control,
            // Rendered once per file version (see `MappedFile::validators`).
            etag: file.validators().etag.clone(),
            extra: HeaderMap::new(),
            last_modified: None,
        }
    }
}

/// Answers GET or HEAD for `file`. HEAD gets GET's headers and no body, and never
/// touches the file's bytes. The body knows `file`, so the socket can send its bytes
/// with `sendfile` (see `body` and `server::zero_copy`).
pub fn respond(
    method: &Method,
    request_headers: &HeaderMap,
    file: &Arc<MappedFile>,
    describe: FileHeaders,
    chunk: usize,
) -> Response<Body> {
    let len = file.len();
    let validators = Validators {
        etag: &describe.etag,
        last_modified: describe.last_modified.unwrap_or(file.modified),
    };
    let outcome = rfc::decide(method, request_headers, len, validators);
    let head = method == Method::HEAD;
    if outcome == FileOutcome::Full
        && describe.extra.is_empty()
        && let Some(file_head) = file.whole_file_head(Described {
            content_type: &describe.content_type,
            cache_control: &describe.cache_control,
            etag: &describe.etag,
            last_modified: describe.last_modified,
        })
    {
        // The common answer, a whole file: its fields were rendered once for this file
        // version and ride with the body (see `http::file_head`), so this response's
        // map starts empty and allocates only for the app's own fields.
        let mut body = if head {
            Body::empty()
        } else {
            Body::from_file(Arc::clone(file), vec![file.bytes.clone()], chunk)
        };
        body.set_file_head(Arc::clone(file_head));
        return Response::new(body);
    }

    let (status, body_segments, content_len, content_type, content_range) = match outcome {
        FileOutcome::Full => (
            StatusCode::OK,
            vec![file.bytes.clone()],
            len,
            describe.content_type.clone(),
            None,
        ),
        FileOutcome::Partial(range) => (
            StatusCode::PARTIAL_CONTENT,
            // `decide` clamps ranges to the file, so the slice is in bounds.
            vec![file.bytes.slice(range.start as usize..=range.end as usize)],
            range.len(),
            describe.content_type.clone(),
            Some(range.content_range(len)),
        ),
        FileOutcome::Multipart(ranges) => {
            let part_type = describe
                .content_type
                .to_str()
                .unwrap_or("application/octet-stream");
            let parts = multipart::byteranges(
                &file.bytes,
                len,
                &ranges,
                part_type,
                &multipart::new_boundary(),
            );
            let content_type = HeaderValue::from_str(&parts.content_type)
                .unwrap_or_else(|_| HeaderValue::from_static("multipart/byteranges"));
            (
                StatusCode::PARTIAL_CONTENT,
                parts.segments,
                parts.len,
                content_type,
                None,
            )
        }
        FileOutcome::NotModified => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            validator_headers(response.headers_mut(), file, &describe);
            return response;
        }
        FileOutcome::PreconditionFailed => {
            return response::json_error(StatusCode::PRECONDITION_FAILED, "Precondition failed");
        }
        FileOutcome::RangeNotSatisfiable => {
            let mut response =
                response::json_error(StatusCode::RANGE_NOT_SATISFIABLE, "Range not satisfiable");
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return response;
        }
    };

    let body = if head {
        Body::empty()
    } else {
        Body::from_file(Arc::clone(file), body_segments, chunk)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    // One allocation for every header this response will carry, including those
    // `App::handle` adds (CORS, `X-Request-Id`, `nosniff`), instead of growing 4 → 8 → 16.
    *headers = HeaderMap::with_capacity(FULL_RESPONSE_HEADERS);
    validator_headers(headers, file, &describe);
    headers.insert(header::CONTENT_TYPE, content_type);
    let content_len = if content_len == len {
        file.validators().content_length.clone()
    } else {
        HeaderValue::from(content_len)
    };
    headers.insert(header::CONTENT_LENGTH, content_len);
    headers.insert(header::ACCEPT_RANGES, ACCEPT_RANGES_BYTES);
    if let Some(range) = content_range.and_then(|r| HeaderValue::from_str(&r).ok()) {
        headers.insert(header::CONTENT_RANGE, range);
    }
    response
}

/// Header values every file response repeats, as constants: built at compile time
/// instead of validated byte by byte per request.
const ACCEPT_RANGES_BYTES: HeaderValue = HeaderValue::from_static("bytes");
const IMAGE_GIF: HeaderValue = HeaderValue::from_static("image/gif");

/// Headers a cache needs on 200, 206 and 304 alike (RFC 9110 §15.4.5). The file's own
/// `Last-Modified` is rendered once per file version; a route's override (a variant
/// keeps its source's) is rendered here.
fn validator_headers(headers: &mut HeaderMap, file: &MappedFile, describe: &FileHeaders) {
    headers.insert(header::ETAG, describe.etag.to_header_value());
    if let Some(date) = file.last_modified_value(describe.last_modified) {
        headers.insert(header::LAST_MODIFIED, date);
    }
    headers.insert(header::CACHE_CONTROL, describe.cache_control.clone());
    for (name, value) in &describe.extra {
        headers.insert(name.clone(), value.clone());
    }
}

/// Opens `relative` under `root`, or the answer when the file cannot be served: the
/// route's own 404 (`not_found`) when it is missing, not a regular file, outside the
/// root, or over the size limit (logged); a busy filesystem is a 503 (see
/// [`filesystem_unavailable`]); an I/O failure is a 500, logged with the path and the
/// cause. The one file-open step of every byte-serving route.
pub async fn open_or(
    store: &Store,
    root: &Root,
    relative: &Path,
    not_found: fn() -> Response<Body>,
) -> Result<Arc<MappedFile>, Box<Response<Body>>> {
    match store.open(root, relative).await {
        Ok(file) => Ok(file),
        Err(StoreError::NotFound) => Err(Box::new(not_found())),
        Err(StoreError::Busy(busy)) => Err(Box::new(filesystem_unavailable(busy))),
        Err(error @ StoreError::TooLarge { .. }) => {
            tracing::warn!(path = %relative.display(), %error, "not serving file");
            Err(Box::new(not_found()))
        }
        Err(error) => {
            tracing::error!(path = %relative.display(), %error, "cannot serve file");
            Err(Box::new(response::json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot read file",
            )))
        }
    }
}

/// Resolves `relative` under `root` to its real path on the filesystem pool, and runs
/// `then` on that path in the same pool job (a sniff of its first bytes, say); or the
/// answer when it cannot: a busy filesystem is a 503 (see [`filesystem_unavailable`]),
/// an I/O failure a 500 (logged with the path and the cause), anything else (missing,
/// outside the root) the route's own 404 (`not_found`). The one "real path" step of
/// the routes that hand a path to a component (stills, variants, `/info`), beside
/// [`open_or`], the one file-open step.
pub async fn resolve_or<T: Send + 'static>(
    fs: &FsPool,
    root: &Root,
    relative: &Path,
    not_found: fn() -> Response<Body>,
    then: impl FnOnce(&Path) -> T + Send + 'static,
) -> Result<(PathBuf, T), Box<Response<Body>>> {
    let (root, job_relative) = (root.clone(), relative.to_path_buf());
    let resolved = fs
        .run(move || {
            let real = root.resolve(&job_relative)?;
            let more = then(&real);
            Ok::<_, StoreError>((real, more))
        })
        .await;
    match resolved {
        Ok(Ok(found)) => Ok(found),
        Err(busy) => Err(Box::new(filesystem_unavailable(busy))),
        Ok(Err(StoreError::Io(error))) => {
            tracing::error!(path = %relative.display(), %error, "cannot resolve file");
            Err(Box::new(response::json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot read file",
            )))
        }
        Ok(Err(_)) => Err(Box::new(not_found())),
    }
}

/// The answer when the filesystem pool could not do a request's filesystem call: 503
/// with `Retry-After` and `Cache-Control: no-store` for a refusal or a timeout (the
/// filesystem is slow or the pool saturated; nothing about the file is known), 500 for
/// a job that failed (a bug, logged).
pub fn filesystem_unavailable(error: FsPoolError) -> Response<Body> {
    match error {
        FsPoolError::QueueFull | FsPoolError::TimedOut => crate::admission::retry_later(
            &serde_json::json!({ "error": "Storage busy, retry shortly", "reason": error.to_string() }),
            1,
        ),
        FsPoolError::Failed => {
            tracing::error!(%error, "filesystem job failed");
            let mut response =
                response::json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error");
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
    }
}

/// Whether `path`'s extension is `gif`, case-insensitively, as `Path::extension` would
/// say, from the last bytes alone: `Path::extension` parses the path's components
/// (~540 instructions per call under callgrind, twice per GIF request). A name that is
/// only `.gif` is a dotfile with no extension, as for `Path::extension`.
pub fn is_gif(path: &Path) -> bool {
    let bytes = path.as_os_str().as_encoded_bytes();
    bytes.len() > 4
        && bytes[bytes.len() - 4..].eq_ignore_ascii_case(b".gif")
        && bytes[bytes.len() - 5] != b'/'
}

/// `Content-Type` by file extension, case-insensitively; unknown → octet-stream.
/// `.gif`, nearly every request, is answered before `mime_guess`'s table search (a
/// case-insensitive binary search, ~1,800 instructions per request under callgrind).
pub fn content_type_for(path: &std::path::Path) -> HeaderValue {
    if is_gif(path) {
        return IMAGE_GIF;
    }
    let guess = mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream");
    HeaderValue::from_static(guess)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_gif_agrees_with_path_extension() {
        for name in [
            "p/a.gif",
            "p/a.GIF",
            "a.Gif",
            "p/a..gif",
            "p/.gif",
            ".gif",
            "gif",
            "p/agif",
            "p/a.gif.mp4",
            "p/a.gi",
            "x.gif",
            "p/caf\u{e9}.gif",
        ] {
            let path = Path::new(name);
            let by_extension = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gif"));
            assert_eq!(is_gif(path), by_extension, "{name}");
        }
        assert_eq!(
            content_type_for(Path::new("p/a.GIF")),
            HeaderValue::from_static("image/gif")
        );
        assert_eq!(
            content_type_for(Path::new("p/a.mp4")),
            HeaderValue::from_static("video/mp4")
        );
    }
}
