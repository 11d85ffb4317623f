//! The wall clock, as the store and the protocols count it.

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A point in time as an operator writes one, in unix seconds: unix
/// seconds (`1764936000`), an RFC 3339 time as the lists print them
/// (`2026-12-02T10:00:00Z`), or a duration back from `now` (`90s`, `30m`,
/// `24h`, `7d`).
///
/// # Errors
///
/// A message saying what is expected, for anything else.
pub fn time_bound(text: &str, now: u64) -> Result<u64, String> {
    if let Ok(unix) = text.parse::<u64>() {
        return Ok(unix);
    }
    if let Some(at) = gate402_mpp::parse_time(text) {
        return Ok(at.unix_timestamp().max(0) as u64);
    }
    let expected = || {
        format!("{text:?}: expected a date (2026-12-02T10:00:00Z), unix seconds or 30m, 24h, 7d")
    };
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = number.parse().map_err(|_| expected())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(expected)?;
    Ok(now.saturating_sub(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_as_operators_write_them() {
        let now = 1_764_936_000;
        for (text, expected) in [
            ("1700000000", Ok(1_700_000_000)),
            ("2026-12-02T10:00:00Z", Ok(1_796_205_600)),
            ("90s", Ok(now - 90)),
            ("30m", Ok(now - 1800)),
            ("24h", Ok(now - 86_400)),
            ("7d", Ok(now - 7 * 86_400)),
        ] {
            assert_eq!(time_bound(text, now), expected, "{text}");
        }
        for text in ["", "h", "24x", "-1", "yesterday", "99999999999999999999d"] {
            let error = time_bound(text, now).unwrap_err();
            assert!(error.contains("expected a date"), "{text}: {error}");
        }
    }
}
