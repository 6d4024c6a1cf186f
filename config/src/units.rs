//! DRBD number suffixes: `s` (512-byte sectors), `k`, `M`, `G` (binary), as in drbd.conf.
//!
//! Owns: converting "250k" to a count of an option's unit and back. Must never: know keys.

const SECTOR_BYTES: u64 = 512;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * 1024 * 1024;

/// Parses `"<n>[s|k|K|m|M|g|G]"` into a count of `unit_bytes`; no suffix means the value is
/// already in the option's unit. Errors say what is wrong.
pub(crate) fn parse_scaled(text: &str, unit_bytes: u64) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("\"{text}\" is not a number with an optional s/k/M/G suffix"))?;
    let mult = match suffix {
        "" => return Ok(n),
        "s" => SECTOR_BYTES,
        "k" | "K" => KIB,
        "m" | "M" => MIB,
        "g" | "G" => GIB,
        other => {
            return Err(format!(
                "unknown suffix \"{other}\" in \"{text}\"; allowed suffixes: s, k, M, G"
            ))
        }
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("\"{text}\" is too large"))?;
    if bytes % unit_bytes != 0 {
        return Err(format!(
            "\"{text}\" is not a whole number of {unit_bytes}-byte units"
        ));
    }
    Ok(bytes / unit_bytes)
}

/// Renders a count of `unit_bytes` with the largest exact binary suffix (k, M, G), or as a
/// plain number when no suffix fits exactly.
pub(crate) fn format_scaled(count: u64, unit_bytes: u64) -> String {
    let Some(bytes) = count.checked_mul(unit_bytes) else {
        return count.to_string();
    };
    if bytes == 0 {
        return "0".to_owned();
    }
    for (mult, suffix) in [(GIB, "G"), (MIB, "M"), (KIB, "k")] {
        if bytes % mult == 0 && mult >= unit_bytes {
            return format!("{}{suffix}", bytes / mult);
        }
    }
    count.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_scale_to_the_option_unit() {
        assert_eq!(parse_scaled("250k", 1024), Ok(250));
        assert_eq!(parse_scaled("100M", 1024), Ok(102_400));
        assert_eq!(parse_scaled("1G", 1024), Ok(1024 * 1024));
        assert_eq!(parse_scaled("250", 1024), Ok(250));
        assert_eq!(parse_scaled("100s", 512), Ok(100));
        assert_eq!(parse_scaled("50k", 512), Ok(100));
        assert_eq!(parse_scaled("512k", 1), Ok(524_288));
    }

    #[test]
    fn bad_numbers_and_suffixes_are_rejected_with_reason() {
        assert!(parse_scaled("12x", 1024).unwrap_err().contains("suffix"));
        assert!(parse_scaled("k", 1024)
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_scaled("1s", 1024)
            .unwrap_err()
            .contains("whole number"));
    }

    #[test]
    fn formatting_round_trips() {
        for (count, unit) in [(250, 1024), (102_400, 1024), (100, 512), (0, 1), (1000, 1)] {
            assert_eq!(parse_scaled(&format_scaled(count, unit), unit), Ok(count));
        }
        assert_eq!(format_scaled(102_400, 1024), "100M");
        assert_eq!(format_scaled(250, 1024), "250k");
    }
}
