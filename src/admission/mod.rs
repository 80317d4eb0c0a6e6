//! Admission: how much work the service takes on at once, and what it says when it
//! takes no more. One vocabulary for every bounded admission point:
//!
//! | name | what it is |
//! |---|---|
//! | [`Gate`] | one admission point: a count of permits, a wait queue bounded in length and in time; sheds with a 503 ([`gate`]) |
//! | [`GateSettings`] | a gate's bounds: in flight, queue, queue timeout, `Retry-After`, stalled pool |
//! | [`GateId`] | which gate a route runs behind (`Open` for none), in the route table |
//! | [`Gates`] | the service's gates, one per [`GateId`] plus the budgets handlers charge themselves ([`gates`]) |
//! | permit | a slot of a gate's count (`tokio::sync::OwnedSemaphorePermit`), attached to the response body so it lives as long as the bytes are being sent |
//! | [`Lease`] | an admitted request's permit as its handler holds it: given back early while it waits for something else (a transcode) |
//! | [`stalled::BodyPermit`] | a media body's permit that can step out of the count into the gate's [`stalled::StalledPool`] while its client reads nothing ([`stalled`]) |
//! | [`Bound`] / [`Place`] | a count with a ceiling and a place in it, given back on drop: a gate's wait queue, the stalled pool's bodies, the transcoder's job queue and waiting requests ([`bound`]) |
//! | [`Shed`] | why a request was turned away |
//! | [`retry_later`] / [`shed_response`] | the one `503` + `Retry-After` + `no-store` answer ([`shed`]) |
//!
//! The route table's rule for picking a gate per request (`routes::GateRule`) stays
//! with the routes: it reads their query strings. How a connection tells a
//! `BodyPermit` that its client stalled is the connection's business
//! (`outbox::stall`).

pub mod bound;
pub mod gate;
pub mod gates;
pub mod shed;
pub mod stalled;

pub(crate) use bound::{Bound, Place};
pub use gate::{Gate, GateSettings, Lease, PermitUnit};
pub use gates::{GateId, Gates};
pub(crate) use shed::retry_later;
pub use shed::{Shed, shed_response};
