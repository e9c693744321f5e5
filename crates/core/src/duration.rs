//! Human durations ("30m", "1h 30m", "250ms") used by job files and configuration.

use std::time::Duration;

/// The longest duration accepted anywhere (100 years). Durations are kept as milliseconds in
/// 64 bits and added to clocks; a bound far below both limits means no arithmetic on an
/// accepted duration can wrap (`18446744073709551s 616ms` would otherwise become zero).
pub const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600 + 25 * 24 * 3600);

/// The units a duration may use (those of `humantime`).
const UNITS: &[&str] = &[
    "nanos", "nsec", "ns", "usec", "us", "µs", "millis", "msec", "ms", "seconds", "second", "secs", "sec", "s",
    "minutes", "minute", "mins", "min", "m", "hours", "hour", "hrs", "hr", "h", "days", "day", "d", "weeks", "week",
    "wks", "wk", "w", "months", "month", "M", "years", "year", "yrs", "yr", "y",
];

/// The syntax [`parse`] accepts, as a regular expression (the OpenAPI document's `pattern`):
/// one or more numbers, each with an optional fraction and a unit, spaces allowed around
/// them. (`humantime` alone would also read spaces inside a number, `1 0s`.)
pub fn pattern() -> String {
    let number = r"[0-9]+(\.[0-9]+)?\s*(";
    format!(r"^\s*({number}{})\s*)+$", UNITS.join("|"))
}

/// Whether `text` has the syntax of [`pattern`] (a duration [`parse`] may still refuse as too
/// long).
pub fn well_formed(text: &str) -> bool {
    let mut rest = text.trim();
    if rest.is_empty() {
        return false;
    }
    let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    while !rest.is_empty() {
        let n = digits(rest);
        if n == 0 {
            return false;
        }
        rest = &rest[n..];
        if let Some(fraction) = rest.strip_prefix('.') {
            let n = digits(fraction);
            if n == 0 {
                return false;
            }
            rest = &fraction[n..];
        }
        rest = rest.trim_start();
        let letters = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_alphabetic() || c == 'µ').len();
        if !UNITS.contains(&&rest[..letters]) {
            return false;
        }
        rest = rest[letters..].trim_start();
    }
    true
}

/// Parses a human duration such as `30m`, `10s` or `1h 30m`, at most [`MAX`].
///
/// Returns a message that says what is accepted, fit to show to a user.
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid = |why: String| {
        format!("invalid duration `{text}`: {why}; write a number with a unit, like `30s`, `5m` or `1h 30m`")
    };
    if !well_formed(text) {
        return Err(invalid("not a number with a unit".into()));
    }
    let too_long = || format!("duration `{text}` is too long; the longest accepted is 100 years");
    let d = humantime::parse_duration(text.trim()).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => too_long(),
        e => invalid(e.to_string()),
    })?;
    if d > MAX {
        return Err(too_long());
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
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse(" 1.5h ").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("2µs").unwrap(), Duration::from_micros(2));
    }

    /// The syntax check and the pattern the document states agree, and a number is never
    /// split by spaces.
    #[test]
    fn the_syntax_is_the_documented_pattern() {
        assert!(pattern().starts_with(r"^\s*([0-9]+(\.[0-9]+)?\s*(nanos|"), "{}", pattern());
        for bad in ["", " ", "1 0s", "1.s", ".5s", "5", "5 parsecs", "s", "1h 30", "-1s", "1e3s", "1s,2s"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        for good in ["0s", "1 s", "1h 30m", "1h30m15s", "10 minutes", "3 years 2 days"] {
            assert!(parse(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn overflowing_durations_are_refused() {
        // 2^64 milliseconds: as a u64 count of milliseconds this wraps to zero.
        let e = parse("18446744073709551s 616ms").unwrap_err();
        assert!(e.contains("too long"), "{e}");
        assert!(parse("18446744073709551615s").unwrap_err().contains("too long"));
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
