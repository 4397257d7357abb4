//! Kubernetes resource quantities (`512Mi`, `1G`, `1.5Gi`, `2e9`) as byte counts.

/// The grammar of a Kubernetes quantity as a regular expression, the one Kubernetes' own CRD
/// generator (controller-gen) puts on `resource.Quantity` fields, so that every apiserver, old
/// or new, refuses a memory limit such as `lots` before the operator sees it.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// A string that is not a Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError(pub String);

impl std::fmt::Display for QuantityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} is not a Kubernetes quantity such as 512Mi or 2Gi",
            self.0
        )
    }
}

impl std::error::Error for QuantityError {}

/// Parses a quantity into its value (bytes, for memory).
///
/// # Errors
/// When `text` is not a decimal number followed by an optional suffix of the Kubernetes
/// quantity grammar.
pub fn parse_bytes(text: &str) -> Result<f64, QuantityError> {
    let invalid = || QuantityError(text.to_owned());
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let multiplier = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..].parse().map_err(|_| invalid())?;
            10f64.powi(power)
        }
        _ => return Err(invalid()),
    };
    let value = number * multiplier;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_decimal_and_exponent_suffixes_parse_to_bytes() {
        assert_eq!(parse_bytes("512Mi"), Ok(512.0 * 1024.0 * 1024.0));
        assert_eq!(parse_bytes("1.5Gi"), Ok(1.5 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_bytes("2G"), Ok(2e9));
        assert_eq!(parse_bytes("3e6"), Ok(3e6));
        assert_eq!(parse_bytes("1024"), Ok(1024.0));
    }

    #[test]
    fn text_that_is_not_a_quantity_is_rejected() {
        for bad in ["", "Mi", "12XB", "-5Mi", "1e", "abc"] {
            assert!(parse_bytes(bad).is_err(), "{bad} should be rejected");
        }
    }
}
