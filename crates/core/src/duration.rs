//! Human durations ("30m", "1h 30m", "250ms") used by job files and configuration.

use std::time::Duration;

/// The longest duration accepted anywhere (100 years). Durations are kept as milliseconds in
/// 64 bits and added to clocks; a bound far below both limits means no arithmetic on an
/// accepted duration can wrap (`18446744073709551s 616ms` would otherwise become zero).
pub const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600 + 25 * 24 * 3600);

/// Parses a human duration such as `30m`, `10s` or `1h 30m`, at most [`MAX`].
///
/// Returns a message that says what is accepted, fit to show to a user.
pub fn parse(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration `{text}`: {e}; write a number with a unit, like `30s`, `5m` or `1h 30m`")
    })?;
    if d > MAX {
        return Err(format!("duration `{text}` is too long; the longest accepted is 100 years"));
    }
    Ok(d)
}

/// Formats a duration the way [`parse`] reads it.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_units() {
        assert_eq!(parse("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse("soon").unwrap_err().contains("like `30s`"));
        assert!(parse("10").is_err());
    }

    #[test]
    fn overflowing_durations_are_refused() {
        // 2^64 milliseconds: as a u64 count of milliseconds this wraps to zero.
        let e = parse("18446744073709551s 616ms").unwrap_err();
        assert!(e.contains("too long"), "{e}");
        assert!(parse("18446744073709551615s").is_err());
        assert!(parse("101years").is_err());
        assert_eq!(parse("100years").unwrap(), MAX);
        assert!(u64::try_from(MAX.as_millis()).is_ok());
    }

    #[test]
    fn format_round_trips() {
        for d in [Duration::from_millis(1), Duration::from_secs(61), Duration::from_secs(86_400)] {
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}
