//! Sizes as users write them ("100G", "64K", "4096") and the kernel's 512-byte sectors.

use crate::error::{Error, Result};

/// Bytes in a sector, the unit of dm tables and status lines: 512.
pub const SECTOR: u64 = devicemapper::SECTOR_SIZE as u64;

/// Parse bytes with an optional K/M/G/T suffix (powers of 1024; "KiB", "k", "B" also
/// accepted). `what` and `example` go into the error message ("size", "64K, 1G").
pub fn parse_bytes(text: &str, what: &'static str, example: &str) -> Result<u64> {
    let t = text.trim();
    let bad = |why: &str| Error::invalid(what, format!("'{text}' {why}; use e.g. {example}"));
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad("does not start with a number"));
    }
    let number: u64 = t[..digits_end].parse().map_err(|_| bad("is too large"))?;
    let shift = match t[digits_end..].to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad("has an unknown suffix (K, M, G or T)")),
    };
    number.checked_mul(1u64 << shift).ok_or_else(|| bad("is too large"))
}

/// A size for the kernel: `parse_bytes`, and a positive multiple of 512 bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let bytes = parse_bytes(text, "size", "512, 64K, 1G")?;
    let bad = |why: &str| Error::invalid("size", format!("'{text}' {why}; use e.g. 512, 64K, 1G"));
    if bytes == 0 {
        return Err(bad("is zero"));
    }
    if bytes % SECTOR != 0 {
        return Err(bad("is not a multiple of 512 bytes"));
    }
    Ok(bytes)
}

/// Render bytes the way `parse_size` reads them, exact when possible ("64K", "1G", "1536").
pub fn format_size(bytes: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes_as_powers_of_1024() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("100G").unwrap(), 100 << 30);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        assert_eq!(parse_size("3MiB").unwrap(), 3 << 20);
    }

    #[test]
    fn refuses_what_is_not_a_sector_multiple_or_garbage() {
        for bad in ["", "G", "1000", "0", "-1G", "1.5G", "12Q", "99999999999999999999", "16777216T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        let msg = parse_size("1000").unwrap_err().to_string();
        assert!(msg.contains("multiple of 512"), "{msg}");
    }

    #[test]
    fn formats_round_trip() {
        for b in [512u64, 65536, 1 << 30, 3 << 20, 1536, 100 << 30] {
            assert_eq!(parse_size(&format_size(b)).unwrap(), b);
        }
        assert_eq!(format_size(1 << 30), "1G");
    }
}
