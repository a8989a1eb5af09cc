//! Python semantics the MMMU parser relies on: `str.isspace`/`str.strip()`, the `re` classes `\d`
//! and `\w` for `str` patterns, `float(str)` acceptance, and `round(x, 2)`.

use std::sync::LazyLock;

use regex::Regex;

/// `str.isspace()` for one character (the set `str.strip()` and `str.split()` use): Unicode
/// whitespace plus the ASCII separators U+001C–U+001F, which Rust's `char::is_whitespace` lacks.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `s.strip()` with Python's whitespace set.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `s.split()` (no argument): runs of Python whitespace separate, empty pieces dropped.
pub fn split_whitespace(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|p| !p.is_empty())
}

static ND: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\p{Nd}$").expect("static regex"));
static WORD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[\p{L}\p{N}_]$").expect("static regex"));

/// `re`'s `\d` for `str` patterns: Unicode category Nd.
pub fn is_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    let mut buf = [0u8; 4];
    ND.is_match(c.encode_utf8(&mut buf))
}

/// `re`'s `\w` for `str` patterns: `str.isalnum()` or `_`, i.e. letters (L*), numbers (N*) and
/// the underscore.
pub fn is_word(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    let mut buf = [0u8; 4];
    WORD.is_match(c.encode_utf8(&mut buf))
}

/// The value of a decimal digit (category Nd). Unicode guarantees that Nd characters come in
/// contiguous runs of ten, 0 to 9, so the value is the distance to the run's start.
fn digit_value(c: char) -> Option<u32> {
    if c.is_ascii_digit() {
        return c.to_digit(10);
    }
    if !is_digit(c) {
        return None;
    }
    let mut start = c as u32;
    while start > 0 {
        match char::from_u32(start - 1) {
            Some(p) if is_digit(p) => start -= 1,
            _ => break,
        }
    }
    Some((c as u32 - start) % 10)
}

/// `float(s)` for a `str`: `Some(value)` where CPython accepts the string, `None` where it raises
/// `ValueError`.
///
/// CPython (`PyFloat_FromString`) first maps non-ASCII whitespace to a space and non-ASCII decimal
/// digits to ASCII digits (anything else non-ASCII is invalid), strips ASCII whitespace, checks
/// that every `_` sits between two digits and drops it, then parses `[sign] (inf | infinity | nan
/// | digits [. digits] [e [sign] digits])` case-insensitively, correctly rounded.
pub fn py_float(s: &str) -> Option<f64> {
    let mut ascii = String::with_capacity(s.len());
    for c in s.chars() {
        if (c as u32) < 127 {
            ascii.push(c);
        } else if is_space(c) {
            ascii.push(' ');
        } else {
            ascii.push(char::from_digit(digit_value(c)?, 10)?);
        }
    }
    let t = ascii.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r'));
    let cleaned = remove_underscores(t)?;
    parse_ascii_float(&cleaned)
}

/// `_Py_string_to_number_with_underscores`: an underscore must follow a digit and precede one.
fn remove_underscores(s: &str) -> Option<String> {
    if !s.contains('_') {
        return Some(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut prev = '\0';
    for c in s.chars() {
        if c == '_' {
            if !prev.is_ascii_digit() {
                return None;
            }
        } else {
            if prev == '_' && !c.is_ascii_digit() {
                return None;
            }
            out.push(c);
        }
        prev = c;
    }
    (prev != '_').then_some(out)
}

/// `_Py_dg_strtod`-compatible grammar check, then Rust's correctly rounded parser.
fn parse_ascii_float(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let mut i = 0;
    let negative = match b.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let rest = &s[i..];
    let lower = rest.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Some(if negative {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if lower == "nan" {
        return Some(if negative { -f64::NAN } else { f64::NAN });
    }
    let digits = |j: &mut usize| {
        let start = *j;
        while *j < b.len() && b[*j].is_ascii_digit() {
            *j += 1;
        }
        *j - start
    };
    let mut j = i;
    let int_digits = digits(&mut j);
    let mut frac_digits = 0;
    if j < b.len() && b[j] == b'.' {
        j += 1;
        frac_digits = digits(&mut j);
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    if j < b.len() && (b[j] == b'e' || b[j] == b'E') {
        j += 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if digits(&mut j) == 0 {
            return None;
        }
    }
    if j != b.len() {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Python's `round(x, 2)`: the exact binary value of `x` rounded to two decimals, ties to even,
/// then the nearest double to that decimal (what `double_round` does through `_Py_dg_dtoa` mode
/// 3 and `_Py_dg_strtod`). `round(2.675, 2) == 2.67`, `round(0.125, 2) == 0.12`.
pub fn py_round2(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let bits = x.to_bits();
    let negative = bits >> 63 == 1;
    let exp_bits = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    // x = m · 2^e exactly.
    let (m, e) = if exp_bits == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), exp_bits - 1075)
    };
    if m == 0 || e >= 0 {
        return x; // zero, or an integer: x·100 is already integral
    }
    let s = (-e) as u32;
    let scaled = u128::from(m) * 100; // < 2^60
    let q: u128 = if s >= 64 {
        0 // scaled / 2^s < 1/16: rounds to 0
    } else {
        let q = scaled >> s;
        let r = scaled & ((1u128 << s) - 1);
        let half = 1u128 << (s - 1);
        if r > half || (r == half && q & 1 == 1) {
            q + 1
        } else {
            q
        }
    };
    let text = format!("{}{}e-2", if negative { "-" } else { "" }, q);
    text.parse::<f64>().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round2_matches_cpython() {
        // CPython 3.11 values.
        let cases = [
            (2.675, 2.67),
            (1.005, 1.0),
            (0.125, 0.12),
            (0.375, 0.38),
            (-2.675, -2.67),
            (1e20, 1e20),
            (5e-324, 0.0),
            (12.9749999, 12.97),
            (0.005, 0.01),
            (0.015, 0.01),
            (0.025, 0.03),
            (1.7976931348623157e308, 1.7976931348623157e308),
            (2.5e-3, 0.0),
            (7.77777, 7.78),
            (1000.5, 1000.5),
        ];
        for (x, want) in cases {
            assert_eq!(py_round2(x).to_bits(), f64::to_bits(want), "round({x}, 2)");
        }
        assert_eq!(py_round2(-0.001).to_bits(), (-0.0f64).to_bits());
        assert!(py_round2(f64::NAN).is_nan());
        assert_eq!(py_round2(f64::INFINITY), f64::INFINITY);
    }

    #[test]
    fn float_acceptance_matches_cpython() {
        let ok = [
            ("1_000", 1000.0),
            ("1e1_0", 1e10),
            (" 12 ", 12.0),
            ("inf", f64::INFINITY),
            ("-Infinity", f64::NEG_INFINITY),
            ("1.", 1.0),
            (".5", 0.5),
            ("\u{663}", 3.0),                 // ARABIC-INDIC DIGIT THREE
            ("\u{661}\u{662}.\u{665}", 12.5), // ١٢.٥
            ("+.5e-3", 0.0005),
            ("\u{2003}1\u{2003}", 1.0),
            ("1e500", f64::INFINITY),
            ("\u{ff17}", 7.0), // FULLWIDTH DIGIT SEVEN
        ];
        for (s, want) in ok {
            assert_eq!(py_float(s), Some(want), "float({s:?})");
        }
        assert!(py_float("nan").unwrap().is_nan());
        assert!(py_float("-NaN").unwrap().is_nan());
        for s in [
            "1__0",
            "_1",
            "1_",
            "1_e5",
            ".",
            "1e",
            "1 2",
            "0x10",
            "infin",
            "\x1c5\x1f",
            "",
            "e5",
            "1,000",
            "1.5.2",
            "--1",
        ] {
            assert_eq!(py_float(s), None, "float({s:?}) must fail");
        }
    }

    #[test]
    fn character_classes() {
        assert!(is_space('\u{1c}') && is_space('\u{a0}') && is_space('\u{3000}') && !is_space('a'));
        assert!(is_digit('7') && is_digit('\u{663}') && !is_digit('\u{b2}')); // ² is No, not Nd
        assert!(is_word('\u{b2}') && is_word('é') && is_word('_') && !is_word('-'));
        assert_eq!(
            split_whitespace(" a\u{1c}b  c ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(digit_value('\u{1d7d9}'), Some(1)); // MATHEMATICAL DOUBLE-STRUCK DIGIT ONE
    }
}
