//! Sample GIF generation (placeholder; see issue 2).
