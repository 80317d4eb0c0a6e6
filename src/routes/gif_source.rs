//! What the GIF representations share: the [`Source`] a route found and described, and
//! the one place a component's failure (a `GifError`, a `VariantError`) becomes a
//! response. A leaf of `routes`: `gif` (the dispatch), `still` and `variant` import it,
//! it imports none of them, so the three stay free of import cycles.

use std::path::Path;
use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode, header};

use super::file_response::{self, FileHeaders};
use crate::body::Body;
use crate::gif::GifError;
use crate::response;
use crate::store::{MappedFile, Root};
use crate::transcode::VariantError;

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

/// Marks an answer that is not the file (an error) as not to be cached.
pub(super) fn no_store(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

// Component errors: the one place each becomes a response.

/// `Retry-After` of a 503: a transcode takes about a second.
const RETRY_AFTER_SECS: u64 = 2;

/// `Retry-After` of a timeout's 503: how long the timeout is remembered.
const TIMEOUT_RETRY_AFTER_SECS: u64 = crate::transcode::TIMEOUT_REMEMBERED.as_secs();

/// The answer for a GIF that could not be described or rendered.
pub fn gif_error(error: &GifError) -> Response<Body> {
    match error {
        GifError::Invalid(_) => {
            response::json_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid GIF")
        }
        GifError::TooLarge(reason) => response::json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("GIF too large to process: {reason}"),
        ),
        GifError::SourceChanged => crate::admission::retry_later(
            &serde_json::json!({ "error": "The file changed while it was being read; try again" }),
            1,
        ),
        GifError::Io(reason) => {
            tracing::error!(%reason, "GIF processing failed");
            response::json_error(StatusCode::INTERNAL_SERVER_ERROR, "Cannot process GIF")
        }
        GifError::Busy(busy) => file_response::filesystem_unavailable(*busy),
        GifError::WorkersBusy(why) => crate::admission::shed_response(*why, 1),
    }
}

/// The answer for a variant that cannot be had.
///
/// Why ffmpeg is unusable or why it failed is logged by the transcoder when it happens
/// (at start-up, and once per failed variant); the body says only what kind of trouble
/// it is, because ffmpeg's words name paths on this host (the GIF's, the derived
/// folder's, ffmpeg's own) and I/O errors. A timeout's reason is ours and says nothing
/// more than the bound, so it is kept; the host's trouble is named by its kind.
///
/// Every `503` carries `Retry-After` and `Cache-Control: no-store`: what failed was not
/// the GIF, and the next try may well succeed.
pub fn variant_error(error: &VariantError) -> Response<Body> {
    let mut retry_after = RETRY_AFTER_SECS;
    let (status, message, reason) = match error {
        VariantError::Unavailable(_) => (
            StatusCode::NOT_IMPLEMENTED,
            "Variants are not available on this server",
            None,
        ),
        VariantError::Failed(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "This GIF cannot be transcoded",
            None,
        ),
        VariantError::TimedOut(reason) => {
            retry_after = TIMEOUT_RETRY_AFTER_SECS;
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "The transcode took too long, retry later",
                Some(reason.to_string()),
            )
        }
        VariantError::Host { fault, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Cannot make the variant now, retry shortly",
            Some(fault.public_reason().to_owned()),
        ),
        VariantError::Busy(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Transcoder busy, retry shortly",
            Some((*reason).to_owned()),
        ),
        VariantError::StillWorking => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Still transcoding, retry shortly",
            None,
        ),
        VariantError::SourceChanged => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The file changed while it was being read; try again",
            None,
        ),
        VariantError::Io(reason) => {
            tracing::error!(%reason, "transcode failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot make the variant",
                None,
            )
        }
    };
    let mut body = serde_json::json!({ "error": message });
    if let Some(reason) = reason {
        body["reason"] = serde_json::Value::String(reason);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return crate::admission::retry_later(&body, retry_after);
    }
    let mut response = response::json(status, &body);
    no_store(&mut response);
    response
}
