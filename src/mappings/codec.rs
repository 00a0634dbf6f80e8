//! Register decoding and encoding: every data type in every word and byte order.
//!
//! Pure functions from Modbus words to values and back. No I/O, no allocation on the
//! numeric paths. The four order codes follow the vendor convention:
//! `ABCD` big-endian words and bytes, `CDAB` low word first, `BADC` bytes swapped in each
//! word, `DCBA` fully little-endian. For 64-bit values they extend the same way
//! (`CDAB` = `GHEFCDAB`, the word order reversed).

use thiserror::Error;

pub use crate::vocabulary::{DataType, Order};

/// A decoded raw value, before scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Bool(bool),
    Int(i64),
    UInt(u64),
    F32(f32),
    F64(f64),
    Text(String),
}

impl Raw {
    /// The value as f64, for scaling and deadbands; `None` for text.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Raw::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            Raw::Int(i) => Some(i as f64),
            Raw::UInt(u) => Some(u as f64),
            Raw::F32(f) => Some(f64::from(f)),
            Raw::F64(f) => Some(f),
            Raw::Text(_) => None,
        }
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    #[error("need {need} registers, got {got}")]
    Short { need: usize, got: usize },
}

#[derive(Debug, Error, PartialEq)]
pub enum EncodeError {
    #[error(
        "value {} does not fit {dtype:?} (raw {})",
        super::number::display(*value),
        super::number::display(*raw)
    )]
    OutOfRange {
        value: f64,
        raw: f64,
        dtype: DataType,
    },
    #[error("value is not a finite number")]
    NotFinite,
    #[error("{0:?} cannot be written as a register value")]
    Unsupported(DataType),
}

/// Put `words` (as read from the device, lowest address first) into big-endian byte order.
fn to_be_bytes<const N: usize>(words: &[u16], order: Order) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N / 2;
    for i in 0..n {
        let w = if order.swaps_words() {
            words[n - 1 - i]
        } else {
            words[i]
        };
        let w = if order.swaps_bytes() {
            w.swap_bytes()
        } else {
            w
        };
        out[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// The inverse of [`to_be_bytes`]: big-endian bytes to the words to write, lowest address first.
fn from_be_bytes(bytes: &[u8], order: Order) -> Vec<u16> {
    let n = bytes.len() / 2;
    let mut out = vec![0u16; n];
    for i in 0..n {
        let w = u16::from_be_bytes([bytes[2 * i], bytes[2 * i + 1]]);
        let w = if order.swaps_bytes() {
            w.swap_bytes()
        } else {
            w
        };
        let slot = if order.swaps_words() { n - 1 - i } else { i };
        out[slot] = w;
    }
    out
}

/// Decode one value of `dtype` from `words` (exactly `dtype.width()` registers are used).
pub fn decode(words: &[u16], dtype: DataType, order: Order) -> Result<Raw, DecodeError> {
    let need = usize::from(dtype.width());
    if words.len() < need {
        return Err(DecodeError::Short {
            need,
            got: words.len(),
        });
    }
    let words = &words[..need];
    Ok(match dtype {
        DataType::Bool => Raw::Bool(words[0] != 0),
        DataType::Bit(b) => Raw::Bool(words[0] >> b & 1 == 1),
        DataType::U16 => Raw::UInt(u64::from(u16::from_be_bytes(to_be_bytes::<2>(
            words, order,
        )))),
        DataType::I16 => Raw::Int(i64::from(i16::from_be_bytes(to_be_bytes::<2>(
            words, order,
        )))),
        DataType::U32 => Raw::UInt(u64::from(u32::from_be_bytes(to_be_bytes::<4>(
            words, order,
        )))),
        DataType::I32 => Raw::Int(i64::from(i32::from_be_bytes(to_be_bytes::<4>(
            words, order,
        )))),
        DataType::F32 => Raw::F32(f32::from_be_bytes(to_be_bytes::<4>(words, order))),
        DataType::U64 => Raw::UInt(u64::from_be_bytes(to_be_bytes::<8>(words, order))),
        DataType::I64 => Raw::Int(i64::from_be_bytes(to_be_bytes::<8>(words, order))),
        DataType::F64 => Raw::F64(f64::from_be_bytes(to_be_bytes::<8>(words, order))),
        DataType::String(_) => {
            let mut bytes = Vec::with_capacity(need * 2);
            for &w in words {
                let w = if order.swaps_bytes() {
                    w.swap_bytes()
                } else {
                    w
                };
                bytes.extend_from_slice(&w.to_be_bytes());
            }
            let text = String::from_utf8_lossy(&bytes);
            Raw::Text(text.trim_end_matches(['\0', ' ']).to_owned())
        }
    })
}

/// The registers of a numeric value as one unsigned integer, after word and byte order: what a
/// device's "no value" code is compared with. An i16 of -32768 is `0x8000`, an f32 gives its
/// IEEE-754 bits, a 64-bit type all four registers. `None` for bools, bits and strings, and
/// when `words` is too short.
pub fn raw_bits(words: &[u16], dtype: DataType, order: Order) -> Option<u64> {
    let words = words.get(..usize::from(dtype.width()))?;
    Some(match dtype {
        DataType::U16 | DataType::I16 => {
            u64::from(u16::from_be_bytes(to_be_bytes::<2>(words, order)))
        }
        DataType::U32 | DataType::I32 | DataType::F32 => {
            u64::from(u32::from_be_bytes(to_be_bytes::<4>(words, order)))
        }
        DataType::U64 | DataType::I64 | DataType::F64 => {
            u64::from_be_bytes(to_be_bytes::<8>(words, order))
        }
        DataType::Bool | DataType::Bit(_) | DataType::String(_) => return None,
    })
}

/// The bit pattern of a "no value" code written as a number: a negative code of a signed type
/// is its two's complement (`-32768` for an i16 is `0x8000`). `None` when the code does not
/// fit the type, or the type has no codes (bools, bits, strings).
pub fn code_bits(code: i128, dtype: DataType) -> Option<u64> {
    let (bits, signed) = match dtype {
        DataType::U16 => (16, false),
        DataType::I16 => (16, true),
        DataType::U32 | DataType::F32 => (32, false),
        DataType::I32 => (32, true),
        DataType::U64 | DataType::F64 => (64, false),
        DataType::I64 => (64, true),
        DataType::Bool | DataType::Bit(_) | DataType::String(_) => return None,
    };
    let max_unsigned = (1i128 << bits) - 1;
    let min = if signed { -(1i128 << (bits - 1)) } else { 0 };
    if code < min || code > max_unsigned {
        return None;
    }
    // Two's complement of the code in `bits` bits.
    Some((code & max_unsigned) as u64)
}

/// Encode a raw (already inverse-scaled) number as the registers to write, lowest address first.
/// Integer types round to the nearest whole number; a value outside the type's range is refused.
pub fn encode(raw: f64, dtype: DataType, order: Order) -> Result<Vec<u16>, EncodeError> {
    if !raw.is_finite() {
        return Err(EncodeError::NotFinite);
    }
    let (lo, hi) = dtype.raw_range().ok_or(EncodeError::Unsupported(dtype))?;
    let r = if dtype.is_integer() { raw.round() } else { raw };
    if r < lo || r > hi {
        return Err(EncodeError::OutOfRange {
            value: raw,
            raw: r,
            dtype,
        });
    }
    Ok(match dtype {
        // In range, so these `as` casts are exact (integers) or the intended rounding (f32).
        DataType::U16 => from_be_bytes(&(r as u16).to_be_bytes(), order),
        DataType::I16 => from_be_bytes(&(r as i16).to_be_bytes(), order),
        DataType::U32 => from_be_bytes(&(r as u32).to_be_bytes(), order),
        DataType::I32 => from_be_bytes(&(r as i32).to_be_bytes(), order),
        DataType::U64 => from_be_bytes(&(r as u64).to_be_bytes(), order),
        DataType::I64 => from_be_bytes(&(r as i64).to_be_bytes(), order),
        DataType::F32 => from_be_bytes(&(r as f32).to_be_bytes(), order),
        DataType::F64 => from_be_bytes(&r.to_be_bytes(), order),
        DataType::Bool => vec![u16::from(r != 0.0)],
        DataType::Bit(_) | DataType::String(_) => return Err(EncodeError::Unsupported(dtype)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORDERS: [Order; 4] = [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA];

    /// IEEE-754 f32 1.5 is 0x3FC0_0000; these are its registers in each order.
    #[test]
    fn f32_one_point_five_in_all_orders() {
        let table = [
            (Order::ABCD, [0x3FC0, 0x0000]),
            (Order::CDAB, [0x0000, 0x3FC0]),
            (Order::BADC, [0xC03F, 0x0000]),
            (Order::DCBA, [0x0000, 0xC03F]),
        ];
        for (order, words) in table {
            assert_eq!(
                decode(&words, DataType::F32, order),
                Ok(Raw::F32(1.5)),
                "{order:?}"
            );
            assert_eq!(
                encode(1.5, DataType::F32, order).unwrap(),
                words,
                "{order:?}"
            );
        }
    }

    #[test]
    fn u32_and_i32_vectors() {
        // 0x1234_5678
        let table = [
            (Order::ABCD, [0x1234, 0x5678]),
            (Order::CDAB, [0x5678, 0x1234]),
            (Order::BADC, [0x3412, 0x7856]),
            (Order::DCBA, [0x7856, 0x3412]),
        ];
        for (order, words) in table {
            assert_eq!(
                decode(&words, DataType::U32, order),
                Ok(Raw::UInt(0x1234_5678))
            );
        }
        assert_eq!(
            decode(&[0xFFFF, 0xFFFE], DataType::I32, Order::ABCD),
            Ok(Raw::Int(-2))
        );
        assert_eq!(
            decode(&[0xFFFE, 0xFFFF], DataType::I32, Order::CDAB),
            Ok(Raw::Int(-2))
        );
    }

    #[test]
    fn sixty_four_bit_vectors() {
        // 0x0102_0304_0506_0708
        let v = 0x0102_0304_0506_0708u64;
        let table = [
            (Order::ABCD, [0x0102, 0x0304, 0x0506, 0x0708]),
            (Order::CDAB, [0x0708, 0x0506, 0x0304, 0x0102]),
            (Order::BADC, [0x0201, 0x0403, 0x0605, 0x0807]),
            (Order::DCBA, [0x0807, 0x0605, 0x0403, 0x0201]),
        ];
        for (order, words) in table {
            assert_eq!(decode(&words, DataType::U64, order), Ok(Raw::UInt(v)));
        }
        // f64 -2.5 = 0xC004_0000_0000_0000
        assert_eq!(
            decode(&[0, 0, 0, 0xC004], DataType::F64, Order::CDAB),
            Ok(Raw::F64(-2.5))
        );
        assert_eq!(
            decode(&[0xFFFF; 4], DataType::I64, Order::ABCD),
            Ok(Raw::Int(-1))
        );
    }

    #[test]
    fn sixteen_bit_and_bits() {
        assert_eq!(
            decode(&[0xFF38], DataType::I16, Order::ABCD),
            Ok(Raw::Int(-200))
        );
        assert_eq!(
            decode(&[0x38FF], DataType::I16, Order::BADC),
            Ok(Raw::Int(-200))
        );
        assert_eq!(
            decode(&[0x0102], DataType::U16, Order::DCBA),
            Ok(Raw::UInt(0x0201))
        );
        assert_eq!(
            decode(&[0b100], DataType::Bit(2), Order::ABCD),
            Ok(Raw::Bool(true))
        );
        assert_eq!(
            decode(&[0b100], DataType::Bit(1), Order::ABCD),
            Ok(Raw::Bool(false))
        );
        assert_eq!(
            decode(&[1], DataType::Bool, Order::ABCD),
            Ok(Raw::Bool(true))
        );
    }

    #[test]
    fn strings_trim_and_swap() {
        let words = [u16::from_be_bytes(*b"PU"), u16::from_be_bytes(*b"MP"), 0];
        assert_eq!(
            decode(&words, DataType::String(3), Order::ABCD),
            Ok(Raw::Text("PUMP".into()))
        );
        let swapped = [u16::from_be_bytes(*b"UP"), u16::from_be_bytes(*b"PM")];
        assert_eq!(
            decode(&swapped, DataType::String(2), Order::BADC),
            Ok(Raw::Text("PUMP".into()))
        );
    }

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        assert_eq!(
            decode(&[1], DataType::F64, Order::ABCD),
            Err(DecodeError::Short { need: 4, got: 1 })
        );
    }

    #[test]
    fn encode_refuses_out_of_range_and_nan() {
        assert!(matches!(
            encode(65536.0, DataType::U16, Order::ABCD),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode(-1.0, DataType::U32, Order::ABCD),
            Err(EncodeError::OutOfRange { .. })
        ));
        assert_eq!(
            encode(f64::NAN, DataType::F32, Order::ABCD),
            Err(EncodeError::NotFinite)
        );
        assert_eq!(
            encode(-200.4, DataType::I16, Order::ABCD).unwrap(),
            [0xFF38]
        );
        assert_eq!(
            encode(65535.6, DataType::U16, Order::ABCD)
                .unwrap_err()
                .to_string(),
            "value 65535.6 does not fit U16 (raw 65536)"
        );
    }

    /// Every float type in every word order: NaN and both infinities decode as such (the
    /// engine refuses them; the codec reports what the registers hold).
    #[test]
    fn nan_and_infinities_in_every_float_type_and_order() {
        for order in ORDERS {
            for (v32, v64) in [
                (f32::NAN, f64::NAN),
                (f32::INFINITY, f64::INFINITY),
                (f32::NEG_INFINITY, f64::NEG_INFINITY),
            ] {
                let w = from_be_bytes(&v32.to_bits().to_be_bytes(), order);
                let Ok(Raw::F32(got)) = decode(&w, DataType::F32, order) else {
                    panic!("f32 {order:?}")
                };
                assert_eq!(got.is_nan(), v32.is_nan(), "{order:?}");
                assert!(got.is_nan() || got == v32, "{order:?}");
                let w = from_be_bytes(&v64.to_bits().to_be_bytes(), order);
                let Ok(Raw::F64(got)) = decode(&w, DataType::F64, order) else {
                    panic!("f64 {order:?}")
                };
                assert_eq!(got.is_nan(), v64.is_nan(), "{order:?}");
                assert!(got.is_nan() || got == v64, "{order:?}");
            }
            // The quiet NaN a meter sends, 0x7FC0_0000, and its raw bits in this order.
            let w = from_be_bytes(&0x7FC0_0000u32.to_be_bytes(), order);
            assert_eq!(raw_bits(&w, DataType::F32, order), Some(0x7FC0_0000));
        }
    }

    #[test]
    fn raw_bits_of_each_width_follow_the_order() {
        let table: [(DataType, u64, &[u16]); 5] = [
            (DataType::I16, 0x8000, &[0x8000]),
            (DataType::U16, 0xFFFF, &[0xFFFF]),
            (DataType::I32, 0x8000_0000, &[0x8000, 0x0000]),
            (DataType::U32, 0xFFFF_FFFF, &[0xFFFF, 0xFFFF]),
            (DataType::I64, 0x8000_0000_0000_0000, &[0x8000, 0, 0, 0]),
        ];
        for (dtype, bits, abcd) in table {
            for order in ORDERS {
                let bytes = &bits.to_be_bytes()[8 - 2 * abcd.len()..];
                let words = from_be_bytes(bytes, order);
                assert_eq!(
                    raw_bits(&words, dtype, order),
                    Some(bits),
                    "{dtype:?} {order:?}"
                );
            }
            assert_eq!(raw_bits(abcd, dtype, Order::ABCD), Some(bits));
        }
        assert_eq!(raw_bits(&[1], DataType::U32, Order::ABCD), None);
        assert_eq!(raw_bits(&[1], DataType::Bool, Order::ABCD), None);
    }

    #[test]
    fn codes_fit_their_type_or_are_refused() {
        assert_eq!(code_bits(0x8000, DataType::I16), Some(0x8000));
        assert_eq!(code_bits(-32768, DataType::I16), Some(0x8000));
        assert_eq!(code_bits(-1, DataType::I16), Some(0xFFFF));
        assert_eq!(code_bits(0xFFFF, DataType::U16), Some(0xFFFF));
        assert_eq!(code_bits(0x1_0000, DataType::U16), None);
        assert_eq!(code_bits(-1, DataType::U16), None);
        assert_eq!(code_bits(-32769, DataType::I16), None);
        assert_eq!(code_bits(0x8000_0000, DataType::I32), Some(0x8000_0000));
        assert_eq!(code_bits(0xFFFF_FFFF, DataType::U32), Some(0xFFFF_FFFF));
        assert_eq!(code_bits(0x7FC0_0000, DataType::F32), Some(0x7FC0_0000));
        assert_eq!(code_bits(0x1_0000_0000, DataType::F32), None);
        assert_eq!(
            code_bits(i128::from(u64::MAX), DataType::U64),
            Some(u64::MAX)
        );
        assert_eq!(
            code_bits(i128::from(i64::MIN), DataType::I64),
            Some(1 << 63)
        );
        assert_eq!(code_bits(1, DataType::Bool), None);
    }

    proptest! {
        #[test]
        fn u32_round_trip(v: u32, o in 0usize..4) {
            let w = encode(f64::from(v), DataType::U32, ORDERS[o]).unwrap();
            prop_assert_eq!(decode(&w, DataType::U32, ORDERS[o]).unwrap(), Raw::UInt(u64::from(v)));
        }
        #[test]
        fn i16_i32_round_trip(a: i16, b: i32, o in 0usize..4) {
            let w = encode(f64::from(a), DataType::I16, ORDERS[o]).unwrap();
            prop_assert_eq!(decode(&w, DataType::I16, ORDERS[o]).unwrap(), Raw::Int(i64::from(a)));
            let w = encode(f64::from(b), DataType::I32, ORDERS[o]).unwrap();
            prop_assert_eq!(decode(&w, DataType::I32, ORDERS[o]).unwrap(), Raw::Int(i64::from(b)));
        }
        #[test]
        fn f32_round_trip(v in proptest::num::f32::NORMAL | proptest::num::f32::ZERO, o in 0usize..4) {
            let w = encode(f64::from(v), DataType::F32, ORDERS[o]).unwrap();
            prop_assert_eq!(decode(&w, DataType::F32, ORDERS[o]).unwrap(), Raw::F32(v));
        }
        #[test]
        fn f64_round_trip(v in proptest::num::f64::NORMAL, o in 0usize..4) {
            let w = encode(v, DataType::F64, ORDERS[o]).unwrap();
            prop_assert_eq!(decode(&w, DataType::F64, ORDERS[o]).unwrap(), Raw::F64(v));
        }
        #[test]
        fn sixty_four_bit_words_round_trip(words: [u16; 4], o in 0usize..4) {
            // Decoding any register pattern never panics, and integers re-encode losslessly
            // where f64 can hold them exactly.
            if let Raw::UInt(v) = decode(&words, DataType::U64, ORDERS[o]).unwrap()
                && v < (1 << 53) {
                    prop_assert_eq!(encode(v as f64, DataType::U64, ORDERS[o]).unwrap(), words.to_vec());
                }
            let _ = decode(&words, DataType::F64, ORDERS[o]).unwrap();
            let _ = decode(&words, DataType::String(4), ORDERS[o]).unwrap();
        }
    }
}
