//! Durations in the config file: an integer followed by a unit, `"100ms"`, `"2s"`, `"1m"`,
//! `"1h"`. No fractions and no bare numbers, so a value always says its own unit.

use std::time::Duration;

/// The allowed forms, quoted in every duration error.
pub const ALLOWED_FORMS: &str = r#"write an integer with a unit: "100ms", "2s", "1m" or "1h""#;

/// Parses `"<integer><unit>"` with unit `ms`, `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(format!("invalid duration {text:?}; {ALLOWED_FORMS}"));
    }
    let too_large = || format!("duration {text:?} is too large");
    let n: u64 = number.parse().map_err(|_| too_large())?;
    let secs = |mul: u64| {
        n.checked_mul(mul)
            .map(Duration::from_secs)
            .ok_or_else(too_large)
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "" => Err(format!("duration {text:?} has no unit; {ALLOWED_FORMS}")),
        _ if unit.starts_with('.') => Err(format!(
            "duration {text:?} is not a whole number; {ALLOWED_FORMS}"
        )),
        _ => Err(format!(
            "duration {text:?} has an unknown unit {unit:?}; {ALLOWED_FORMS}"
        )),
    }
}

/// Formats a duration the way the file writes it, for messages: `"1500ms"`, `"2s"`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_is_not_integer_and_unit() {
        for bad in ["5", "", "s", "1.5s", "2 s", "3sec", "-1s", "10d"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(ALLOWED_FORMS), "{bad:?}: {err}");
        }
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("18446744073709551615h")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn formats_like_the_file() {
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
    }
}
