//! The start-up configuration as an operator reads it: every setting under its flag's
//! name with the value as given (so sizes and durations keep their units: `512MiB`,
//! `60s`), where it came from, the version and commit; credentials redacted.
//!
//! Values come from clap's matches, not from `Config`'s `Debug` (raw byte counts, one
//! ~3 KB string). Redaction is by name and by shape, so a setting added later is covered
//! without a list to keep up to date: a flag whose name says it holds a credential
//! (`secret`, `password`, `token`, `key`) prints `<redacted>`, and any value with
//! user-info (`http://user:pass@host`, also inside a comma list such as `--gun-peers`)
//! loses it.

use clap::ArgMatches;
use clap::parser::ValueSource;

use crate::secret::UrlSetting;

/// The version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The short commit this binary was built from, or `unknown` (see `build.rs`).
pub const COMMIT: &str = env!("OIP_MEDIA_COMMIT");

/// One setting as logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The long flag's name (`max-file-size`).
    pub name: String,
    /// The value as given or defaulted, redacted.
    pub value: String,
    /// Left at its default.
    pub default: bool,
}

/// Every top-level setting of `command` with its value in `matches`, redacted.
pub fn settings(command: &clap::Command, matches: &ArgMatches) -> Vec<Setting> {
    let mut out = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(name) = arg.get_long() else { continue };
        if matches!(id, "help" | "version") {
            continue;
        }
        let Some(raw) = matches.get_raw(id) else {
            continue;
        };
        let joined = raw
            .map(|v| v.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(",");
        out.push(Setting {
            name: name.to_owned(),
            value: redact(name, &joined),
            default: matches.value_source(id) == Some(ValueSource::DefaultValue),
        });
    }
    out
}

/// `value` of the flag `name`, fit for a log.
pub(crate) fn redact(name: &str, value: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if ["secret", "password", "token", "key"]
        .iter()
        .any(|word| lower.contains(word))
    {
        return "<redacted>".to_owned();
    }
    if !value.contains('@') {
        return value.to_owned();
    }
    value
        .split(',')
        .map(|part| {
            if part.contains('@') {
                UrlSetting::from(part).redacted()
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The settings as one JSON object (`{"max-file-size":"512MiB",…}`).
pub fn as_json(settings: &[Setting]) -> serde_json::Value {
    serde_json::Value::Object(
        settings
            .iter()
            .map(|s| (s.name.clone(), serde_json::Value::String(s.value.clone())))
            .collect(),
    )
}

/// The settings not at their default, as `name=value` pairs for the human line.
pub fn changed_pairs(settings: &[Setting]) -> String {
    settings
        .iter()
        .filter(|s| !s.default)
        .map(|s| {
            if s.value.contains(' ') || s.value.is_empty() {
                format!("{}={:?}", s.name, s.value)
            } else {
                format!("{}={}", s.name, s.value)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Now as RFC 3339 UTC with microseconds, as the JSON log lines' `timestamp`.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn credentials_are_redacted_by_name_and_user_info_by_shape() {
        assert_eq!(redact("jwt-secret", "hunter2"), "<redacted>");
        assert_eq!(redact("elastic-password", "hunter2"), "<redacted>");
        assert_eq!(
            redact("elasticsearch-host", "http://elastic:s3cret@es:9200"),
            "http://es:9200/"
        );
        let peers = redact(
            "gun-peers",
            "http://a:s3cret@relay:8765/gun,http://other/gun",
        );
        assert!(!peers.contains("s3cret"), "{peers}");
        assert!(peers.contains("http://other/gun"), "{peers}");
        assert_eq!(redact("max-file-size", "512MiB"), "512MiB");
    }

    #[test]
    fn values_keep_their_units_and_defaults_are_marked() {
        let command = crate::Config::command();
        let matches = command
            .clone()
            .try_get_matches_from(["oip-media", "--max-file-size", "64MiB"])
            .unwrap();
        let settings = settings(&command, &matches);
        let size = settings.iter().find(|s| s.name == "max-file-size").unwrap();
        assert_eq!((size.value.as_str(), size.default), ("64MiB", false));
        let interval = settings
            .iter()
            .find(|s| s.name == "summary-interval")
            .unwrap();
        assert_eq!((interval.value.as_str(), interval.default), ("60s", true));
        assert_eq!(changed_pairs(&settings), "max-file-size=64MiB");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let now = rfc3339_now();
        assert_eq!(now.len(), 27, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
    }
}
