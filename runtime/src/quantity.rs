//! Kubernetes resource quantities (`128Mi`, `250m`, `1.5`, `2e3`) as integers: bytes for
//! memory, millicores for CPU, rounded up as Kubernetes' `Value()`/`MilliValue()` do.

/// Why a quantity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantity {text:?}: {reason}")]
pub struct QuantityError {
    /// The text.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A quantity as `mantissa × 10^exp10 × 2^exp2`.
struct Parsed {
    mantissa: i128,
    exp10: i32,
    exp2: u32,
}

fn parse(text: &str) -> Result<Parsed, QuantityError> {
    let err = |reason| QuantityError {
        text: text.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    let number_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(number_end);
    if number.is_empty() {
        return Err(err("no number"));
    }
    let (negative, digits) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(err("no digits"));
    }
    if !(whole.chars().all(|c| c.is_ascii_digit()) && fraction.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(err("not a number"));
    }
    let mut mantissa: i128 = 0;
    for c in whole.chars().chain(fraction.chars()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(c as u8 - b'0')))
            .ok_or_else(|| err("too large"))?;
    }
    if negative {
        mantissa = -mantissa;
    }
    let mut exp10 = -(fraction.len() as i32);
    let mut exp2 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        other => {
            let exponent = other
                .strip_prefix(['e', 'E'])
                .and_then(|e| e.parse::<i32>().ok())
                .ok_or_else(|| err("unknown suffix"))?;
            exp10 += exponent;
        }
    }
    Ok(Parsed {
        mantissa,
        exp10,
        exp2,
    })
}

/// The quantity scaled by `10^scale`, rounded up, as an `i64`.
fn scaled(text: &str, scale: i32) -> Result<i64, QuantityError> {
    let too_large = || QuantityError {
        text: text.to_owned(),
        reason: "too large",
    };
    let parsed = parse(text)?;
    let mut value = parsed
        .mantissa
        .checked_mul(1i128 << parsed.exp2)
        .ok_or_else(too_large)?;
    let exp = parsed.exp10 + scale;
    if exp >= 0 {
        for _ in 0..exp {
            value = value.checked_mul(10).ok_or_else(too_large)?;
        }
    } else {
        let divisor = 10i128
            .checked_pow(exp.unsigned_abs())
            .ok_or_else(too_large)?;
        let rounded_up = value.div_euclid(divisor) + i128::from(value.rem_euclid(divisor) != 0);
        value = rounded_up;
    }
    i64::try_from(value).map_err(|_| too_large())
}

/// The quantity as a whole number (bytes for memory), rounded up.
pub fn value(text: &str) -> Result<i64, QuantityError> {
    scaled(text, 0)
}

/// The quantity in thousandths (millicores for CPU), rounded up.
pub fn milli_value(text: &str) -> Result<i64, QuantityError> {
    scaled(text, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities_become_bytes() {
        assert_eq!(value("128Mi").unwrap(), 128 << 20);
        assert_eq!(value("1G").unwrap(), 1_000_000_000);
        assert_eq!(value("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(value("2e3").unwrap(), 2000);
        assert_eq!(value("100").unwrap(), 100);
        assert_eq!(value("0.5").unwrap(), 1, "rounded up");
    }

    #[test]
    fn cpu_quantities_become_millicores() {
        assert_eq!(milli_value("250m").unwrap(), 250);
        assert_eq!(milli_value("1").unwrap(), 1000);
        assert_eq!(milli_value("0.1").unwrap(), 100);
        assert_eq!(milli_value("1.0005").unwrap(), 1001, "rounded up");
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        assert_eq!(value("12Qi").unwrap_err().reason, "unknown suffix");
        assert_eq!(value("Mi").unwrap_err().reason, "no number");
        assert_eq!(value("1.2.3").unwrap_err().reason, "not a number");
        assert_eq!(value("9Ei9").unwrap_err().reason, "unknown suffix");
        assert_eq!(value("99999999999Ei").unwrap_err().reason, "too large");
    }
}
