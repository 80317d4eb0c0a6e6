//! Open descriptors, bounded and fitted to `RLIMIT_NOFILE` at start-up.
//!
//! Every mapped file keeps its descriptor (the socket `sendfile`s from it), so the
//! process holds at most: one socket per connection (`--max-connections`), one file per
//! cached mapping (`--map-cache-entries`), one evicted file per media body still in
//! flight (`--max-in-flight`: a body holds one file) or waiting in the pool of bodies
//! whose clients stopped reading (`--max-stalled`), and a fixed reserve for everything
//! else (listener, epoll, stdio, the GUN and Elasticsearch pools, files read for GIF
//! metadata and stills). At start-up the soft limit is raised to the hard limit, as
//! nginx's `worker_rlimit_nofile` would; if the sum still does not fit, the mapping
//! cache's entry bound is lowered first, then the stalled pool, then the connection cap
//! (new clients then wait in the backlog, as at any cap), each with a warning naming the
//! setting. Either way
//! `accept` and `open` never fail for lack of descriptors under the configured load.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::config::Config;
use crate::error::StartError;

/// Descriptors kept for everything but connections and mapped files.
pub const RESERVE: u64 = 256;

/// Fewest mappings the cache is lowered to before the connection cap is.
const MIN_CACHE_ENTRIES: u64 = 64;

/// What fits within a descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fitted {
    /// Mappings the cache may keep (each an open file).
    pub map_cache_entries: u64,
    /// Connections open at once.
    pub max_connections: u64,
    /// Media bodies waiting out of the in-flight bound (each may hold an evicted file).
    pub max_stalled: u64,
}

/// Fits the configured bounds into `limit` descriptors (`None`: unlimited), lowering
/// the cache first, the stalled pool second and the connection cap third. An error when
/// even one connection cannot fit beside the bodies in flight, the reserve and a minimal
/// cache.
pub fn fit(limit: Option<u64>, wanted: Fitted, max_in_flight: u64) -> Result<Fitted, String> {
    let Some(limit) = limit else {
        return Ok(wanted);
    };
    let fixed = RESERVE + max_in_flight;
    let needed = fixed + wanted.max_stalled + wanted.max_connections + wanted.map_cache_entries;
    if needed <= limit {
        return Ok(wanted);
    }
    let cache_floor = wanted.map_cache_entries.min(MIN_CACHE_ENTRIES);
    let for_cache = limit.saturating_sub(fixed + wanted.max_stalled + wanted.max_connections);
    if for_cache >= cache_floor {
        return Ok(Fitted {
            map_cache_entries: for_cache,
            ..wanted
        });
    }
    if fixed + cache_floor + wanted.max_connections <= limit {
        return Ok(Fitted {
            map_cache_entries: cache_floor,
            max_stalled: limit - (fixed + cache_floor + wanted.max_connections),
            max_connections: wanted.max_connections,
        });
    }
    let for_connections = limit.saturating_sub(fixed + cache_floor);
    if for_connections == 0 {
        return Err(format!(
            "the open-file limit ({limit}) leaves no descriptor for a connection beside \
             {max_in_flight} bodies in flight, {cache_floor} mapped files and {RESERVE} reserved; \
             raise `ulimit -n` or lower --max-in-flight"
        ));
    }
    Ok(Fitted {
        map_cache_entries: cache_floor,
        max_connections: for_connections,
        max_stalled: 0,
    })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit now in
/// force (`None`: unlimited).
pub fn raise_limit() -> Option<u64> {
    let current = getrlimit(Resource::Nofile);
    if current.current != current.maximum {
        let raised = Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(%error, "cannot raise the open-file limit to its hard limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// The soft open-file limit in force (`None`: unlimited), for metrics.
pub fn limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Raises the limit and fits `config`'s bounds into it, logging what was lowered.
pub fn apply(config: &mut Config) -> Result<(), StartError> {
    let limit = raise_limit();
    let wanted = Fitted {
        map_cache_entries: config.map_cache_entries as u64,
        max_connections: config.max_connections as u64,
        max_stalled: config.max_stalled as u64,
    };
    let fitted = fit(limit, wanted, config.max_in_flight as u64).map_err(|message| {
        StartError::InvalidSetting {
            option: "--max-connections/--max-in-flight",
            message,
        }
    })?;
    let limit = limit.unwrap_or(u64::MAX);
    if fitted.map_cache_entries < wanted.map_cache_entries {
        tracing::warn!(
            open_file_limit = limit,
            configured = wanted.map_cache_entries,
            lowered_to = fitted.map_cache_entries,
            "--map-cache-entries/MAP_CACHE_ENTRIES lowered to fit the open-file limit \
             (each mapped file keeps its descriptor for sendfile); raise `ulimit -n` to keep it"
        );
        config.map_cache_entries = usize::try_from(fitted.map_cache_entries).unwrap_or(usize::MAX);
    }
    if fitted.max_stalled < wanted.max_stalled {
        tracing::warn!(
            open_file_limit = limit,
            configured = wanted.max_stalled,
            lowered_to = fitted.max_stalled,
            "--max-stalled/MAX_STALLED lowered to fit the open-file limit (a stalled body \
             may keep its file's descriptor); raise `ulimit -n` to keep it"
        );
        config.max_stalled = usize::try_from(fitted.max_stalled).unwrap_or(usize::MAX);
    }
    if fitted.max_connections < wanted.max_connections {
        tracing::warn!(
            open_file_limit = limit,
            configured = wanted.max_connections,
            lowered_to = fitted.max_connections,
            "--max-connections/MAX_CONNECTIONS lowered to fit the open-file limit; \
             raise `ulimit -n` to keep it"
        );
        config.max_connections = usize::try_from(fitted.max_connections).unwrap_or(usize::MAX);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANTED: Fitted = Fitted {
        map_cache_entries: 16_384,
        max_connections: 10_000,
        max_stalled: 0,
    };

    #[test]
    fn a_limit_that_fits_changes_nothing() {
        assert_eq!(fit(None, WANTED, 512), Ok(WANTED));
        assert_eq!(fit(Some(1 << 20), WANTED, 512), Ok(WANTED));
        let exact = RESERVE + 512 + 10_000 + 16_384;
        assert_eq!(fit(Some(exact), WANTED, 512), Ok(WANTED));
    }

    #[test]
    fn the_cache_is_lowered_first() {
        let fitted = fit(Some(20_000), WANTED, 512).unwrap();
        assert_eq!(fitted.max_connections, 10_000);
        assert_eq!(fitted.map_cache_entries, 20_000 - 10_000 - 512 - RESERVE);
    }

    #[test]
    fn then_the_connection_cap() {
        let fitted = fit(Some(1024), WANTED, 512).unwrap();
        assert_eq!(fitted.map_cache_entries, MIN_CACHE_ENTRIES);
        assert_eq!(
            fitted.max_connections,
            1024 - 512 - RESERVE - MIN_CACHE_ENTRIES
        );
        let total = fitted.map_cache_entries + fitted.max_connections + 512 + RESERVE;
        assert_eq!(total, 1024, "everything fits in the limit");
    }

    #[test]
    fn the_stalled_pool_is_lowered_after_the_cache_and_before_the_connection_cap() {
        let wanted = Fitted {
            max_stalled: 2048,
            ..WANTED
        };
        let exact = RESERVE + 512 + 2048 + 10_000 + 16_384;
        assert_eq!(fit(Some(exact), wanted, 512), Ok(wanted));
        let fitted = fit(Some(20_000), wanted, 512).unwrap();
        assert_eq!((fitted.max_connections, fitted.max_stalled), (10_000, 2048));
        assert_eq!(
            fitted.map_cache_entries,
            20_000 - 10_000 - 2048 - 512 - RESERVE
        );
        // 10,900: the cache at its floor, the pool takes what is left.
        let fitted = fit(Some(10_900), wanted, 512).unwrap();
        assert_eq!(fitted.map_cache_entries, MIN_CACHE_ENTRIES);
        assert_eq!(fitted.max_connections, 10_000);
        assert_eq!(
            fitted.max_stalled,
            10_900 - 10_000 - 512 - RESERVE - MIN_CACHE_ENTRIES
        );
        // 1024 (a common hard limit): no pool at all, and fewer connections.
        let fitted = fit(Some(1024), wanted, 512).unwrap();
        assert_eq!(fitted.max_stalled, 0);
        assert_eq!(fitted, fit(Some(1024), WANTED, 512).unwrap());
    }

    #[test]
    fn a_limit_too_small_for_one_connection_is_an_error() {
        let err = fit(Some(700), WANTED, 512).unwrap_err();
        assert!(err.contains("--max-in-flight"), "{err}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let raised = raise_limit();
        assert_eq!(raised, getrlimit(Resource::Nofile).maximum);
        assert_eq!(limit(), raised);
    }
}
