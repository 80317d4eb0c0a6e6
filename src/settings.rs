//! What every settings group shares: the parsers of durations, sizes and rates its
//! flags take, and [`Invalid`], the answer of a group's `validate`. A leaf: the groups
//! live beside their components (`gun::GunSettings`, `store::StoreSettings`, …) and
//! import only this, so `config`, which flattens them, imports no component that
//! imports it back.

use std::time::Duration;

/// Parses a duration given in whole seconds or with a unit (`500ms`, `10s`, `2m`, `1h`).
///
/// Hand-written because it is a few lines and every duration flag shares it, and because
/// `humantime` would refuse the bare seconds (`30`) the documented settings accept.
/// Arithmetic is checked: a value too large for its unit is an error, not a wrap.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration (try 30s, 500ms, 5m)"))?;
    let secs_per = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => {
            return Err(format!(
                "`{raw}`: unknown unit `{unit}` (use ms, s, m or h)"
            ));
        }
    };
    n.checked_mul(secs_per)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{raw}` is too large"))
}

/// Parses a rate from 0 to 1 (`1`, `0.25`, `0`).
pub fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "`{raw}` is not a rate from 0 to 1 (try 1, 0.1, 0.01)"
        )),
    }
}

/// Parses a byte size: a plain number of bytes or one with a binary suffix (`64KiB`, `512MiB`, `2GiB`).
pub fn parse_bytes(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{raw}` is not a size (try 65536, 64KiB, 512MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{raw}`: unknown unit `{other}` (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{raw}` is too large"))
}

/// A setting whose value the service cannot work with: its clap argument id (the field's
/// name, `max_in_flight`) and what is wrong. [`crate::config::Config::validate`] turns the
/// id into the flag and environment names clap knows (`--max-in-flight / MAX_IN_FLIGHT`),
/// so no group types a flag's name by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The argument id: the settings field's name.
    pub id: &'static str,
    /// What is wrong with the value.
    pub message: String,
}

impl Invalid {
    /// `id`'s value is wrong because of `message`.
    pub fn new(id: &'static str, message: impl Into<String>) -> Invalid {
        Invalid {
            id,
            message: message.into(),
        }
    }
}

/// `Err` naming `id` when a count that must be at least 1 is 0.
pub fn at_least_one(id: &'static str, value: usize) -> Result<(), Invalid> {
    match value {
        0 => Err(Invalid::new(id, "must be at least 1")),
        _ => Ok(()),
    }
}

/// `Err` naming `id` when a duration that must be positive is zero.
pub fn not_zero(id: &'static str, value: Duration) -> Result<(), Invalid> {
    match value.is_zero() {
        true => Err(Invalid::new(id, "must be greater than zero")),
        false => Ok(()),
    }
}
