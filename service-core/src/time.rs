//! RFC 3339 times as Kubernetes writes them (UTC, `Z`): [`format_rfc3339`] for
//! `metav1.Time` (whole seconds), [`format_rfc3339_nanos`] for Go's `RFC3339Nano` (the
//! fraction without trailing zeros, as `encoding/json` prints a `time.Time`), and
//! [`parse_rfc3339`] for both and for offsets other than `Z`. Pure arithmetic on
//! [`SystemTime`]; no clock is read.

use std::time::{Duration, SystemTime};

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Seconds and nanoseconds since the epoch (negative seconds before it).
fn split(t: SystemTime) -> (i64, u32) {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    }
}

fn format(t: SystemTime, nanos: bool) -> String {
    let (secs, frac) = split(t);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos && frac != 0 {
        let digits = format!("{frac:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// `2026-12-06T04:51:22Z`: whole seconds, UTC (how `metav1.Time` is written).
pub fn format_rfc3339(t: SystemTime) -> String {
    format(t, false)
}

/// `2026-12-06T04:51:22.12345Z`: Go's `RFC3339Nano` in UTC, the fraction without trailing
/// zeros (and without a dot when it is zero).
pub fn format_rfc3339_nanos(t: SystemTime) -> String {
    format(t, true)
}

/// Why a time did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an RFC 3339 time (like 2006-01-02T15:04:05Z): {why}")]
pub struct TimeError {
    text: String,
    why: &'static str,
}

/// Parses an RFC 3339 time: `2006-01-02T15:04:05Z`, with an optional fraction of up to
/// nine digits, and `Z` or an offset (`+02:00`). `t` may also be lower case, as RFC 3339
/// allows.
///
/// # Errors
/// The text is not such a time, or names a date that does not exist.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, TimeError> {
    let err = |why| TimeError {
        text: text.to_owned(),
        why,
    };
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<u32, TimeError> {
        let s = text.get(range).ok_or_else(|| err("too short"))?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(err("a digit was expected"));
        }
        s.parse().map_err(|_| err("a digit was expected"))
    };
    if b.len() < 20 {
        return Err(err("too short"));
    }
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(err("separators are misplaced"));
    }
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month[(mo - 1) as usize] {
        return Err(err("no such date"));
    }
    if h > 23 || mi > 59 || s > 59 {
        return Err(err("no such time of day"));
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &text[start..i];
        if digits.is_empty() || digits.len() > 9 {
            return Err(err("the fraction needs one to nine digits"));
        }
        nanos = format!("{digits:0<9}")
            .parse()
            .map_err(|_| err("bad fraction"))?;
    }
    let offset: i64 = match &text[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return Err(err("no such offset"));
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * i64::from(oh * 3600 + om * 60)
        }
        _ => return Err(err("the zone must be Z or like +02:00")),
    };
    let secs =
        days_from_civil(i64::from(y), mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + s) - offset;
    let t = if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            + Duration::from_nanos(u64::from(nanos))
    };
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn formats_as_go_does() {
        // `date -u -d @1780721482`.
        let t = at(1_780_721_482, 0);
        assert_eq!(format_rfc3339(t), "2026-06-06T04:51:22Z");
        assert_eq!(format_rfc3339_nanos(t), "2026-06-06T04:51:22Z");
        assert_eq!(
            format_rfc3339_nanos(at(1_780_721_482, 120_000_000)),
            "2026-06-06T04:51:22.12Z"
        );
        assert_eq!(
            format_rfc3339_nanos(at(0, 1)),
            "1970-01-01T00:00:00.000000001Z"
        );
        assert_eq!(format_rfc3339(at(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(
            format_rfc3339(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
            "1969-12-31T23:59:59Z"
        );
    }

    #[test]
    fn parses_what_it_formats_and_offsets() {
        for t in [
            at(1_780_721_482, 0),
            at(1_780_721_482, 123_456_789),
            at(951_782_400, 5),
        ] {
            assert_eq!(parse_rfc3339(&format_rfc3339_nanos(t)).unwrap(), t);
        }
        assert_eq!(
            parse_rfc3339("2026-06-06T06:51:22+02:00").unwrap(),
            at(1_780_721_482, 0)
        );
        assert_eq!(
            parse_rfc3339("2026-06-06t04:51:22.5z").unwrap(),
            at(1_780_721_482, 500_000_000)
        );
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            "",
            "2026-06-06",
            "2026-06-06 04:51:22Z",
            "2026-02-30T00:00:00Z",
            "2026-06-06T24:00:00Z",
            "2026-06-06T04:51:22",
            "2026-06-06T04:51:22.Z",
            "2026-06-06T04:51:22.1234567890Z",
            "2026-06-06T04:51:22+0200",
            "２026-06-06T04:51:22Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?}");
        }
    }
}
