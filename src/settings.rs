//! What every settings group shares: the parsers of durations, sizes and rates its
//! flags take, [`Invalid`], the answer of a group's `validate`, and [`option_name`],
//! [`flag`] and [`env_name`], the names clap gives a group's settings, for messages (so
//! no message types one by hand). A leaf: the groups
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

/// The flag and environment variable of `S`'s setting whose argument id (its field's
/// name) is `id`, as clap knows them: `--gun-attempts / GUN_ATTEMPTS`. What a message
/// naming a setting says, so that no message types a flag's name by hand and a renamed
/// flag renames it everywhere.
///
/// Generic over the settings group, not bound to `config::Config`, so that a component
/// names its own settings without importing `config` (which imports the components).
/// Builds the group's clap arguments on each call: meant for errors and start-up notes,
/// not for a request's path.
pub fn option_name<S: clap::Args>(id: &str) -> String {
    described::<S>(id, |arg| {
        let long = arg.get_long().map(|long| format!("--{long}"));
        let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
        match (long, env) {
            (Some(long), Some(env)) => Some(format!("{long} / {env}")),
            (Some(name), None) | (None, Some(name)) => Some(name),
            (None, None) => None,
        }
    })
}

/// What `describe` says of `S`'s argument `id`; `id` itself when there is no such
/// argument (only a typo in a caller gets here; the callers' tests catch it) or it has
/// nothing to say. The one lookup behind [`option_name`], [`env_name`] and [`flag`].
fn described<S: clap::Args>(
    id: &str,
    describe: impl FnOnce(&clap::Arg) -> Option<String>,
) -> String {
    S::augment_args(clap::Command::new("oip-media"))
        .get_arguments()
        .find(|arg| arg.get_id() == id)
        .and_then(describe)
        .unwrap_or_else(|| id.to_owned())
}

/// [`option_name`] of each of `ids`, joined by `, `: the settings that decide one thing
/// together (`--bind / BIND, --port / PORT`).
pub fn option_names<S: clap::Args>(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| option_name::<S>(id))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The environment variable alone of `S`'s setting `id` (`GUN_PEERS`), for a message
/// that speaks of the deployment's environment (`GUN_PEERS unset`). `id` itself when
/// the setting has none (a typo in a caller).
pub fn env_name<S: clap::Args>(id: &str) -> String {
    described::<S>(id, |arg| {
        arg.get_env().map(|env| env.to_string_lossy().into_owned())
    })
}

/// The long flag alone of `S`'s setting `id` (`--gun-response-limit`), for a message that
/// names the setting mid-sentence, where [`option_name`]'s environment twin would only be
/// noise. `id` itself when the setting has no long flag (a typo in a caller).
pub fn flag<S: clap::Args>(id: &str) -> String {
    described::<S>(id, |arg| arg.get_long().map(|long| format!("--{long}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A settings group of its own, so these tests hold whatever the real groups become.
    #[derive(Debug, clap::Args)]
    struct Sample {
        /// A flag with an environment twin.
        #[arg(long, env = "SAMPLE_ATTEMPTS", default_value_t = 3)]
        sample_attempts: u32,
        /// A flag renamed away from its field's name.
        #[arg(long = "renamed-flag")]
        old_name: Option<String>,
    }

    #[test]
    fn option_name_is_the_flag_and_env_clap_knows() {
        assert_eq!(
            option_name::<Sample>("sample_attempts"),
            "--sample-attempts / SAMPLE_ATTEMPTS"
        );
        // The message follows the flag, not the field: a rename shows in it.
        assert_eq!(option_name::<Sample>("old_name"), "--renamed-flag");
        assert_eq!(flag::<Sample>("old_name"), "--renamed-flag");
        assert_eq!(flag::<Sample>("sample_attempts"), "--sample-attempts");
        assert_eq!(env_name::<Sample>("sample_attempts"), "SAMPLE_ATTEMPTS");
        assert_eq!(env_name::<Sample>("old_name"), "old_name");
        assert_eq!(
            option_names::<Sample>(&["sample_attempts", "old_name"]),
            "--sample-attempts / SAMPLE_ATTEMPTS, --renamed-flag"
        );
        // An unknown id is shown as it is rather than dropped.
        assert_eq!(option_name::<Sample>("not_a_setting"), "not_a_setting");
        assert_eq!(flag::<Sample>("not_a_setting"), "not_a_setting");
        assert_eq!(env_name::<Sample>("not_a_setting"), "not_a_setting");
    }

    #[test]
    fn a_real_group_names_its_flags() {
        assert_eq!(
            option_name::<crate::gun::GunSettings>("gun_attempts"),
            "--gun-attempts / GUN_ATTEMPTS"
        );
    }
}
