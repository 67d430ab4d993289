//! RFC 3339 in and out, UTC, millisecond precision: all the API needs, and
//! small enough not to pull a date crate in for it. (chrono's RFC 3339
//! parser is not a drop-in: it takes a leap second `:60`, refuses the space
//! that an unencoded `+` of an offset arrives as, and its errors do not say
//! which part is wrong.)

/// Latest instant the API accepts (2200-01-01T00:00:00Z). Far beyond any
/// device clock the platform accepts, and in nanoseconds still well inside
/// InfluxDB's (i64) time range.
pub const MAX_MS: i64 = 7_258_118_400_000;

const MS_PER_DAY: i64 = 86_400_000;

/// `2025-11-24T10:00:00.123Z` for a millisecond since the Unix epoch.
pub fn format_ms(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// Parses an RFC 3339 date-time (`2025-11-24T10:00:00Z`,
/// `2025-11-24T12:00:00.5+02:00`) into milliseconds since the Unix epoch;
/// digits below the millisecond are dropped. The error says what is wrong.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let b = text.as_bytes();
    if !text.is_ascii() || b.len() < 19 {
        return Err(NOT_RFC3339.into());
    }
    // Syntax first (fields, fraction, offset), then whether the fields
    // name a real instant, so the error points at the first thing wrong.
    let fields = DateTimeFields::read(b)?;
    let (millis, offset_at) = fraction_ms(b, 19)?;
    let offset_minutes = utc_offset_minutes(&b[offset_at..])?;
    fields.check()?;
    let days = days_from_civil(fields.year, fields.month, fields.day);
    let seconds = days * 86_400 + fields.hour * 3600 + fields.minute * 60 + fields.second
        - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

const NOT_RFC3339: &str = "is not an RFC 3339 date-time";

/// The fixed-width part `YYYY-MM-DDTHH:MM:SS`, read but not yet checked
/// against the calendar.
struct DateTimeFields {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

impl DateTimeFields {
    /// Reads the first 19 bytes of `b` (the caller checked there are 19).
    fn read(b: &[u8]) -> Result<Self, String> {
        let digits = |from: usize, len: usize| -> Result<i64, String> {
            b[from..from + len]
                .iter()
                .try_fold(0i64, |acc, c| {
                    c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
                })
                .ok_or_else(|| NOT_RFC3339.to_string())
        };
        let separators: [(usize, &[u8]); 5] =
            [(4, b"-"), (7, b"-"), (10, b"Tt "), (13, b":"), (16, b":")];
        if separators
            .iter()
            .any(|(at, allowed)| !allowed.contains(&b[*at]))
        {
            return Err(NOT_RFC3339.into());
        }
        Ok(Self {
            year: digits(0, 4)?,
            month: digits(5, 2)?,
            day: digits(8, 2)?,
            hour: digits(11, 2)?,
            minute: digits(14, 2)?,
            second: digits(17, 2)?,
        })
    }

    /// Whether the fields name a day of the calendar and a time of that day
    /// (no leap second).
    fn check(&self) -> Result<(), String> {
        let (year, month, day) = (self.year, self.month, self.day);
        if !(1..=12).contains(&month) {
            return Err(format!("has month {month:02}"));
        }
        if day < 1 || day > days_in_month(year, month) {
            return Err(format!(
                "has day {day:02}, which {year:04}-{month:02} does not have"
            ));
        }
        let (hour, minute, second) = (self.hour, self.minute, self.second);
        if hour > 23 || minute > 59 || second > 59 {
            return Err(format!(
                "has time {hour:02}:{minute:02}:{second:02}, which is not a time of day"
            ));
        }
        Ok(())
    }
}

/// The optional `.fraction` at `at`: its milliseconds (digits below are
/// dropped) and where the text goes on after it.
fn fraction_ms(b: &[u8], at: usize) -> Result<(i64, usize), String> {
    if b.get(at) != Some(&b'.') {
        return Ok((0, at));
    }
    let start = at + 1;
    let mut end = start;
    while end < b.len() && b[end].is_ascii_digit() {
        end += 1;
    }
    if end == start {
        return Err("has a '.' without fraction digits".into());
    }
    // First three fraction digits, right-padded: ".5" is 500 ms.
    let millis = (start..start + 3).fold(0, |acc, i| {
        let digit = if i < end { i64::from(b[i] - b'0') } else { 0 };
        acc * 10 + digit
    });
    Ok((millis, end))
}

/// The rest of the text, which must be exactly `Z` or `±HH:MM`: the offset
/// from UTC in minutes.
fn utc_offset_minutes(rest: &[u8]) -> Result<i64, String> {
    match rest {
        [b'Z' | b'z'] => Ok(0),
        // A '+' in an unencoded query string arrives as a space; nothing
        // else can stand there, so reading it as '+' is unambiguous.
        [sign @ (b'+' | b'-' | b' '), h1, h2, b':', m1, m2] => {
            let hh = two_digits(*h1, *h2).filter(|h| *h <= 23);
            let mm = two_digits(*m1, *m2).filter(|m| *m <= 59);
            let (Some(hh), Some(mm)) = (hh, mm) else {
                return Err("has an invalid UTC offset".into());
            };
            let minutes = hh * 60 + mm;
            Ok(if *sign == b'-' { -minutes } else { minutes })
        }
        _ => Err("must end with 'Z' or a UTC offset such as +02:00".into()),
    }
}

fn two_digits(a: u8, b: u8) -> Option<i64> {
    (a.is_ascii_digit() && b.is_ascii_digit())
        .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_764_000_000_123), "2025-11-24T16:00:00.123Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(MAX_MS), "2200-01-01T00:00:00.000Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats() {
        for ms in [
            0,
            1,
            951_782_400_000,
            1_764_000_000_123,
            4_102_444_799_999,
            MAX_MS,
        ] {
            assert_eq!(parse_rfc3339_ms(&format_ms(ms)), Ok(ms), "{ms}");
        }
    }

    #[test]
    fn parses_offsets_fractions_and_lenient_forms() {
        let utc = 1_764_000_000_000;
        assert_eq!(parse_rfc3339_ms("2025-11-24T16:00:00Z"), Ok(utc));
        assert_eq!(parse_rfc3339_ms("2025-11-24t16:00:00z"), Ok(utc));
        assert_eq!(parse_rfc3339_ms("2025-11-24 16:00:00Z"), Ok(utc));
        assert_eq!(parse_rfc3339_ms("2025-11-24T18:00:00+02:00"), Ok(utc));
        assert_eq!(parse_rfc3339_ms("2025-11-24T18:00:00 02:00"), Ok(utc));
        assert_eq!(parse_rfc3339_ms("2025-11-24T12:30:00-03:30"), Ok(utc));
        assert_eq!(parse_rfc3339_ms("2025-11-24T16:00:00.5Z"), Ok(utc + 500));
        assert_eq!(
            parse_rfc3339_ms("2025-11-24T16:00:00.123999999Z"),
            Ok(utc + 123)
        );
    }

    #[test]
    fn refuses_malformed_and_impossible_dates() {
        for (text, why) in [
            ("yesterday", "not an RFC 3339"),
            ("2025-11-24", "not an RFC 3339"),
            ("2025-11-24T16:00", "not an RFC 3339"),
            ("2025-11-24T16:00:00", "must end with"),
            ("2025-11-24T16:00:00.123", "must end with"),
            ("2025-11-24T16:00:00+0200", "must end with"),
            ("2025-11-24T16:00:00.Z", "without fraction"),
            ("2025-13-01T00:00:00Z", "month 13"),
            ("2025-02-29T00:00:00Z", "day 29"),
            ("2025-04-31T00:00:00Z", "day 31"),
            ("2025-11-24T24:00:00Z", "not a time of day"),
            ("2025-11-24T16:00:60Z", "not a time of day"),
            ("2025-11-24T16:00:00+24:00", "offset"),
            ("2025-11-24T16:00:00Zjunk", "must end with"),
            ("２025-11-24T16:00:00Z", "not an RFC 3339"),
        ] {
            let err = parse_rfc3339_ms(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00Z"),
            Ok(1_709_164_800_000)
        );
    }
}
