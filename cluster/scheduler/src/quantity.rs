//! Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `1e3`, `2G`) as integers:
//! CPU in millicores, everything else in whole units rounded up, as the scheduler
//! compares them.

use thiserror::Error;

/// A quantity that is not one Kubernetes accepts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{text:?} is not a resource quantity ({reason})")]
pub struct QuantityError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// `text` in thousandths of a unit (`100m` → 100, `2` → 2000), rounded up.
pub fn parse_milli(text: &str) -> Result<i64, QuantityError> {
    parse_scaled(text, 3)
}

/// `text` in whole units (`128Mi` → 134217728, `1500m` → 2), rounded up.
pub fn parse_units(text: &str) -> Result<i64, QuantityError> {
    parse_scaled(text, 0)
}

/// `text` × 10^`decimals`, rounded up to an integer.
fn parse_scaled(text: &str, decimals: i32) -> Result<i64, QuantityError> {
    let fail = |reason| QuantityError {
        text: text.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    let (sign, body) = match trimmed.as_bytes().first() {
        Some(b'-') => (-1, &trimmed[1..]),
        Some(b'+') => (1, &trimmed[1..]),
        Some(_) => (1, trimmed),
        None => return Err(fail("empty")),
    };
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(fail("no number"));
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    // The digits as one integer and the power of ten that scales it.
    let digits = format!("{whole}{fraction}");
    let mut exponent = -(fraction.len() as i32) + decimals;
    let mut binary: u32 = 0;
    match suffix {
        "" => {}
        "n" => exponent -= 9,
        "u" => exponent -= 6,
        "m" => exponent -= 3,
        "k" => exponent += 3,
        "M" => exponent += 6,
        "G" => exponent += 9,
        "T" => exponent += 12,
        "P" => exponent += 15,
        "E" => exponent += 18,
        "Ki" => binary = 10,
        "Mi" => binary = 20,
        "Gi" => binary = 30,
        "Ti" => binary = 40,
        "Pi" => binary = 50,
        "Ei" => binary = 60,
        s if s.starts_with(['e', 'E']) => {
            exponent += s[1..].parse::<i32>().map_err(|_| fail("bad exponent"))?;
        }
        _ => return Err(fail("unknown suffix")),
    }
    let mut value: i128 = digits
        .trim_start_matches('0')
        .parse::<i128>()
        .or_else(|_| {
            if digits.chars().all(|c| c == '0') {
                Ok(0)
            } else {
                Err(fail("too large"))
            }
        })?;
    value = value
        .checked_mul(1i128 << binary)
        .ok_or_else(|| fail("too large"))?;
    if exponent >= 0 {
        let scale = 10i128
            .checked_pow(exponent as u32)
            .ok_or_else(|| fail("too large"))?;
        value = value.checked_mul(scale).ok_or_else(|| fail("too large"))?;
    } else {
        let scale = 10i128
            .checked_pow(exponent.unsigned_abs())
            .unwrap_or(i128::MAX);
        value = (value + scale - 1) / scale;
    }
    i64::try_from(value * sign).map_err(|_| fail("too large"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{parse_milli, parse_units};

    #[test]
    fn cpu_quantities_become_millicores() {
        assert_eq!(parse_milli("100m").unwrap(), 100);
        assert_eq!(parse_milli("2").unwrap(), 2000);
        assert_eq!(parse_milli("0.5").unwrap(), 500);
        assert_eq!(parse_milli("1.0005").unwrap(), 1001, "rounded up");
        assert_eq!(parse_milli("250000u").unwrap(), 250);
        assert_eq!(parse_milli("1e3").unwrap(), 1_000_000);
        assert_eq!(parse_milli("0").unwrap(), 0);
    }

    #[test]
    fn byte_quantities_become_bytes() {
        assert_eq!(parse_units("128Mi").unwrap(), 128 << 20);
        assert_eq!(parse_units("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_units("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_units("1500m").unwrap(), 2);
        assert_eq!(parse_units("110").unwrap(), 110);
        assert_eq!(parse_units("4E").unwrap(), 4_000_000_000_000_000_000);
    }

    #[test]
    fn malformed_quantities_are_refused_with_the_text() {
        for bad in ["", "abc", "1.2.3", "12Xi", "1e", "9Ei0", "."] {
            let err = parse_units(bad).unwrap_err();
            assert_eq!(err.text, bad);
        }
        assert!(parse_units("100Ei").is_err(), "overflows i64");
    }
}
