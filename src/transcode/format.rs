//! The variant formats a GIF can be asked for with `?format=`, and what each is.

/// A video (or animated-image) variant of a GIF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum VariantFormat {
    /// H.264 in MP4 (`<video>` everywhere, Safari included): the smallest and the one
    /// every browser plays.
    Mp4,
    /// VP9 in WebM, with the GIF's transparency kept.
    Webm,
    /// Animated WebP (lossy q75; lossless for transparent GIFs): an `<img>` replacement,
    /// transparency and loop count kept.
    Webp,
}

impl VariantFormat {
    /// Every format, in the order error messages and `/info` list them.
    pub const ALL: [VariantFormat; 3] =
        [VariantFormat::Mp4, VariantFormat::Webm, VariantFormat::Webp];

    /// The format named `name` in a URL (lowercase, exact).
    pub fn parse(name: &str) -> Option<VariantFormat> {
        match name {
            "mp4" => Some(VariantFormat::Mp4),
            "webm" => Some(VariantFormat::Webm),
            "webp" => Some(VariantFormat::Webp),
            _ => None,
        }
    }

    /// Its name in URLs, metrics and file names.
    pub fn name(self) -> &'static str {
        match self {
            VariantFormat::Mp4 => "mp4",
            VariantFormat::Webm => "webm",
            VariantFormat::Webp => "webp",
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            VariantFormat::Mp4 => "video/mp4",
            VariantFormat::Webm => "video/webm",
            VariantFormat::Webp => "image/webp",
        }
    }

    /// The allowed names, for error messages: `mp4, webm, webp`.
    pub fn allowed_list() -> String {
        VariantFormat::ALL
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for VariantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_else_parses() {
        for format in VariantFormat::ALL {
            assert_eq!(VariantFormat::parse(format.name()), Some(format));
        }
        for bad in ["MP4", "gif", "", "mp4 ", "../mp4", "webm\0"] {
            assert_eq!(VariantFormat::parse(bad), None, "{bad:?}");
        }
        assert_eq!(VariantFormat::allowed_list(), "mp4, webm, webp");
        assert_eq!(VariantFormat::Webp.content_type(), "image/webp");
    }
}
