//! The wait between retries of an unavailable relay.

use std::time::Duration;

/// Longest single backoff: past a few seconds the call deadline decides, not the backoff.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long to wait before retry number `retry` (1 for the first retry): `base · 2^(retry-1)`,
/// capped at [`MAX_BACKOFF`], half of it fixed and half random ("equal jitter"), so callers
/// that failed together spread out but none retries at once.
pub(crate) fn backoff(base: Duration, retry: u32) -> Duration {
    let exponent = retry.saturating_sub(1).min(16);
    let full = base.saturating_mul(1 << exponent).min(MAX_BACKOFF);
    let half = full / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(fastrand::u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_bounds() {
        let base = Duration::from_millis(100);
        for _ in 0..200 {
            let first = backoff(base, 1);
            assert!(
                first >= Duration::from_millis(50) && first <= base,
                "{first:?}"
            );
            let third = backoff(base, 3);
            assert!(
                third >= Duration::from_millis(200) && third <= Duration::from_millis(400),
                "{third:?}"
            );
            assert!(backoff(base, 40) <= MAX_BACKOFF);
        }
    }

    #[test]
    fn backoff_is_jittered() {
        let base = Duration::from_millis(100);
        let waits: std::collections::HashSet<_> = (0..50).map(|_| backoff(base, 2)).collect();
        assert!(waits.len() > 1, "50 backoffs were all equal: no jitter");
    }
}
