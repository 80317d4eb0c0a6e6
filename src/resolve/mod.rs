//! The record resolver (SPEC §4): replaces `did:` references in OIP records by the
//! records they name, with the indexer's results and hard bounds on what one request
//! and the process may cost.

pub mod cache;
pub mod options;
pub mod stats;

pub use cache::{CachedRecord, FoundRecord, RecordCache};
pub use options::{FieldFilter, OptionsError, ResolveOptions};
pub use stats::{CountersSnapshot, ResolveStats, ResolverCounters};
