//! ISO 8601 timestamps without a time zone, the form the old project wrote.
//!
//! The old project wrote local time with no zone; we cannot know which zone that was, so
//! those stamps are read as UTC. New feedback is stamped in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as `YYYY-MM-DDTHH:MM:SS.ffffff` in UTC.
pub fn iso_now() -> String {
    iso(SystemTime::now())
}

fn iso(t: SystemTime) -> String {
    // The old project's form has no zone; the stamp is UTC all the same.
    let text = humantime::format_rfc3339_micros(t).to_string();
    text.trim_end_matches('Z').to_string()
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.f*]` (an optional trailing `Z` is
/// accepted); `None` when the text is not in that form.
pub fn parse_iso(text: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs_f64())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn parses_the_old_projects_stamps() {
        // 2025-02-03 is day 20122 since the epoch (date -d 2025-02-03 +%s / 86400).
        let t = parse_iso("2025-02-03T18:15:17.471716").unwrap();
        assert!((t - (20_122.0 * 86_400.0 + 65_717.471716)).abs() < 1e-6);
        assert_eq!(parse_iso("2025-02-03T18:15:17Z"), Some(20_122.0 * 86_400.0 + 65_717.0));
        assert_eq!(parse_iso("yesterday"), None);
        assert_eq!(parse_iso("2025-13-03T18:15:17"), None);
    }

    #[test]
    fn formatting_round_trips() {
        let ms: u64 = 1_764_700_000_123;
        let text = iso(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(text, "2025-12-02T18:26:40.123000");
        assert!((parse_iso(&text).unwrap() - ms as f64 / 1000.0).abs() < 1e-6);
        assert!(parse_iso(&iso_now()).is_some());
    }
}
