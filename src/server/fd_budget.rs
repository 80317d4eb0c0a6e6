//! Open descriptors, bounded and fitted to `RLIMIT_NOFILE` at start-up.
//!
//! Every mapped file keeps its descriptor (the socket `sendfile`s from it), so the
//! process holds at most: one socket per connection (`--max-connections`), one file per
//! cached mapping (`--map-cache-entries`), one evicted file per media body still in
//! flight (`--max-in-flight`: a body holds one file) or waiting in the pool of bodies
//! whose clients stopped reading (`--max-stalled`), and a fixed reserve for everything
//! else (listener, epoll, stdio, the GUN and Elasticsearch pools, files read for GIF
//! metadata and stills). At start-up the soft limit is raised to the hard limit, as
//! nginx's `worker_rlimit_nofile` would; if the sum still does not fit, **every** bound
//! is scaled by the same factor, each kept at a floor (a configured protection is never
//! switched off: a non-zero stalled pool stays non-zero), and one `error` line names the
//! limit that would keep the configuration. Either way `accept` and `open` never fail for
//! lack of descriptors under the (lowered) load. `oip-media check` prints the same plan.

use std::fmt;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::config::Config;
use crate::error::StartError;
use crate::settings::{flag, option_names};

/// Descriptors kept for everything but connections, bodies and mapped files.
pub const RESERVE: u64 = 256;

/// Floors a bound is never scaled below (or its configured value, when that is lower):
/// enough mapped files to keep the hot GIFs cached, connections and bodies to serve,
/// and a stalled pool that still moves non-reading clients out of the in-flight bound.
const MIN_CACHE_ENTRIES: u64 = 64;
const MIN_CONNECTIONS: u64 = 64;
const MIN_IN_FLIGHT: u64 = 8;
const MIN_STALLED: u64 = 8;

/// The descriptor-holding bounds, as configured or as fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fitted {
    /// Mappings the cache may keep (each an open file).
    pub map_cache_entries: u64,
    /// Connections open at once.
    pub max_connections: u64,
    /// Media bodies in flight (each may hold an evicted file).
    pub max_in_flight: u64,
    /// Media bodies waiting out of the in-flight bound (each may hold an evicted file).
    pub max_stalled: u64,
}

impl Fitted {
    /// The bounds of `config`.
    pub fn of(config: &Config) -> Self {
        Fitted {
            map_cache_entries: config.store.map_cache_entries as u64,
            max_connections: config.server.max_connections as u64,
            max_in_flight: config.admission.max_in_flight as u64,
            max_stalled: config.admission.max_stalled as u64,
        }
    }

    /// Descriptors these bounds can hold at once, the reserve included.
    pub fn descriptors(&self) -> u64 {
        RESERVE
            .saturating_add(self.map_cache_entries)
            .saturating_add(self.max_connections)
            .saturating_add(self.max_in_flight)
            .saturating_add(self.max_stalled)
    }

    /// The four bounds with their settings' names, in the order the overflow is taken
    /// back from (the largest and cheapest to lose first).
    fn named(&self) -> [(String, u64); 4] {
        [
            (flag::<Config>("max_connections"), self.max_connections),
            (flag::<Config>("map_cache_entries"), self.map_cache_entries),
            (flag::<Config>("max_stalled"), self.max_stalled),
            (flag::<Config>("max_in_flight"), self.max_in_flight),
        ]
    }
}

/// What start-up does with the descriptor bounds under one open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The soft limit in force after raising it (`None`: unlimited).
    pub limit: Option<u64>,
    /// The bounds as configured.
    pub wanted: Fitted,
    /// The bounds start-up uses.
    pub fitted: Fitted,
}

impl Plan {
    /// Descriptors the configured bounds need: the limit that keeps them all.
    pub fn needed(&self) -> u64 {
        self.wanted.descriptors()
    }

    /// Whether any bound was lowered to fit the limit.
    pub fn lowered(&self) -> bool {
        self.fitted != self.wanted
    }
}

/// The plan as `oip-media check` and the start-up error line say it.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = self
            .limit
            .map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
        let needed = self.needed();
        if !self.lowered() {
            return write!(
                f,
                "open-file limit {limit} holds the configured bounds ({needed} descriptors)"
            );
        }
        write!(
            f,
            "open-file limit {limit} is below the {needed} descriptors the configured bounds \
             need: every bound lowered in proportion ("
        )?;
        for (i, ((name, wanted), (_, fitted))) in self
            .wanted
            .named()
            .into_iter()
            .zip(self.fitted.named())
            .enumerate()
        {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {wanted} -> {fitted}")?;
        }
        write!(
            f,
            "); raise the hard limit to {needed} to keep them: `ulimit -n {needed}`, \
             docker/podman `--ulimit nofile={needed}:{needed}`, compose \
             `ulimits: {{nofile: {needed}}}`, Kubernetes: the container runtime's \
             LimitNOFILE (containerd/CRI-O service) on the nodes"
        )
    }
}

/// Fits the configured bounds into `limit` descriptors (`None`: unlimited). When they do
/// not fit, each is scaled by `(limit - RESERVE) / (sum of the bounds)`, kept at its
/// floor (`MIN_*`, or its configured value when lower: a non-zero bound stays non-zero),
/// and whatever the floors add is taken back from the bounds above their floors,
/// connections first. An error when even the floors do not fit.
pub fn fit(limit: Option<u64>, wanted: Fitted) -> Result<Fitted, String> {
    let Some(limit) = limit else {
        return Ok(wanted);
    };
    if wanted.descriptors() <= limit {
        return Ok(wanted);
    }
    let floor = Fitted {
        map_cache_entries: wanted.map_cache_entries.min(MIN_CACHE_ENTRIES),
        max_connections: wanted.max_connections.min(MIN_CONNECTIONS),
        max_in_flight: wanted.max_in_flight.min(MIN_IN_FLIGHT),
        max_stalled: wanted.max_stalled.min(MIN_STALLED),
    };
    if floor.descriptors() > limit {
        return Err(format!(
            "the open-file limit ({limit}) cannot hold even the smallest bounds start-up \
             lowers to ({} descriptors: {RESERVE} reserved, {} connections, {} mapped files, \
             {} bodies in flight, {} stalled); raise `ulimit -n` to at least {}",
            floor.descriptors(),
            floor.max_connections,
            floor.map_cache_entries,
            floor.max_in_flight,
            floor.max_stalled,
            wanted.descriptors(),
        ));
    }
    let available = u128::from(limit - RESERVE);
    let total = u128::from(wanted.descriptors() - RESERVE);
    // Below 1: the bounds did not fit. u128: no product of two u64 overflows it.
    let scale = |bound: u64, floor: u64| -> u64 {
        let scaled = u128::from(bound) * available / total;
        u64::try_from(scaled).unwrap_or(u64::MAX).max(floor)
    };
    let mut fitted = Fitted {
        map_cache_entries: scale(wanted.map_cache_entries, floor.map_cache_entries),
        max_connections: scale(wanted.max_connections, floor.max_connections),
        max_in_flight: scale(wanted.max_in_flight, floor.max_in_flight),
        max_stalled: scale(wanted.max_stalled, floor.max_stalled),
    };
    let mut over = fitted.descriptors().saturating_sub(limit);
    for (bound, floor) in [
        (&mut fitted.max_connections, floor.max_connections),
        (&mut fitted.map_cache_entries, floor.map_cache_entries),
        (&mut fitted.max_stalled, floor.max_stalled),
        (&mut fitted.max_in_flight, floor.max_in_flight),
    ] {
        let take = over.min(*bound - floor);
        *bound -= take;
        over -= take;
    }
    debug_assert_eq!(over, 0, "the floors fit, so the overflow can be taken back");
    Ok(fitted)
}

/// The plan for `config` under `limit` (`None`: unlimited).
pub fn plan(limit: Option<u64>, config: &Config) -> Result<Plan, String> {
    let wanted = Fitted::of(config);
    fit(limit, wanted).map(|fitted| Plan {
        limit,
        wanted,
        fitted,
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

/// Raises the limit and fits `config`'s bounds into it. Lowered bounds are one `error`
/// line (a protection running below its configured size is an operator's problem, not a
/// notice), naming the limit that keeps them.
pub fn apply(config: &mut Config) -> Result<Plan, StartError> {
    let plan = plan(raise_limit(), config).map_err(|message| StartError::InvalidSetting {
        option: option_names::<Config>(&["max_connections", "max_in_flight"]),
        message,
    })?;
    if plan.lowered() {
        tracing::error!(
            open_file_limit = plan.limit,
            needed = plan.needed(),
            max_connections = plan.fitted.max_connections,
            map_cache_entries = plan.fitted.map_cache_entries,
            max_in_flight = plan.fitted.max_in_flight,
            max_stalled = plan.fitted.max_stalled,
            "{plan}"
        );
        let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        config.store.map_cache_entries = as_usize(plan.fitted.map_cache_entries);
        config.server.max_connections = as_usize(plan.fitted.max_connections);
        config.admission.max_in_flight = as_usize(plan.fitted.max_in_flight);
        config.admission.max_stalled = as_usize(plan.fitted.max_stalled);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults.
    const WANTED: Fitted = Fitted {
        map_cache_entries: 16_384,
        max_connections: 10_000,
        max_in_flight: 512,
        max_stalled: 2048,
    };

    #[test]
    fn a_limit_that_fits_changes_nothing() {
        assert_eq!(fit(None, WANTED), Ok(WANTED));
        assert_eq!(fit(Some(1 << 20), WANTED), Ok(WANTED));
        let exact = RESERVE + 512 + 2048 + 10_000 + 16_384;
        assert_eq!(WANTED.descriptors(), exact);
        assert_eq!(fit(Some(exact), WANTED), Ok(WANTED));
    }

    #[test]
    fn every_bound_shrinks_by_the_same_factor() {
        // 4096: a common container hard limit (`--ulimit nofile=4096:4096`).
        let fitted = fit(Some(4096), WANTED).unwrap();
        assert!(fitted.descriptors() <= 4096, "{fitted:?}");
        let factor = (4096.0 - RESERVE as f64) / (WANTED.descriptors() - RESERVE) as f64;
        for ((name, wanted), (_, got)) in WANTED.named().into_iter().zip(fitted.named()) {
            let expected = wanted as f64 * factor;
            assert!(
                (got as f64 - expected).abs() <= 1.0,
                "{name}: {got}, expected about {expected}"
            );
        }
        // The stalled pool stays on: 2048 * 3840 / 28944 = 271.
        assert_eq!(fitted.max_stalled, 271);
        assert_eq!(fitted.max_in_flight, 67);
        assert_eq!(fitted.max_connections, 1326);
        assert_eq!(fitted.map_cache_entries, 2173);
    }

    #[test]
    fn one_descriptor_short_lowers_each_bound_a_little() {
        let fitted = fit(Some(WANTED.descriptors() - 1), WANTED).unwrap();
        assert!(fitted.descriptors() < WANTED.descriptors());
        assert!(fitted.max_stalled > 2000 && fitted.max_connections > 9_990);
    }

    #[test]
    fn no_configured_protection_is_switched_off() {
        // 1024 (a common default hard limit): scaled, the pool would be 55; and with a
        // small pool configured, the floor keeps it.
        let fitted = fit(Some(1024), WANTED).unwrap();
        assert!(
            fitted.max_stalled > 0 && fitted.max_in_flight > 0,
            "{fitted:?}"
        );
        assert!(fitted.descriptors() <= 1024);
        let small_pool = Fitted {
            max_stalled: 4,
            ..WANTED
        };
        let fitted = fit(Some(1024), small_pool).unwrap();
        assert_eq!(fitted.max_stalled, 4, "below its floor: kept as configured");
        assert!(fitted.descriptors() <= 1024);
        // A pool configured off stays off; nothing is switched on either.
        let no_pool = Fitted {
            max_stalled: 0,
            ..WANTED
        };
        assert_eq!(fit(Some(1024), no_pool).unwrap().max_stalled, 0);
    }

    #[test]
    fn the_floors_hold_and_the_rest_is_taken_from_the_largest() {
        // 500: scaled by 244/28944, bodies in flight would be 4, under their floor; the
        // floor's extra descriptors come back from connections (first in line).
        let fitted = fit(Some(500), WANTED).unwrap();
        assert_eq!(fitted.max_in_flight, MIN_IN_FLIGHT);
        assert_eq!(fitted.max_stalled, 2048 * 244 / 28_944);
        assert_eq!(fitted.max_connections, 10_000 * 244 / 28_944 - 3);
        assert!(fitted.map_cache_entries >= MIN_CACHE_ENTRIES);
        assert!(fitted.max_connections >= MIN_CONNECTIONS);
        assert_eq!(fitted.descriptors(), 500, "{fitted:?}");
    }

    #[test]
    fn a_limit_too_small_for_the_floors_is_an_error() {
        let err = fit(Some(300), WANTED).unwrap_err();
        assert!(err.contains("ulimit -n") && err.contains("29200"), "{err}");
    }

    #[test]
    fn the_plan_names_each_bound_and_the_limit_needed() {
        let wanted = WANTED;
        let plan = Plan {
            limit: Some(4096),
            wanted,
            fitted: fit(Some(4096), wanted).unwrap(),
        };
        assert!(plan.lowered());
        assert_eq!(plan.needed(), 29_200);
        let line = plan.to_string();
        for part in [
            "open-file limit 4096",
            "--max-stalled 2048 -> 271",
            "--max-connections 10000 -> 1326",
            "ulimit -n 29200",
            "--ulimit nofile=29200:29200",
            "Kubernetes",
        ] {
            assert!(line.contains(part), "{part:?} in {line}");
        }
        let kept = Plan {
            limit: None,
            wanted,
            fitted: wanted,
        };
        assert!(!kept.lowered());
        assert!(kept.to_string().contains("unlimited holds"), "{kept}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let raised = raise_limit();
        assert_eq!(raised, getrlimit(Resource::Nofile).maximum);
        assert_eq!(getrlimit(Resource::Nofile).current, raised);
    }
}
