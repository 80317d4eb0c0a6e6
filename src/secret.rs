//! Setting values that hold credentials, each with a `Debug` (and `Display`) that hides
//! them, so the configuration can be logged and printed in a panic message. A leaf.

/// A secret setting. Its `Debug` prints `<redacted>`, so `{:?}` of the configuration (in a
/// log line or a panic message) never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one component that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(Secret(raw.to_owned()))
    }
}

/// A URL setting that may carry credentials as user-info (`https://user:pass@host`, as
/// some deployments write `ELASTICSEARCHHOST`). Its `Debug` prints the URL without the
/// user-info, so the start-up "effective configuration" line never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlSetting(String);

impl UrlSetting {
    /// The URL as configured, user-info included, for the one component that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its user-info: what may be logged. A value that is not a URL
    /// with a host is shown only from its last `@` on.
    pub fn redacted(&self) -> String {
        match reqwest::Url::parse(self.0.trim()) {
            Ok(mut url) if url.has_host() => {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.to_string()
            }
            _ => match self.0.rsplit_once('@') {
                Some((_, host)) => format!("<redacted>@{host}"),
                None => self.0.clone(),
            },
        }
    }
}

impl std::fmt::Debug for UrlSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::str::FromStr for UrlSetting {
    type Err = std::convert::Infallible;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(UrlSetting(raw.to_owned()))
    }
}

impl From<String> for UrlSetting {
    fn from(raw: String) -> Self {
        UrlSetting(raw)
    }
}

impl From<&str> for UrlSetting {
    fn from(raw: &str) -> Self {
        UrlSetting(raw.to_owned())
    }
}

/// A Redis URL whose password never shows: `Debug` and `Display` print it with the
/// password replaced by `***`, so the effective configuration and connection errors can
/// be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(Secret);

impl RedisUrl {
    /// The URL itself, password included, for the Redis client only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The URL with its password (and a `pass=`/`password=` query value) replaced by
    /// `***`; a URL that does not parse is not shown at all.
    pub fn redacted(&self) -> String {
        let Ok(mut url) = reqwest::Url::parse(self.expose()) else {
            return "<unparsable URL, not shown>".to_owned();
        };
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(key, value)| {
                    let hidden = matches!(key.as_ref(), "pass" | "password");
                    let value = if hidden {
                        "***".into()
                    } else {
                        value.into_owned()
                    };
                    (key.into_owned(), value)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = std::convert::Infallible;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(RedisUrl(Secret::new(raw.trim())))
    }
}
