//! Human durations ("30m", "1h 30m", "250ms") used by job files and configuration.

use std::time::Duration;

/// Parses a human duration such as `30m`, `10s` or `1h 30m`.
///
/// Returns a message that says what is accepted, fit to show to a user.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration `{text}`: {e}; write a number with a unit, like `30s`, `5m` or `1h 30m`")
    })
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
    fn format_round_trips() {
        for d in [Duration::from_millis(1), Duration::from_secs(61), Duration::from_secs(86_400)] {
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}
