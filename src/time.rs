//! Recorded times as text: RFC 3339 in UTC with exactly six fractional digits and a `Z`
//! (`2026-11-23T12:00:00.123456Z`), the one form every output uses (GraphQL, exports,
//! manifests), and the parser of RFC 3339 input with any offset. Built on chrono.
//!
//! Times are microseconds since the Unix epoch, the unit of `annals_store::Timestamp`.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

/// `micros` as RFC 3339 in UTC with six fractional digits. `None` for the instants chrono
/// cannot represent (beyond about 262,000 years from year 0).
pub fn format(micros: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// Appends the text of [`format`] to `buf` for the years 0 to 9999 and returns `true`;
/// leaves `buf` as it is and returns `false` for other years. It skips the allocation and
/// formatting machinery of [`format`], for code that writes one time per exported event.
pub fn append(buf: &mut Vec<u8>, micros: i64) -> bool {
    let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let Some(t) = DateTime::<Utc>::from_timestamp(secs, 0) else {
        return false;
    };
    if !(0..=9999).contains(&t.year()) {
        return false;
    }
    digits(buf, t.year() as u32, 4);
    buf.push(b'-');
    digits(buf, t.month(), 2);
    buf.push(b'-');
    digits(buf, t.day(), 2);
    buf.push(b'T');
    digits(buf, t.hour(), 2);
    buf.push(b':');
    digits(buf, t.minute(), 2);
    buf.push(b':');
    digits(buf, t.second(), 2);
    buf.push(b'.');
    digits(buf, frac as u32, 6);
    buf.push(b'Z');
    true
}

/// Parses RFC 3339 with any offset into microseconds since the epoch.
pub fn parse(text: &str) -> Option<i64> {
    Some(DateTime::parse_from_rfc3339(text).ok()?.timestamp_micros())
}

/// Appends `n` as exactly `width` decimal digits.
fn digits(buf: &mut Vec<u8>, n: u32, width: usize) {
    let mut tmp = [b'0'; 10];
    let mut n = n;
    for d in tmp[..width].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.extend_from_slice(&tmp[..width]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: i64 = 1_700_000_000_123_456;

    #[test]
    fn a_known_time_has_microseconds_and_z() {
        assert_eq!(format(KNOWN).unwrap(), "2023-11-14T22:13:20.123456Z");
        assert_eq!(format(0).unwrap(), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn parse_takes_any_offset() {
        assert_eq!(parse("2023-11-14T22:13:20.123456Z"), Some(KNOWN));
        assert_eq!(parse("2023-11-14T23:13:20.123456+01:00"), Some(KNOWN));
        assert_eq!(parse("2026-11-23T12:00:00Z"), Some(1_795_435_200_000_000));
        assert_eq!(parse("2026-11-23 noon"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn round_trip_before_the_epoch_and_at_the_edges() {
        for micros in [
            KNOWN,
            0,
            -1,
            -1_000_000,
            -62_135_596_800_000_000, // 0001-01-01
            -62_167_219_200_000_000, // 0000-01-01
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999
        ] {
            let text = format(micros).unwrap();
            assert_eq!(parse(&text), Some(micros), "{text}");
        }
        assert_eq!(format(-1).unwrap(), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn append_writes_the_text_of_format_in_years_0_to_9999() {
        for micros in [
            KNOWN,
            0,
            -1,
            -62_167_219_200_000_000,
            253_402_300_799_999_999,
        ] {
            let mut buf = b"x".to_vec();
            assert!(append(&mut buf, micros));
            assert_eq!(buf[1..], *format(micros).unwrap().as_bytes());
        }
        for micros in [
            253_402_300_800_000_000,
            -62_167_219_200_000_001,
            i64::MIN,
            i64::MAX,
        ] {
            let mut buf = b"x".to_vec();
            assert!(!append(&mut buf, micros));
            assert_eq!(buf, b"x");
        }
        assert_eq!(format(i64::MAX), None);
    }
}
