//! `?format=mp4|webm|webp` on the GIF routes: a lighter variant of the GIF, made once
//! by the transcoder ([`crate::transcode`]) and then served from the derived folder
//! through the same mapped, range- and precondition-aware path as the GIF itself.
//!
//! Each variant is a plain cacheable URL: its own strong ETag derived from the GIF's
//! (`"<gif tag>-mp4-x264"`: the format and encoder are part of it), the variant's
//! `Content-Type`, the GIF's `Cache-Control` and extra headers (a private item's
//! `Vary: Authorization`), and the GIF's `Last-Modified`, so a variant made again after
//! eviction validates the same.
//!
//! A variant that does not exist yet is made while the request waits — in the
//! transcoder's own bounded admission, after giving its GIF-serving slot back
//! ([`Lease`]); it takes a new slot only when it has bytes to send. With
//! `--auto-format`, a plain GIF request whose `Accept` lists `image/webp` gets the WebP
//! variant when it exists, and never waits for one: a missing one is queued and the GIF
//! is sent at once.
//!
//! | outcome | answer |
//! |---|---|
//! | unknown `format` | `400`, listing `mp4, webm, webp` |
//! | not a GIF | `400` |
//! | no ffmpeg, or no encoder for the format | `501` + JSON reason |
//! | the GIF is invalid or over a `--gif-max-*` limit, or ffmpeg cannot encode it (remembered) | `422` |
//! | ffmpeg ran past `--transcode-timeout` (remembered for 10 s, the reason on every answer) | `503` + `Retry-After` + reason |
//! | the host's trouble: disk full, no permission, a missing folder, a killed encoder, ffmpeg cannot start (not remembered) | `503` + `Retry-After` + reason |
//! | too many transcodes queued or requests waiting, or still transcoding after `--transcode-wait` | `503` + `Retry-After` |

use std::path::Path;

use http::{Extensions, HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use super::file_response::{self, FileHeaders};
use super::gif::{Source, gif_error, variant_error};
use crate::admission::Lease;
use crate::body::Body;
use crate::http::query;
use crate::response;
use crate::state::AppState;
use crate::store::StoreError;
use crate::transcode::{GifSource, VariantError, VariantFormat, VariantJob, Wait};

/// What the query string asks for (when it does not ask for a still).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariantQuery {
    /// No `format`: the file itself.
    NotAsked,
    /// A variant.
    Asked(VariantFormat),
    /// A `format` that is not a variant format: 400.
    BadFormat,
}

impl VariantQuery {
    /// Reads `format` from `query`.
    pub fn parse(query: Option<&str>) -> VariantQuery {
        match query::param(query, "format") {
            None => VariantQuery::NotAsked,
            Some(name) => VariantFormat::parse(&name)
                .map(VariantQuery::Asked)
                .unwrap_or(VariantQuery::BadFormat),
        }
    }
}

/// 400 naming the allowed formats.
pub fn bad_format() -> Response<Body> {
    let mut response = response::json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({
            "error": format!("format must be one of: {}", VariantFormat::allowed_list()),
            "allowed": VariantFormat::ALL.iter().map(|f| f.name()).collect::<Vec<_>>(),
        }),
    );
    no_store(&mut response);
    response
}

/// 400 for `format=` on something that is not a GIF.
pub fn not_a_gif() -> Response<Body> {
    response::json_error(
        StatusCode::BAD_REQUEST,
        "Variants are only available for GIFs",
    )
}

pub(super) fn no_store(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// How the variant is described: the variant's type, the GIF's caching, a strong tag
/// derived from the GIF's.
fn describe(source: &FileHeaders, format: VariantFormat, tag: &str) -> FileHeaders {
    FileHeaders {
        content_type: HeaderValue::from_static(format.content_type()),
        cache_control: source.cache_control.clone(),
        etag: source
            .etag
            .derived_strong(&format!("-{}-{tag}", format.name())),
        extra: source.extra.clone(),
        last_modified: None,
    }
}

/// Answers a `?format=` request for `source`. `extensions` are the request's: they hold
/// its GIF-serving slot, which is given back while it waits for a transcode.
pub async fn respond(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    extensions: &Extensions,
    source: Source<'_>,
    format: VariantFormat,
) -> Response<Body> {
    let transcoder = &state.transcoder;
    let identity = source.file.identity;
    let recipe = match transcoder.recipe(format) {
        Ok(recipe) => recipe,
        Err(error) => return variant_error(&error),
    };
    let describe = describe(&source.describe, format, recipe.tag);
    let name = match transcoder.variant_name(identity, format) {
        Ok(name) => name,
        Err(error) => return variant_error(&error),
    };
    // A variant that exists is served at once: one lookup in the mapping cache, as for
    // a GIF. One that is missing (or evicted between being made and being mapped) is
    // made, and tried again.
    for attempt in 0..3 {
        match serve(state, method, headers, &source, &name, describe.clone()).await {
            Ok(mut response) => {
                let held = extensions.get::<Lease>().is_some_and(|held| held.is_held());
                if !held {
                    // The slot was given back to wait: take one again to send bytes.
                    let gate = &state.gates.media;
                    match gate.acquire().await {
                        Ok(permit) => gate.attach(response.body_mut(), permit),
                        Err(why) => return gate.shed_response(why),
                    }
                }
                return response;
            }
            Err(ServeError::Response(response)) => return *response,
            Err(ServeError::Evicted) if attempt == 2 => break,
            Err(ServeError::Evicted) => {}
        }
        if let Some(error) = transcoder.failure(&name) {
            return variant_error(&error);
        }
        // Waiting for ffmpeg must not hold a GIF-serving slot.
        if let Some(held) = extensions.get::<Lease>() {
            held.release();
        }
        if let Err(response) = make(state, &source, format).await {
            return *response;
        }
    }
    variant_error(&VariantError::StillWorking)
}

/// Makes the variant (or joins the job making it), waiting in the transcoder's bounded
/// admission. The GIF's limits are checked first, from its cached metadata.
async fn make(
    state: &AppState,
    source: &Source<'_>,
    format: VariantFormat,
) -> Result<String, Box<Response<Body>>> {
    let (path, ()) = file_response::resolve_or(
        &state.fs,
        source.root,
        source.relative,
        response::not_found,
        |_| (),
    )
    .await?;
    let identity = source.file.identity;
    let info = state
        .gifs
        .info(path.clone(), identity)
        .await
        .map_err(|error| Box::new(gif_error(&error)))?;
    let job = VariantJob {
        source: GifSource::Path(path),
        identity,
        format,
        info: Some(info),
    };
    state
        .transcoder
        .make(job, Wait::Bounded)
        .await
        .map(|made| made.name)
        .map_err(|error| Box::new(variant_error(&error)))
}

enum ServeError {
    /// Gone between the check and the mapping (evicted): make it again.
    Evicted,
    /// Answer this.
    Response(Box<Response<Body>>),
}

/// Serves the derived file `name` as the variant of `source`.
async fn serve(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    source: &Source<'_>,
    name: &str,
    describe: FileHeaders,
) -> Result<Response<Body>, ServeError> {
    let file = match state
        .store
        .open(state.gifs.derived_root(), Path::new(name))
        .await
    {
        Ok(file) => file,
        Err(StoreError::NotFound) => return Err(ServeError::Evicted),
        Err(StoreError::Busy(busy)) => {
            return Err(ServeError::Response(Box::new(
                file_response::filesystem_unavailable(busy),
            )));
        }
        Err(error) => {
            tracing::error!(%name, %error, "cannot serve variant");
            return Err(ServeError::Response(Box::new(response::json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot read variant",
            ))));
        }
    };
    // The GIF's modification time, not the variant's: a variant made again after an
    // eviction keeps the same validators.
    let describe = FileHeaders {
        last_modified: Some(source.file.modified),
        ..describe
    };
    Ok(file_response::respond(
        method,
        headers,
        &file,
        describe,
        state.chunk,
    ))
}

/// The variants of the file with `identity` that exist, for `/info`:
/// `{"mp4": {"bytes": …, "contentType": "video/mp4"}, …}` (empty without ffmpeg). The
/// `stat`s run on the filesystem pool.
pub async fn existing(
    state: &AppState,
    identity: crate::store::FileIdentity,
) -> Result<serde_json::Value, crate::fs_pool::FsPoolError> {
    let names: Vec<(VariantFormat, String)> = VariantFormat::ALL
        .into_iter()
        .filter_map(|f| Some((f, state.transcoder.variant_name(identity, f).ok()?)))
        .collect();
    let derived = state.gifs.shared_derived();
    let sizes = state
        .fs
        .run(move || {
            names
                .into_iter()
                .filter_map(|(f, name)| Some((f, derived.len_of(&name)?)))
                .collect::<Vec<_>>()
        })
        .await?;
    let mut found = serde_json::Map::new();
    for (format, len) in sizes {
        found.insert(
            format.name().to_owned(),
            serde_json::json!({ "bytes": len, "contentType": format.content_type() }),
        );
    }
    Ok(serde_json::Value::Object(found))
}

/// What a plain GIF request gets under `--auto-format`.
pub enum Negotiated {
    /// The WebP variant.
    Variant(Response<Body>),
    /// The GIF, described as this (with `Vary: Accept` when negotiation is on).
    Gif(FileHeaders),
}

/// `--auto-format` for a plain request of the GIF `source`: the WebP variant when the
/// client accepts WebP and the variant exists; otherwise the GIF at once, the variant
/// queued for next time. Never waits for a transcode; a variant that exists costs one
/// mapping-cache lookup, as the GIF does.
pub async fn negotiate(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    source: &Source<'_>,
) -> Negotiated {
    let mut gif = source.describe.clone();
    if !state.config.transcode.auto_format {
        return Negotiated::Gif(gif);
    }
    // The answer depends on Accept whichever it is, so both say so.
    add_vary(&mut gif.extra, "Accept");
    if !accepts_webp(headers) {
        return Negotiated::Gif(gif);
    }
    let format = VariantFormat::Webp;
    let identity = source.file.identity;
    let (Ok(recipe), Ok(name)) = (
        state.transcoder.recipe(format),
        state.transcoder.variant_name(identity, format),
    ) else {
        return Negotiated::Gif(gif);
    };
    let mut webp = describe(&source.describe, format, recipe.tag);
    webp.extra = gif.extra.clone();
    match serve(state, method, headers, source, &name, webp).await {
        Ok(response) => Negotiated::Variant(response),
        Err(ServeError::Evicted) => {
            // Missing: queued (unless it failed, is under way, or the queue is full);
            // the job resolves and checks the GIF itself, off this request.
            state.transcoder.make_in_background(VariantJob {
                source: GifSource::Under {
                    root: source.root.clone(),
                    relative: source.relative.to_path_buf(),
                },
                identity,
                format,
                info: None,
            });
            Negotiated::Gif(gif)
        }
        Err(ServeError::Response(_)) => Negotiated::Gif(gif),
    }
}

/// Adds `name` to the `Vary` of `extra` (one header value, so it survives being
/// inserted into a response).
fn add_vary(extra: &mut HeaderMap, name: &str) {
    let value = match extra.get(header::VARY).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing}, {name}"),
        _ => name.to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        extra.insert(header::VARY, value);
    }
}

/// True when `Accept` lists `image/webp` (exactly, not through a wildcard: a browser
/// that sends `*/*` alone may not decode WebP) with a non-zero quality.
pub fn accepts_webp(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim();
            if !media.eq_ignore_ascii_case("image/webp") {
                return false;
            }
            let refused = parts.any(|p| {
                let p = p.trim();
                p.get(..2).is_some_and(|k| k.eq_ignore_ascii_case("q="))
                    && p[2..].trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            });
            !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_format() {
        assert_eq!(VariantQuery::parse(None), VariantQuery::NotAsked);
        assert_eq!(VariantQuery::parse(Some("w=90")), VariantQuery::NotAsked);
        assert_eq!(
            VariantQuery::parse(Some("format=mp4")),
            VariantQuery::Asked(VariantFormat::Mp4)
        );
        assert_eq!(
            VariantQuery::parse(Some("x=1&format=webm&format=mp4")),
            VariantQuery::Asked(VariantFormat::Webm),
            "the first one counts"
        );
        for bad in [
            "format=",
            "format=gif",
            "format=MP4",
            "format=mp4%00",
            "format=..%2fmp4",
        ] {
            assert_eq!(
                VariantQuery::parse(Some(bad)),
                VariantQuery::BadFormat,
                "{bad}"
            );
        }
    }

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn webp_must_be_listed_with_a_positive_quality() {
        assert!(accepts_webp(&accept(
            "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
        )));
        assert!(accepts_webp(&accept("IMAGE/WEBP;q=0.5")));
        assert!(!accepts_webp(&accept("image/webp;q=0")));
        assert!(!accepts_webp(&accept("image/webp; q=0.0, image/gif")));
        assert!(!accepts_webp(&accept("*/*")), "a wildcard is not a promise");
        assert!(!accepts_webp(&accept("image/webpx")));
        assert!(!accepts_webp(&HeaderMap::new()));
    }

    #[test]
    fn vary_values_accumulate() {
        let mut extra = HeaderMap::new();
        add_vary(&mut extra, "Accept");
        assert_eq!(extra[header::VARY], "Accept");
        let mut extra = HeaderMap::new();
        extra.insert(header::VARY, HeaderValue::from_static("Authorization"));
        add_vary(&mut extra, "Accept");
        assert_eq!(extra[header::VARY], "Authorization, Accept");
    }

    #[test]
    fn errors_map_to_statuses() {
        let status = |e: VariantError| variant_error(&e).status();
        assert_eq!(
            status(VariantError::Unavailable("no ffmpeg".into())),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            status(VariantError::Failed("bad".into())),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let busy = variant_error(&VariantError::Busy("queue full"));
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "2");
        assert_eq!(
            status(VariantError::StillWorking),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let full = variant_error(&VariantError::Host {
            fault: crate::transcode::Fault::DiskFull,
            reason: "cannot store the variant: /var/lib/x: No space left on device".into(),
        });
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.headers()[header::RETRY_AFTER], "2");
        assert_eq!(full.headers()[header::CACHE_CONTROL], "no-store");
        let timeout = variant_error(&VariantError::TimedOut("took longer than 1s".into()));
        assert_eq!(timeout.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(timeout.headers()[header::RETRY_AFTER], "10");
        assert_eq!(bad_format().status(), StatusCode::BAD_REQUEST);
    }
}
