//! ISO 8601 timestamps without a time zone, the form the old project wrote.
//!
//! The old project wrote local time with no zone; we cannot know which zone that was, so
//! those stamps are read as UTC. New feedback is stamped in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as `YYYY-MM-DDTHH:MM:SS.ffffff` in UTC.
pub fn iso_now() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    iso_from_micros(micros)
}

fn iso_from_micros(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{frac:06}")
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.f*]` (an optional trailing `Z` is
/// accepted); `None` when the text is not in that form.
pub fn parse_iso(text: &str) -> Option<f64> {
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, clock) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut c = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (c.next()??, c.next()??, c.next()??);
    let valid = (1..=12).contains(&mo)
        && (1..=31).contains(&day)
        && (0..24).contains(&h)
        && (0..60).contains(&mi)
        && (0..=60).contains(&s);
    if !valid || !frac.chars().all(|ch| ch.is_ascii_digit()) {
        return None;
    }
    let frac = if frac.is_empty() { 0.0 } else { format!("0.{frac}").parse::<f64>().ok()? };
    let days = days_from_civil(y, mo, day);
    Some((days * 86_400 + h * 3600 + mi * 60 + s) as f64 + frac)
}

// Howard Hinnant's proleptic Gregorian day-count algorithms, day 0 = 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A test fails loudly at the first surprise.
mod tests {
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
        let ms: i64 = 1_764_700_000_123;
        let text = iso_from_micros(ms * 1000);
        assert_eq!(text, "2025-12-02T18:26:40.123000");
        assert!((parse_iso(&text).unwrap() - ms as f64 / 1000.0).abs() < 1e-6);
        assert!(parse_iso(&iso_now()).is_some());
    }
}
