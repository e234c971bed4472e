//! How the toolbox's cache CLI writes numbers and times, so that ours prints
//! the same lines: sizes in binary units with one decimal and no space
//! (`800.0`, `1.5K`, `9.0G`), durations in Go's `time.Duration` format
//! (`1.234567ms`, `2m3.5s`), and dates in Go's RFC 822 layout
//! (`05 Mar 25 14:07 UTC`) in the local time zone.
//!
//! Pure functions of their inputs, but for `rfc822`, which asks the C
//! library for the zone.

use std::time::Duration;

/// A byte count as the toolbox prints it: below 1024 the number itself with
/// one decimal (`0.0`, `18.0`, also for negative counts); above, the unit
/// is picked from the integer quotient and the quotient printed rounded, so
/// `1048575` is `1024.0K`.
pub fn size(bytes: i64) -> String {
    const UNIT: i64 = 1024;
    if bytes < UNIT {
        return format!("{:.1}", bytes as f64);
    }
    let mut div = UNIT;
    let mut exp = 0;
    let mut n = bytes / UNIT;
    while n >= UNIT {
        div *= UNIT;
        exp += 1;
        n /= UNIT;
    }
    let unit = ['K', 'M', 'G', 'T', 'P', 'E'][exp];
    format!("{:.1}{unit}", bytes as f64 / div as f64)
}

/// A byte count given as unsigned, saturated into the signed range.
pub fn size_u(bytes: u64) -> String {
    size(i64::try_from(bytes).unwrap_or(i64::MAX))
}

/// `d` as Go's `Duration.String()` writes it: `0s`, `850ns`, `12.345µs`,
/// `1.5ms`, `1.5s`, `2m3.456789012s`, `1h0m0.5s`, trailing zeros of the
/// fraction dropped.
pub fn duration(d: Duration) -> String {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    match ns {
        0 => "0s".to_string(),
        1..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{}µs", decimal(ns, 3)),
        1_000_000..=999_999_999 => format!("{}ms", decimal(ns, 6)),
        _ => {
            let secs = ns / 1_000_000_000;
            let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
            let mut out = String::new();
            if h > 0 {
                out.push_str(&format!("{h}h"));
            }
            if h > 0 || m > 0 {
                out.push_str(&format!("{m}m"));
            }
            out.push_str(&decimal(s * 1_000_000_000 + ns % 1_000_000_000, 9));
            out.push('s');
            out
        }
    }
}

/// `value / 10^digits` in decimal, without trailing zeros in the fraction.
fn decimal(value: u64, digits: u32) -> String {
    let unit = 10u64.pow(digits);
    let (whole, frac) = (value / unit, value % unit);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Unix milliseconds as Go's `time.RFC822` (`02 Jan 06 15:04 MST`) in the
/// local time zone, as the toolbox shows the times of an SFTP cache; in
/// UTC when the zone cannot be read.
pub fn rfc822(unix_ms: u64) -> String {
    let secs = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX);
    let local = crate::process::sys::local_time(secs);
    match local {
        Some(t) => {
            let zone = if t.zone.is_empty() {
                // Go writes a zone without a name as its offset.
                let off = t.offset_secs;
                let sign = if off < 0 { '-' } else { '+' };
                format!("{sign}{:02}{:02}", off.abs() / 3600, off.abs() % 3600 / 60)
            } else {
                t.zone
            };
            rfc822_of(t.year, t.month, t.day, t.hour, t.minute, &zone)
        }
        None => {
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let rem = secs.rem_euclid(86_400);
            let (h, min) = ((rem / 3600) as u32, (rem % 3600 / 60) as u32);
            rfc822_of(y, m, d, h, min, "UTC")
        }
    }
}

fn rfc822_of(year: i64, month: u32, day: u32, hour: u32, minute: u32, zone: &str) -> String {
    let month = MONTHS[(month.clamp(1, 12) - 1) as usize];
    format!(
        "{day:02} {month} {:02} {hour:02}:{minute:02} {zone}",
        year.rem_euclid(100)
    )
}

/// The date of a day number since 1970-01-01 (the proleptic Gregorian
/// calendar; Howard Hinnant's well-known algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day number since 1970-01-01 of a date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 3339 in the local time zone (`2025-01-02T03:04:05Z`,
/// `2025-01-02T04:04:05+01:00`), as logrus stamps the one line `cache`
/// writes before its log file is open.
pub fn rfc3339(unix_secs: i64) -> String {
    let (y, m, d, h, min, s, off) = match crate::process::sys::local_time(unix_secs) {
        Some(t) => (
            t.year,
            t.month,
            t.day,
            t.hour,
            t.minute,
            t.second,
            t.offset_secs,
        ),
        None => {
            let (y, m, d) = civil_from_days(unix_secs.div_euclid(86_400));
            let rem = unix_secs.rem_euclid(86_400);
            let (h, min, s) = (
                (rem / 3600) as u32,
                (rem % 3600 / 60) as u32,
                (rem % 60) as u32,
            );
            (y, m, d, h, min, s, 0)
        }
    };
    let zone = if off == 0 {
        "Z".to_string()
    } else {
        let sign = if off < 0 { '-' } else { '+' };
        format!("{sign}{:02}:{:02}", off.abs() / 3600, off.abs() % 3600 / 60)
    };
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}{zone}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_the_toolbox_s() {
        let cases: [(i64, &str); 14] = [
            (0, "0.0"),
            (18, "18.0"),
            (800, "800.0"),
            (1023, "1023.0"),
            (-512, "-512.0"),
            (-5_368_709_120, "-5368709120.0"),
            (1024, "1.0K"),
            (102_400, "100.0K"),
            (102_528, "100.1K"),
            (5 << 20, "5.0M"),
            ((5 << 20) + (128 << 10), "5.1M"),
            (9 << 30, "9.0G"),
            (9_663_676_398, "9.0G"),
            (1_048_575, "1024.0K"),
        ];
        for (n, want) in cases {
            assert_eq!(size(n), want, "{n}");
        }
        assert_eq!(size_u(u64::MAX), "8.0E");
    }

    #[test]
    fn durations_are_go_s() {
        let cases: [(u64, &str); 10] = [
            (0, "0s"),
            (850, "850ns"),
            (12_345, "12.345µs"),
            (1_234_567, "1.234567ms"),
            (1_500_000, "1.5ms"),
            (1_500_000_000, "1.5s"),
            (60_000_000_000, "1m0s"),
            (123_456_789_012, "2m3.456789012s"),
            (3_600_500_000_000, "1h0m0.5s"),
            (1_000, "1µs"),
        ];
        for (ns, want) in cases {
            assert_eq!(duration(Duration::from_nanos(ns)), want, "{ns}");
        }
    }

    #[test]
    fn dates_round_trip_and_print_as_rfc822() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for days in [-1000, 0, 59, 60, 11_016, 20_000, 30_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(rfc822_of(2025, 3, 5, 14, 7, "UTC"), "05 Mar 25 14:07 UTC");
        let stamp = rfc3339(1_000_000_000);
        assert!(
            stamp.starts_with("2001-09-0") && stamp.len() >= 20,
            "{stamp}"
        );
        // Whatever the machine's zone, the layout holds.
        let text = rfc822(1_000_000_000_000);
        assert_eq!(
            text.len() - text.rsplit(' ').next().unwrap().len(),
            16,
            "{text}"
        );
    }
}
