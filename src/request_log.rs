//! Request ids on every `WARN` and `ERROR` line logged while a request is handled, at
//! no cost to requests that log nothing.
//!
//! The request span of [`crate::app`] is `debug` on purpose: an `info` span with the id,
//! method and path formats them for every request (about 13,000 instructions per GIF
//! request under callgrind, a third of the path), whether or not anything is logged.
//! So the id travels instead in a tokio task-local ([`scope`]), which costs a swap in
//! and out per poll of the handler, and the log formatter ([`RequestIdFormat`]) adds it
//! to the few lines that need it: a `WARN` or `ERROR` event raised while the handler
//! runs gets a `request_id` field (JSON: a top-level key; human: `request_id=…` at the
//! end of the line), whatever code logs it. Lines at `INFO` and below stay as they are.
//!
//! Not covered: events raised after the handler returned, while hyper sends the body
//! (the socket layer's own warnings); those name the connection, not the request.

use std::fmt::{self, Write as _};
use std::future::Future;

use http::HeaderValue;
use tokio::task::futures::TaskLocalFuture;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

tokio::task_local! {
    /// The id of the request whose handler is being polled.
    static REQUEST_ID: HeaderValue;
}

/// Runs `handler` with `id` as the current request id; the id comes back with
/// [`TaskLocalFuture::take_value`] once the handler is done.
pub fn scope<F: Future>(id: HeaderValue, handler: F) -> TaskLocalFuture<HeaderValue, F> {
    REQUEST_ID.scope(id, handler)
}

/// The current request id as text, if a request is being handled on this task.
pub fn current() -> Option<String> {
    REQUEST_ID
        .try_with(|id| id.to_str().ok().map(str::to_owned))
        .ok()
        .flatten()
}

/// An event formatter that adds `request_id` to `WARN` and `ERROR` lines logged during
/// a request, around the formatter `inner` (the human or the JSON format).
#[derive(Debug, Clone)]
pub struct RequestIdFormat<F> {
    inner: F,
    json: bool,
}

impl<F> RequestIdFormat<F> {
    /// Around a human-readable formatter.
    pub fn human(inner: F) -> Self {
        RequestIdFormat { inner, json: false }
    }

    /// Around a JSON formatter (one object per line).
    pub fn json(inner: F) -> Self {
        RequestIdFormat { inner, json: true }
    }
}

impl<S, N, F> FormatEvent<S, N> for RequestIdFormat<F>
where
    F: FormatEvent<S, N>,
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Levels order by verbosity: WARN and ERROR are the ones at or below WARN.
        let id = if *event.metadata().level() <= Level::WARN {
            current()
        } else {
            None
        };
        let Some(id) = id else {
            return self.inner.format_event(ctx, writer, event);
        };
        // Rare (a warning or an error during a request): format the line aside, then
        // add the field where it belongs. The aside buffer has no colours.
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_request_id(&line, &id, self.json))
    }
}

/// `line` (one formatted event) with the field `request_id` added: after the opening
/// brace of a JSON object, else before the line's end.
fn with_request_id(line: &str, id: &str, json: bool) -> String {
    let mut out = String::with_capacity(line.len() + id.len() + 20);
    if json && let Some(rest) = line.strip_prefix('{') {
        // Ids are printable ASCII but may hold `"` or `\`: escape them as JSON does.
        let quoted = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".to_owned());
        let _ = write!(out, "{{\"request_id\":{quoted},{rest}");
        return out;
    }
    let (body, end) = match line.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (line, ""),
    };
    let _ = write!(out, "{body} request_id={id}{end}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_field_goes_inside_json_objects_and_at_the_end_of_human_lines() {
        assert_eq!(
            with_request_id("{\"level\":\"WARN\"}\n", "a\"b", true),
            "{\"request_id\":\"a\\\"b\",\"level\":\"WARN\"}\n"
        );
        assert_eq!(
            with_request_id("WARN x: oops path=a\n", "abc", false),
            "WARN x: oops path=a request_id=abc\n"
        );
    }

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(json: bool) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(Level::INFO)
            .with_writer(move || sink.clone());
        let dispatch = if json {
            let format = tracing_subscriber::fmt::format().json();
            tracing::Dispatch::new(
                builder
                    .json()
                    .event_format(RequestIdFormat::json(format))
                    .finish(),
            )
        } else {
            let format = tracing_subscriber::fmt::format().with_ansi(false);
            tracing::Dispatch::new(
                builder
                    .event_format(RequestIdFormat::human(format))
                    .finish(),
            )
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::error!("outside any request");
            runtime.block_on(scope(HeaderValue::from_static("req-7"), async {
                tracing::error!(path = "a.gif", "cannot serve file");
                tracing::warn!("not serving file");
                tracing::info!("answered");
            }));
        });
        let bytes = captured.0.lock().expect("capture").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn warn_and_error_lines_of_a_request_carry_its_id_info_lines_do_not() {
        for json in [false, true] {
            let text = logged(json);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 4, "{text}");
            assert!(!lines[0].contains("req-7"), "{text}");
            assert!(lines[1].contains("cannot serve file"), "{text}");
            assert!(lines[2].contains("not serving file"), "{text}");
            assert!(!lines[3].contains("req-7"), "info lines unchanged: {text}");
            for line in &lines[1..3] {
                if json {
                    let value: serde_json::Value = serde_json::from_str(line).expect("json");
                    assert_eq!(value["request_id"], "req-7", "{line}");
                } else {
                    assert!(line.ends_with("request_id=req-7"), "{line}");
                }
            }
        }
    }
}
