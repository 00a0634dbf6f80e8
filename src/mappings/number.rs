//! Numbers as people write them: `5.83`, not `5.829999923706055`; `3276.7`, not
//! `3276.7000000000003`.
//!
//! Pure functions used by every payload format, the command acks and the messages that quote a
//! limit. They never change a value by more than its own precision: an f32 becomes the f64 of
//! its shortest round-trip decimal, and a scaled value is tidied to 15 significant digits (an
//! f64 holds 15.95), which removes the binary artefacts of `raw * scale + offset` and nothing
//! else.

/// The f64 whose shortest text is the shortest text of `f`: f32 `5.83` (really
/// 5.829999923706055) becomes f64 `5.83`. NaN and the infinities map to themselves.
///
/// Rust's float formatting prints the shortest decimal that reads back as the same value, for
/// f32 as for f64 (`core::fmt::float`, Grisu/Ryū); reading that decimal as an f64 gives the
/// nearest f64, which the JSON writer and [`text`] print as the same short decimal.
#[must_use]
pub fn f32_to_f64(f: f32) -> f64 {
    if !f.is_finite() {
        return f64::from(f);
    }
    // `{:e}` never writes a long run of zeros, whatever the magnitude.
    format!("{f:e}").parse().unwrap_or(f64::from(f))
}

/// `v` rounded to 15 significant decimal digits: removes the last-bit artefacts of scaling
/// (`32767 * 0.1` is 3276.7000000000003) without changing a value that has 15 or fewer digits.
#[must_use]
pub fn tidy(v: f64) -> f64 {
    if !v.is_finite() || v == 0.0 {
        return v;
    }
    format!("{v:.14e}").parse().unwrap_or(v)
}

/// `v` rounded to `decimals` places, half away from zero (as written in decimal). Values too large to carry that many
/// places (and `decimals` beyond what an f64 can hold) are returned as they are.
#[must_use]
pub fn round_to(v: f64, decimals: u8) -> f64 {
    if decimals > 15 || !v.is_finite() {
        return v;
    }
    let m = 10f64.powi(i32::from(decimals));
    // Tidy first so that 2.675 (stored as 2.67499999...) rounds as written; `+ 0.0` turns a
    // rounded -0.0 into 0.
    let r = tidy(v * m).round() / m + 0.0;
    if r.is_finite() { tidy(r) } else { v }
}

/// The shortest text that reads back as `v`: `21`, `21.5`, `0.1`. Plain decimal notation from
/// 1e-6 up to 1e21, exponent notation outside (`1e-7`, `3.4e+38`), as JavaScript's
/// `Number.prototype.toString` does (ECMA-262, Number::toString) and as the JSON payloads write
/// it, so consumers of any language read it as a number.
#[must_use]
pub fn text(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || !v.is_finite() || (1e-6..1e21).contains(&a) {
        format!("{v}")
    } else {
        let s = format!("{v:e}");
        match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
            _ => s,
        }
    }
}

/// `v` with exactly `decimals` places (`21.0` for 21 with one decimal), or [`text`] when that
/// many places would add noise (more than 15).
#[must_use]
pub fn fixed(v: f64, decimals: u8) -> String {
    if decimals > 15 || !v.is_finite() || v.abs() >= 1e21 {
        return text(v);
    }
    format!("{:.*}", usize::from(decimals), round_to(v, decimals))
}

/// A limit or a requested value in a message: tidy, and whole numbers without a fraction
/// (`3276.7`, `80`, `-20`).
#[must_use]
pub fn display(v: f64) -> String {
    text(tidy(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_values_print_as_their_shortest_decimal() {
        let table: [(f32, &str, &str); 9] = [
            // (value, plain text, JSON)
            (5.83, "5.83", "5.83"),
            (0.1, "0.1", "0.1"),
            (1e-7, "1e-7", "1e-7"),
            (3.4e38, "3.4e+38", "3.4e+38"),
            (f32::MAX, "3.4028235e+38", "3.4028235e+38"),
            (230.1, "230.1", "230.1"),
            (-21.5, "-21.5", "-21.5"),
            (1.0, "1", "1.0"),
            (16_777_216.0, "16777216", "16777216.0"),
        ];
        for (f, plain, json) in table {
            let v = f32_to_f64(f);
            assert_eq!(text(v), plain, "{f:?}");
            assert_eq!(serde_json::json!(v).to_string(), json, "{f:?}");
            // Nothing is lost: the text reads back as the same f32.
            assert_eq!(plain.parse::<f32>().unwrap(), f);
        }
        assert!(f32_to_f64(f32::NAN).is_nan());
        assert_eq!(f32_to_f64(f32::NEG_INFINITY), f64::NEG_INFINITY);
    }

    #[test]
    fn scaled_values_lose_their_artefacts_and_nothing_else() {
        assert_eq!(32767.0 * 0.1, 3276.7000000000003);
        assert_eq!(tidy(32767.0 * 0.1), 3276.7);
        assert_eq!(display(32767.0 * 0.1), "3276.7");
        assert_eq!(display(-32768.0 * 0.1), "-3276.8");
        assert_eq!(tidy(0.1 + 0.2), 0.3);
        assert_eq!(tidy(1.0 / 3.0), 0.333_333_333_333_333);
        assert_eq!(tidy(123_456_789_012_345.0), 123_456_789_012_345.0);
        assert_eq!(display(4_294_967_295.0), "4294967295");
        assert_eq!(display(80.0), "80");
        assert_eq!(display(1e300), "1e+300");
    }

    #[test]
    fn rounding_and_fixed_places() {
        assert_eq!(round_to(220.596_13, 1), 220.6);
        assert_eq!(round_to(2.675, 2), 2.68);
        assert_eq!(round_to(1e300, 3), 1e300);
        assert_eq!(round_to(1.5, 200), 1.5);
        assert_eq!(fixed(21.0, 1), "21.0");
        assert_eq!(fixed(3276.7000000000003, 2), "3276.70");
        assert_eq!(fixed(-0.04, 1), "0.0");
        assert_eq!(fixed(1.0, 30), "1");
    }
}
