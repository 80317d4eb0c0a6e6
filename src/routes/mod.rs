//! The route table and the handlers, one file per route family.
//!
//! `ROUTES` is the one place a route is declared: its path pattern, the route family
//! that labels its metrics, the methods it answers (everything else gets `405` with an
//! `Allow` derived from the same list, and `OPTIONS` a `204` where it is listed), the
//! admission bound it runs behind, and its handler. The router (`app`) matches a path
//! once with `matchit` and reads everything else from the entry it found.
//!
//! Why `matchit` rather than axum's `Router`: matching is a walk of a prebuilt radix tree
//! that allocates nothing, and the handlers stay plain `async fn`s over our own body
//! type, so the response body handed to hyper is ours end to end (the server attaches
//! its in-flight token to it and the zero-copy send recognises its mapped slices). axum
//! would box every handler future, convert bodies into its own type and need a second
//! layer for per-route admission. Handlers are named by the `Handler` enum rather than
//! stored as function pointers: an `async fn` generic over the request body cannot be a
//! function pointer without boxing its future on every request.
//!
//! Handlers keep their own path decoding where confinement needs the raw tail
//! (`media`, `api_media`, `generate`): the pattern only picks the route.

pub(crate) mod api_media;
pub(crate) mod file_response;
pub(crate) mod generate;
pub(crate) mod gif;
pub(crate) mod gif_source;
pub(crate) mod gun_relay;
pub(crate) mod media;
pub(crate) mod ops;
pub(crate) mod resolve;
pub(crate) mod still;
pub(crate) mod variant;

use bytes::Bytes;
use http::{Method, Request, Response};

use crate::admission::GateId;
use crate::body::Body;
use crate::response;
use crate::state::AppState;

/// Route families, the `route` label of `oip_media_http_responses_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteFamily {
    /// `/media/<project>/<file>`
    Media,
    /// `/api/media/…` and `/api/media?id=`
    ApiMedia,
    /// `/api/generate/media…`
    Generate,
    /// `/gun-relay/…`
    GunRelay,
    /// `/api/resolve`
    Resolve,
    /// `/healthz`, `/readyz`, `/metrics`
    Ops,
    /// Anything else (404s).
    Other,
}

impl RouteFamily {
    /// Every label, indexed by [`RouteFamily::index`].
    pub const LABELS: &'static [&'static str] = &[
        "media",
        "api_media",
        "generate",
        "gun_relay",
        "resolve",
        "ops",
        "other",
    ];

    /// Position of this family's label in [`RouteFamily::LABELS`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

/// The methods a route answers, and the `Allow` header that lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Methods {
    mask: u8,
    allow: &'static str,
}

const GET: u8 = 1;
const HEAD: u8 = 2;
const POST: u8 = 4;
const OPTIONS: u8 = 8;

impl Methods {
    /// `GET`, `HEAD` and `OPTIONS` (`204` + `Allow`): the byte-serving routes.
    pub const READ: Methods = Methods {
        mask: GET | HEAD | OPTIONS,
        allow: "GET, HEAD, OPTIONS",
    };
    /// `GET` and `HEAD`: health, readiness, metrics.
    pub const GET_HEAD: Methods = Methods {
        mask: GET | HEAD,
        allow: "GET, HEAD",
    };
    /// `GET` only: the relay's own `get` endpoint.
    pub const GET: Methods = Methods {
        mask: GET,
        allow: "GET",
    };
    /// `POST` only.
    pub const POST: Methods = Methods {
        mask: POST,
        allow: "POST",
    };
    /// Any method: the handler answers every one (the relay's unknown endpoints).
    pub const ANY: Methods = Methods {
        mask: u8::MAX,
        allow: "",
    };

    fn bit(method: &Method) -> u8 {
        match *method {
            Method::GET => GET,
            Method::HEAD => HEAD,
            Method::POST => POST,
            Method::OPTIONS => OPTIONS,
            // Any other method is answered by `ANY` routes only.
            _ => 1 << 7,
        }
    }

    /// `None` when the handler should answer `method`; otherwise the answer: `204` +
    /// `Allow` for a listed `OPTIONS`, `405` + `Allow` for a method not listed.
    pub fn gate(self, method: &Method) -> Option<Response<Body>> {
        if self.mask & Self::bit(method) == 0 {
            return Some(response::method_not_allowed(self.allow));
        }
        if *method == Method::OPTIONS && self.mask != u8::MAX {
            return Some(response::options(self.allow));
        }
        None
    }
}

/// Every method some route answers: the `Allow` of `OPTIONS *`.
pub(crate) const SERVER_ALLOW: &str = "GET, HEAD, POST, OPTIONS";

/// The answer to the asterisk-form target `*` (RFC 9112 §3.2.4), which names the server
/// rather than a resource and exists for `OPTIONS` only: `204` with the methods the
/// server answers somewhere ([`SERVER_ALLOW`]); any other method with `*` is a `400`.
pub(crate) fn asterisk(method: &Method) -> Response<Body> {
    if *method == Method::OPTIONS {
        response::options(SERVER_ALLOW)
    } else {
        response::json_error(
            http::StatusCode::BAD_REQUEST,
            "The target * is for OPTIONS only",
        )
    }
}

/// What answers a route, once its method is allowed and its admission granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handler {
    /// [`media::handle`]
    Media,
    /// [`api_media::handle`]
    ApiMedia,
    /// [`generate::handle_query`]: `/api/media?id=`
    GeneratedById,
    /// [`generate::handle`]
    Generate,
    /// [`gun_relay::handle_get`]
    GunGet,
    /// [`gun_relay::handle_put`]
    GunPut,
    /// [`gun_relay::handle_unknown`]
    GunUnknown,
    /// [`resolve::handle`]
    Resolve,
    /// [`ops::healthz`]
    Healthz,
    /// [`ops::readyz`]
    Readyz,
    /// [`ops::metrics`]
    Metrics,
}

impl Handler {
    /// Runs the handler. The GUN and resolver handlers, which wait on the network and
    /// hold large states, are boxed: inline, their state would size every connection's
    /// request future, GIF requests included (one allocation on those routes instead).
    /// So are the generated-audio routes, rare and ~1,600 bytes of state: hyper keeps
    /// one request future per connection and moves it by value, so its size is both
    /// memory per connection and bytes copied per request (`app::future_size`).
    pub async fn call<B>(self, state: &AppState, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self {
            Handler::Media => media::handle(state, request).await,
            Handler::ApiMedia => api_media::handle(state, request).await,
            Handler::GeneratedById => Box::pin(generate::handle_query(state, request)).await,
            Handler::Generate => Box::pin(generate::handle(state, request)).await,
            Handler::GunGet => Box::pin(gun_relay::handle_get(state, request)).await,
            Handler::GunPut => Box::pin(gun_relay::handle_put(state, request)).await,
            Handler::GunUnknown => gun_relay::handle_unknown(state),
            Handler::Resolve => Box::pin(resolve::handle(state, request)).await,
            Handler::Healthz => ops::healthz(),
            Handler::Readyz => ops::readyz(state).await,
            Handler::Metrics => {
                Box::pin(ops::metrics(state, request.method(), request.headers())).await
            }
        }
    }
}

/// How a route picks the gate its handler runs behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateRule {
    /// Always this one.
    Always(GateId),
    /// A GIF route (`/media/…`, `/api/media/<id>`): [`GateId::Media`] for the file's
    /// bytes, but [`GateId::Still`] when the query asks for a still
    /// ([`still::asks_for_still`]) and [`GateId::Info`] for `/api/media/<id>/info`
    /// ([`api_media::is_info`]). A still or `/info` may wait for a render or a parse: it
    /// runs behind its own bound and never holds a GIF-serving slot while it waits. The
    /// handler makes the same choice from the same two functions, so the admission a
    /// request gets is the work it does.
    GifWork,
}

impl GateRule {
    /// The gate of a request for `uri` on a route declared with `self`. Pure: reads
    /// the path and the query string, allocates nothing.
    pub fn pick(self, uri: &http::Uri) -> GateId {
        match self {
            GateRule::Always(id) => id,
            GateRule::GifWork if api_media::is_info(uri.path()) => GateId::Info,
            GateRule::GifWork if still::asks_for_still(uri.query()) => GateId::Still,
            GateRule::GifWork => GateId::Media,
        }
    }
}

/// One route: everything the router needs to know about a path pattern.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    /// `matchit` pattern (`{name}` a segment, `{*name}` the rest of the path).
    pub pattern: &'static str,
    /// The metrics label.
    pub family: RouteFamily,
    /// Methods answered; others get `405` + `Allow`.
    pub methods: Methods,
    /// The gate the handler runs behind.
    pub gate: GateRule,
    /// What answers it.
    pub handler: Handler,
}

const fn route(
    pattern: &'static str,
    family: RouteFamily,
    methods: Methods,
    gate: GateRule,
    handler: Handler,
) -> Route {
    Route {
        pattern,
        family,
        methods,
        gate,
        handler,
    }
}

use GateRule::GifWork;
use RouteFamily as F;

const MEDIA_LIMIT: GateRule = GateRule::Always(GateId::Media);
const OPEN: GateRule = GateRule::Always(GateId::Open);
const GUN_PUT: GateRule = GateRule::Always(GateId::GunPut);
const GUN_GET: GateRule = GateRule::Always(GateId::GunGet);

/// Every route of the service. Paths matching none get the JSON 404 (family `other`).
/// Prefix forms are listed twice (`/x/` and `/x/{*rest}`) because a catch-all matches
/// one character at least; the handler refuses an empty tail itself.
pub(crate) const ROUTES: &[Route] = &[
    route("/media/", F::Media, Methods::READ, GifWork, Handler::Media),
    route(
        "/media/{*file}",
        F::Media,
        Methods::READ,
        GifWork,
        Handler::Media,
    ),
    route(
        "/api/media",
        F::ApiMedia,
        Methods::READ,
        MEDIA_LIMIT,
        Handler::GeneratedById,
    ),
    route(
        "/api/media/",
        F::ApiMedia,
        Methods::READ,
        GifWork,
        Handler::ApiMedia,
    ),
    route(
        "/api/media/{*id}",
        F::ApiMedia,
        Methods::READ,
        GifWork,
        Handler::ApiMedia,
    ),
    route(
        "/api/generate/media",
        F::Generate,
        Methods::READ,
        MEDIA_LIMIT,
        Handler::Generate,
    ),
    route(
        "/api/generate/media/{*path}",
        F::Generate,
        Methods::READ,
        MEDIA_LIMIT,
        Handler::Generate,
    ),
    route(
        "/gun-relay/get",
        F::GunRelay,
        Methods::GET,
        GUN_GET,
        Handler::GunGet,
    ),
    route(
        "/gun-relay/put",
        F::GunRelay,
        Methods::POST,
        GUN_PUT,
        Handler::GunPut,
    ),
    route(
        "/gun-relay/",
        F::GunRelay,
        Methods::ANY,
        OPEN,
        Handler::GunUnknown,
    ),
    route(
        "/gun-relay/{*endpoint}",
        F::GunRelay,
        Methods::ANY,
        OPEN,
        Handler::GunUnknown,
    ),
    route(
        "/api/resolve",
        F::Resolve,
        Methods::POST,
        OPEN,
        Handler::Resolve,
    ),
    route(
        "/healthz",
        F::Ops,
        Methods::GET_HEAD,
        OPEN,
        Handler::Healthz,
    ),
    route("/readyz", F::Ops, Methods::GET_HEAD, OPEN, Handler::Readyz),
    route(
        "/metrics",
        F::Ops,
        Methods::GET_HEAD,
        OPEN,
        Handler::Metrics,
    ),
];

/// The matcher built from [`ROUTES`], once at start-up.
///
/// It holds references into the table, so a route found is a pointer: it rides in the
/// request's future (and from the fast lane to the app) at 8 bytes, not 48.
pub(crate) struct Router {
    tree: matchit::Router<&'static Route>,
}

impl Router {
    /// Builds the matcher; fails with the offending pattern when two routes conflict.
    pub fn new(routes: &'static [Route]) -> Result<Router, String> {
        let mut tree = matchit::Router::new();
        for route in routes {
            tree.insert(route.pattern, route)
                .map_err(|error| format!("route `{}`: {error}", route.pattern))?;
        }
        Ok(Router { tree })
    }

    /// The route of `path`, if any. Allocates nothing.
    pub fn at(&self, path: &str) -> Option<&'static Route> {
        self.tree.at(path).ok().map(|matched| *matched.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new(ROUTES).expect("the table has no conflicts")
    }

    fn family(path: &str) -> RouteFamily {
        router().at(path).map_or(RouteFamily::Other, |r| r.family)
    }

    #[test]
    fn every_path_finds_its_family() {
        for (path, expected) in [
            ("/media/fitnessally/a.gif", F::Media),
            ("/media/", F::Media),
            ("/media/%2e%2e/x", F::Media),
            ("/media//x", F::Media),
            ("/media", F::Other),
            ("/api/media/abc", F::ApiMedia),
            ("/api/media/abc/info", F::ApiMedia),
            ("/api/media", F::ApiMedia),
            ("/api/generate/media", F::Generate),
            ("/api/generate/media/a.mp3", F::Generate),
            ("/api/generate/media/jfk/a.mp3", F::Generate),
            ("/api/generate/mediafoo", F::Other),
            ("/api/generate/med", F::Other),
            ("/gun-relay/get", F::GunRelay),
            ("/gun-relay/put", F::GunRelay),
            ("/gun-relay/anything", F::GunRelay),
            ("/gun-relay/", F::GunRelay),
            ("/api/resolve", F::Resolve),
            ("/healthz", F::Ops),
            ("/readyz", F::Ops),
            ("/metrics", F::Ops),
            ("/", F::Other),
            ("/nope", F::Other),
            ("/metricsx", F::Other),
        ] {
            assert_eq!(family(path), expected, "{path}");
        }
        let r = router();
        assert_eq!(
            r.at("/api/media").map(|r| r.handler),
            Some(Handler::GeneratedById)
        );
        assert_eq!(
            r.at("/gun-relay/nope").map(|r| r.handler),
            Some(Handler::GunUnknown)
        );
        assert_eq!(
            r.at("/gun-relay/get").map(|r| r.handler),
            Some(Handler::GunGet)
        );
    }

    #[test]
    fn byte_serving_routes_and_only_they_are_behind_the_media_limiter() {
        let plain: http::Uri = "/x".parse().unwrap();
        for route in ROUTES {
            let bytes = matches!(route.family, F::Media | F::ApiMedia | F::Generate);
            assert_eq!(
                route.gate.pick(&plain) == GateId::Media,
                bytes,
                "{}",
                route.pattern
            );
        }
        let put = router().at("/gun-relay/put").map(|r| r.gate);
        assert_eq!(put, Some(GateRule::Always(GateId::GunPut)));
    }

    /// The admission a request gets, by the route it matched and its path and query.
    fn admission_of(target: &str) -> GateId {
        let uri: http::Uri = target.parse().unwrap();
        router()
            .at(uri.path())
            .map_or(GateId::Open, |r| r.gate.pick(&uri))
    }

    #[test]
    fn stills_and_info_never_take_a_gif_serving_slot() {
        let id = "a".repeat(64);
        for (target, expected) in [
            ("/media/fitnessally/a.gif", GateId::Media),
            ("/media/fitnessally/a.gif?w=90", GateId::Media),
            ("/media/fitnessally/a.gif?still=0", GateId::Media),
            ("/media/fitnessally/a.gif?still=1", GateId::Still),
            ("/media/fitnessally/a.gif?w=90&still=true", GateId::Still),
            ("/media/fitnessally/a.gif?still=1&w=91", GateId::Still),
            ("/media/fitnessally/a.png?still=1", GateId::Still),
            // A file named `info` under /media is a file, not /info.
            ("/media/fitnessally/info", GateId::Media),
            (&format!("/api/media/{id}"), GateId::Media),
            (&format!("/api/media/{id}?still=1"), GateId::Still),
            (&format!("/api/media/{id}/info"), GateId::Info),
            (&format!("/api/media/{id}/info?still=1"), GateId::Info),
            (&format!("/api/media/{id}/other"), GateId::Media),
            ("/api/media?id=a.mp3&still=1", GateId::Media),
            ("/api/generate/media/a.mp3?still=1", GateId::Media),
            ("/gun-relay/put", GateId::GunPut),
            ("/gun-relay/get?soul=x", GateId::GunGet),
            ("/api/resolve", GateId::Open),
            ("/metrics", GateId::Open),
        ] {
            assert_eq!(admission_of(target), expected, "{target}");
        }
    }

    #[test]
    fn allow_lists_exactly_the_methods_answered() {
        let all = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ];
        for route in ROUTES {
            if route.methods == Methods::ANY {
                assert!(all.iter().all(|m| route.methods.gate(m).is_none()));
                continue;
            }
            let listed: Vec<&str> = route.methods.allow.split(", ").collect();
            for method in &all {
                let answered = match route.methods.gate(method) {
                    None => true,
                    Some(r) => r.status() == http::StatusCode::NO_CONTENT,
                };
                assert_eq!(
                    answered,
                    listed.contains(&method.as_str()),
                    "{} {method}",
                    route.pattern
                );
                if let Some(r) = route.methods.gate(method) {
                    assert_eq!(r.headers()[http::header::ALLOW], route.methods.allow);
                }
            }
        }
        let refused = Methods::READ.gate(&Method::POST).expect("refused");
        assert_eq!(refused.status(), http::StatusCode::METHOD_NOT_ALLOWED);
        let options = Methods::READ.gate(&Method::OPTIONS).expect("answered");
        assert_eq!(options.status(), http::StatusCode::NO_CONTENT);
        let options = Methods::GET_HEAD.gate(&Method::OPTIONS).expect("refused");
        assert_eq!(options.status(), http::StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn options_star_allows_what_some_route_answers() {
        let mut union = 0;
        for route in ROUTES.iter().filter(|r| r.methods != Methods::ANY) {
            union |= route.methods.mask;
        }
        let named: Vec<&str> = SERVER_ALLOW.split(", ").collect();
        for (bit, name) in [
            (GET, "GET"),
            (HEAD, "HEAD"),
            (POST, "POST"),
            (OPTIONS, "OPTIONS"),
        ] {
            assert_eq!(union & bit != 0, named.contains(&name), "{name}");
        }
        let star = asterisk(&Method::OPTIONS);
        assert_eq!(star.status(), http::StatusCode::NO_CONTENT);
        assert_eq!(star.headers()[http::header::ALLOW], SERVER_ALLOW);
        assert_eq!(
            asterisk(&Method::GET).status(),
            http::StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn labels_follow_the_enum() {
        assert_eq!(RouteFamily::Media.label(), "media");
        assert_eq!(RouteFamily::ApiMedia.label(), "api_media");
        assert_eq!(RouteFamily::GunRelay.label(), "gun_relay");
        assert_eq!(RouteFamily::Other.label(), "other");
        assert_eq!(RouteFamily::LABELS.len(), RouteFamily::Other.index() + 1);
    }
}
