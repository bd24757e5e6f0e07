//! Numbers in scenario files: decimal or `0x` hex, optional `K`/`M`/`G` suffix (powers of 1024).

use alloc::format;
use alloc::string::String;

/// Parses a scenario number: decimal or `0x` hex, with an optional `K`, `M` or `G` suffix
/// (powers of 1024). `_` may separate digits (`0x1_0000_0000`). Overflow of `u64` is an error.
pub fn parse_number(s: &str) -> Result<u64, String> {
    let (body, mult) = if let Some(b) = s.strip_suffix('K') {
        (b, 1u64 << 10)
    } else if let Some(b) = s.strip_suffix('M') {
        (b, 1u64 << 20)
    } else if let Some(b) = s.strip_suffix('G') {
        (b, 1u64 << 30)
    } else {
        (s, 1u64)
    };
    let (digits, radix) = match body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        Some(d) => (d, 16),
        None => (body, 10),
    };
    if digits.is_empty() {
        return Err(format!("`{s}` is not a number"));
    }
    if digits.starts_with('_') || digits.ends_with('_') {
        return Err(format!("`{s}` is not a number"));
    }
    let mut value: u64 = 0;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        let d = match c.to_digit(radix) {
            Some(d) => u64::from(d),
            None => return Err(format!("`{s}` is not a number")),
        };
        value = value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(d))
            .ok_or_else(|| format!("`{s}` does not fit in 64 bits"))?;
    }
    value
        .checked_mul(mult)
        .ok_or_else(|| format!("`{s}` does not fit in 64 bits"))
}

/// Parses a number that must fit in one byte.
pub(crate) fn parse_byte(s: &str) -> Result<u8, String> {
    let v = parse_number(s)?;
    u8::try_from(v).map_err(|_| format!("`{s}` does not fit in a byte"))
}
