//! `GET|HEAD /api/media/<mediaId>` and `GET|HEAD /api/media/<mediaId>/info`: the
//! content-addressed store (SPEC §1B).
//!
//! The bytes are named by their SHA-256, so they never change under a name: a strong
//! ETag (the id itself), `Last-Modified` and a year of `immutable` caching for media
//! anyone may see. Private media is gated by the owner's token and never stored by a
//! cache. The uploader's `mimeType` decides the `Content-Type` only when it is a media
//! type a browser will not run (see [`ServedType`]).

use std::path::Path;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::file_response::{self, FileHeaders};
use super::gif::{self, Representation, Source};
use super::variant;
use crate::auth::{self, Denied};
use crate::body::Body;
use crate::http::conditional::EntityTag;
use crate::manifest::{AccessLevel, Manifest, ManifestError, MediaId, ServedType};
use crate::response;
use crate::state::AppState;
use crate::store::MappedFile;

/// Path prefix of this route.
pub const PREFIX: &str = "/api/media/";

/// Content-addressed bytes never change: cache for a year, never revalidate.
const PUBLIC_CACHE: &str = "public, max-age=31536000, immutable";

/// Private media: no cache may store it, and a response depends on the token.
const PRIVATE_CACHE: &str = "private, no-store";

/// `/info` reflects a manifest that can be edited (access level, seeding fields).
const INFO_PUBLIC_CACHE: &str = "no-cache";

/// Characters RFC 8187 lets through unencoded in `filename*` (`attr-char`).
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// What the path after [`PREFIX`] names: the item (`<id>`), its `/info`, or nothing
/// this route serves. `None` when `path` is not under the prefix.
fn split_tail(path: &str) -> Option<(&str, Tail)> {
    let tail = path.strip_prefix(PREFIX)?;
    Some(match tail.split_once('/') {
        None => (tail, Tail::Item),
        Some((id, "info")) => (id, Tail::Info),
        Some((id, _)) => (id, Tail::Other),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    Item,
    Info,
    Other,
}

/// True when `path` is an `/api/media/<id>/info` request (whether or not `<id>` is
/// valid). The route table admits such a request as `/info` work
/// ([`crate::admission::GateId::Info`]) and [`handle`] answers it as one.
pub fn is_info(path: &str) -> bool {
    matches!(split_tail(path), Some((_, Tail::Info)))
}

/// Answers one `/api/media/…` request (GET or HEAD: the route table gates methods).
pub async fn handle<B>(state: &AppState, request: Request<B>) -> Response<Body> {
    let method = request.method();
    let (raw_id, info) = match split_tail(request.uri().path()) {
        Some((id, Tail::Item)) => (id, false),
        Some((id, Tail::Info)) => (id, true),
        Some((_, Tail::Other)) | None => return response::not_found(),
    };
    let Some(id) = MediaId::parse(raw_id) else {
        return response::not_found();
    };
    if !auth::single_authorization(request.headers()) {
        return two_authorizations();
    }

    // Fail closed: a manifest that exists but cannot be trusted says nothing about who
    // may see the item, so nothing is served from it — not the bytes, not `/info`, not a
    // still or a variant. Only a manifest that is absent means "public", as the indexer
    // treats an item it has no manifest for.
    let manifest = match state.manifests.get(&state.media_root, &id).await {
        Ok(manifest) => manifest,
        Err(ManifestError::Busy(busy)) => return file_response::filesystem_unavailable(busy),
        Err(error) => {
            tracing::error!(
                media_id = id.as_str(),
                %error,
                "manifest exists but cannot be used: refusing to serve the item"
            );
            return manifest_unusable();
        }
    };
    let private = manifest
        .as_ref()
        .is_some_and(|m| m.access == AccessLevel::Private);
    if private {
        let owner = manifest.as_ref().and_then(|m| m.owner.as_deref());
        if let Err(denied) = auth::authorize_owner(state.jwt.as_ref(), request.headers(), owner) {
            return denied_response(&denied);
        }
    }

    let original = id.original();
    let file =
        match file_response::open_or(&state.store, &state.media_root, &original, media_not_found)
            .await
        {
            Ok(file) => file,
            Err(refused) => return *refused,
        };

    if info {
        // Boxed, like stills: rare, and large enough to size every request's future.
        // An item GET serves, `/info` describes: with no manifest, what is known of it.
        let manifest = manifest.as_deref();
        return Box::pin(info_response(
            state, &id, manifest, private, &original, &file,
        ))
        .await;
    }

    let describe = describe(&id, manifest.as_deref(), private);
    let mime = manifest.as_ref().and_then(|m| m.mime_type.as_deref());
    let says_other_type = mime.is_some_and(|mime| !is_gif_mime(mime));
    let source = Source {
        root: &state.media_root,
        relative: &original,
        file: &file,
        describe,
    };
    // A still or a variant of anything the manifest does not call something else.
    let representation =
        match Representation::parse(request.uri().query(), state.gifs.widths(), !says_other_type) {
            Ok(representation) => representation,
            Err(refused) => return *refused,
        };
    // Negotiation only for items the manifest says are GIFs: no sniffing per request.
    let declared_gif = mime.is_some_and(is_gif_mime);
    // Bound before the await, so only the boxed future (not a whole response) is held
    // across it; the request's parts are borrowed in the call, not kept in locals.
    let later = match gif::respond(
        state,
        method,
        request.headers(),
        request.extensions(),
        source,
        representation,
        declared_gif,
    ) {
        gif::Answer::Now(response) => return response,
        gif::Answer::Later(later) => later,
    };
    later.await
}

/// Headers for the original's bytes.
fn describe(id: &MediaId, manifest: Option<&Manifest>, private: bool) -> FileHeaders {
    let mut extra = HeaderMap::new();
    let cache_control = if private {
        extra.insert(header::VARY, HeaderValue::from_static("Authorization"));
        PRIVATE_CACHE
    } else {
        PUBLIC_CACHE
    };
    let content_type = match ServedType::for_mime(manifest.and_then(|m| m.mime_type.as_deref())) {
        ServedType::Inline(mime) => HeaderValue::from_str(&mime)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
        ServedType::Attachment => {
            extra.insert(
                header::CONTENT_DISPOSITION,
                attachment(manifest.and_then(|m| m.original_name.as_deref())),
            );
            HeaderValue::from_static("application/octet-stream")
        }
    };
    FileHeaders {
        content_type,
        cache_control: HeaderValue::from_static(cache_control),
        etag: EntityTag::strong(id.as_str()),
        extra,
        last_modified: None,
    }
}

/// `attachment`, with the uploader's file name when there is one: a plain ASCII
/// `filename` (quotes, backslashes and controls replaced) for old clients and an
/// RFC 8187 `filename*` with the exact name for the rest.
fn attachment(name: Option<&str>) -> HeaderValue {
    let name = name
        .map(|n| n.rsplit(['/', '\\']).next().unwrap_or_default())
        .filter(|n| !n.is_empty());
    let Some(name) = name else {
        return HeaderValue::from_static("attachment");
    };
    let ascii: String = name
        .chars()
        .map(|c| {
            if c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = utf8_percent_encode(name, ATTR_CHAR);
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

fn is_gif_mime(mime: &str) -> bool {
    mime.split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("image/gif"))
}

/// `/info`: the manifest (paths on this host removed), plus GIF metadata for GIFs. An
/// item without a manifest (which GET serves as public octet-stream) is described by
/// what the file says: `{"mediaId", "fileSize"}`, and `gif` when it is one.
async fn info_response(
    state: &AppState,
    id: &MediaId,
    manifest: Option<&Manifest>,
    private: bool,
    original: &Path,
    file: &MappedFile,
) -> Response<Body> {
    let mut body = match manifest {
        Some(manifest) => manifest.fields.clone(),
        None => {
            let mut known = serde_json::Map::new();
            known.insert("mediaId".to_owned(), id.as_str().into());
            known.insert("fileSize".to_owned(), file.len().into());
            known
        }
    };
    // The manifest's type decides, as it does for `?still=` and `?format=`: bytes that
    // look like a GIF under a manifest saying `image/png` are not described as a GIF.
    // Only an item whose manifest names no type (or that has no manifest) is sniffed.
    let declared = manifest.and_then(|m| m.mime_type.as_deref());
    let declared_gif = declared.is_some_and(is_gif_mime);
    let sniff = declared.is_none();
    // The confinement check and the sniff are filesystem calls: one pool job for both.
    let resolved = file_response::resolve_or(
        &state.fs,
        &state.media_root,
        original,
        media_not_found,
        move |real| sniff.then(|| crate::gif::meta::looks_like_gif(real)),
    )
    .await;
    let (real, sniffed) = match resolved {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let is_gif = declared_gif
        || sniffed.is_some_and(|sniffed| {
            sniffed.unwrap_or_else(|error| {
                tracing::warn!(media_id = id.as_str(), %error, "cannot sniff media type");
                false
            })
        });
    if is_gif {
        match state.gifs.info(real, file.identity).await {
            Ok(gif) => match serde_json::to_value(gif) {
                Ok(value) => {
                    body.insert("gif".to_owned(), value);
                }
                Err(_) => {
                    return response::json_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Internal error",
                    );
                }
            },
            Err(error) => return gif::gif_error(&error),
        }
        match variant::existing(state, file.identity).await {
            Ok(variants) => {
                body.insert("variants".to_owned(), variants);
            }
            Err(busy) => return file_response::filesystem_unavailable(busy),
        }
    }
    let mut response = response::json(StatusCode::OK, &body);
    let headers = response.headers_mut();
    if private {
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(PRIVATE_CACHE),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Authorization"));
    } else {
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(INFO_PUBLIC_CACHE),
        );
    }
    response
}

fn media_not_found() -> Response<Body> {
    response::json_error(StatusCode::NOT_FOUND, "Media not found")
}

/// 500 for an item whose manifest exists but cannot be read, parsed or trusted: the
/// log says which and why; the client learns only that the item cannot be served now,
/// and no cache keeps the answer (an operator fixing the manifest fixes the item).
fn manifest_unusable() -> Response<Body> {
    let mut response = response::json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Media temporarily unavailable",
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 400 for two `Authorization` lines: which one would count is not ours to guess.
fn two_authorizations() -> Response<Body> {
    let mut response = response::json_error(
        StatusCode::BAD_REQUEST,
        "Send one Authorization header, not several",
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 401/403 with the indexer's messages; never stored by a cache, and 401 says how to
/// authenticate (RFC 9110 §15.5.2).
fn denied_response(denied: &Denied) -> Response<Body> {
    let status = match denied {
        Denied::Unauthenticated => StatusCode::UNAUTHORIZED,
        Denied::NotOwner => StatusCode::FORBIDDEN,
    };
    let mut response = response::json_error(status, &denied.to_string());
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::VARY, HeaderValue::from_static("Authorization"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names() {
        assert_eq!(attachment(None), "attachment");
        assert_eq!(attachment(Some("")), "attachment");
        assert_eq!(
            attachment(Some("page.html")),
            "attachment; filename=\"page.html\"; filename*=UTF-8''page.html"
        );
        assert_eq!(
            attachment(Some("../../a\"b\r\n.svg")),
            "attachment; filename=\"a_b__.svg\"; filename*=UTF-8''a%22b%0D%0A.svg"
        );
        assert_eq!(
            attachment(Some("café.xml")),
            "attachment; filename=\"caf_.xml\"; filename*=UTF-8''caf%C3%A9.xml"
        );
    }

    #[test]
    fn info_paths() {
        let id = "a".repeat(64);
        assert!(is_info(&format!("/api/media/{id}/info")));
        assert!(is_info("/api/media/not-an-id/info"));
        assert!(!is_info(&format!("/api/media/{id}")));
        assert!(!is_info(&format!("/api/media/{id}/info/x")));
        assert!(!is_info(&format!("/api/media/{id}/other")));
        assert!(!is_info("/media/fitnessally/info"));
        assert_eq!(
            split_tail(&format!("/api/media/{id}/info/x")).map(|(_, t)| t),
            Some(Tail::Other)
        );
    }

    #[test]
    fn gif_mime() {
        assert!(is_gif_mime("image/gif"));
        assert!(is_gif_mime("IMAGE/GIF; x=y"));
        assert!(!is_gif_mime("image/png"));
    }
}
