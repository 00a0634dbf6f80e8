//! `fieldgate probe`: every plausible decoding of a run of registers, side by side.
//!
//! Pure. For each starting register it decodes the 16-, 32- and 64-bit types in all four
//! orders, and the string of the whole run, and marks the decodings that look like real
//! values (finite, in a sane range), which is what settles a vague word order.

use std::fmt::Write as _;

use super::codec::{Raw, decode};
use crate::vocabulary::{DataType, Order};

const ORDERS: [Order; 4] = [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA];

/// One decoded value.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoding {
    pub offset: usize,
    pub dtype: &'static str,
    pub order: Order,
    pub text: String,
    pub plausible: bool,
}

fn plausible(r: &Raw) -> bool {
    match *r {
        Raw::F32(f) => f == 0.0 || (f.is_finite() && (1e-4..=1e9).contains(&f.abs())),
        Raw::F64(f) => f == 0.0 || (f.is_finite() && (1e-4..=1e12).contains(&f.abs())),
        Raw::Int(i) => i.unsigned_abs() < 1_000_000_000,
        Raw::UInt(u) => u < 1_000_000_000,
        Raw::Bool(_) => true,
        Raw::Text(ref t) => !t.is_empty() && t.chars().all(|c| c.is_ascii_graphic() || c == ' '),
    }
}

fn text(r: &Raw) -> String {
    match r {
        Raw::F32(f) => f.to_string(),
        Raw::F64(f) => f.to_string(),
        Raw::Int(i) => i.to_string(),
        Raw::UInt(u) => u.to_string(),
        Raw::Bool(b) => b.to_string(),
        Raw::Text(t) => format!("{t:?}"),
    }
}

/// Every decoding of `words` (lowest address first).
pub fn decodings(words: &[u16]) -> Vec<Decoding> {
    let types: [(&'static str, DataType); 8] = [
        ("u16", DataType::U16),
        ("i16", DataType::I16),
        ("u32", DataType::U32),
        ("i32", DataType::I32),
        ("f32", DataType::F32),
        ("u64", DataType::U64),
        ("i64", DataType::I64),
        ("f64", DataType::F64),
    ];
    let mut out = Vec::new();
    for offset in 0..words.len() {
        for (name, dtype) in types {
            for order in ORDERS {
                // 16-bit values only know the byte swap.
                if dtype.width() == 1 && matches!(order, Order::CDAB | Order::DCBA) {
                    continue;
                }
                if let Ok(r) = decode(&words[offset..], dtype, order) {
                    out.push(Decoding {
                        offset,
                        dtype: name,
                        order,
                        plausible: plausible(&r),
                        text: text(&r),
                    });
                }
            }
        }
    }
    for order in [Order::ABCD, Order::BADC] {
        if let Ok(r) = decode(words, DataType::String(words.len() as u16), order) {
            out.push(Decoding {
                offset: 0,
                dtype: "string",
                order,
                plausible: plausible(&r),
                text: text(&r),
            });
        }
    }
    out
}

/// The table `probe` prints; plausible decodings are marked with `*`.
pub fn render(start: u16, words: &[u16]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "raw registers:");
    for (i, w) in words.iter().enumerate() {
        let _ = writeln!(
            s,
            "  {:>5}  0x{w:04X}  {w:>5}  {:016b}",
            usize::from(start) + i,
            w
        );
    }
    let _ = writeln!(s, "decodings (* plausible):");
    let all = decodings(words);
    for d in &all {
        let addr = usize::from(start) + d.offset;
        let mark = if d.plausible { "*" } else { " " };
        let _ = writeln!(
            s,
            "  {mark} {addr:>5}  {:<6} {:?}  {}",
            d.dtype, d.order, d.text
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_right_word_order_is_the_plausible_one() {
        // 230.1 as f32 in CDAB (low word first), as the energy meter stores it.
        let b = 230.1f32.to_bits();
        let words = [b as u16, (b >> 16) as u16];
        let all = decodings(&words);
        let f32s: Vec<&Decoding> = all
            .iter()
            .filter(|d| d.dtype == "f32" && d.offset == 0)
            .collect();
        assert_eq!(f32s.len(), 4);
        let cdab = f32s.iter().find(|d| d.order == Order::CDAB).unwrap();
        assert_eq!(cdab.text, "230.1");
        assert!(cdab.plausible);
        let abcd = f32s.iter().find(|d| d.order == Order::ABCD).unwrap();
        assert!(!abcd.plausible, "{abcd:?}");
        // 16-bit types appear in two orders only; 64-bit ones need four registers.
        assert_eq!(
            all.iter()
                .filter(|d| d.dtype == "u16" && d.offset == 0)
                .count(),
            2
        );
        assert!(all.iter().all(|d| d.dtype != "u64"));
    }

    #[test]
    fn strings_and_sixty_four_bits() {
        let words = [0x0000, 0x0000, 0x075B, 0xCD15];
        let all = decodings(&words);
        let u = all
            .iter()
            .find(|d| d.dtype == "u64" && d.order == Order::ABCD)
            .unwrap();
        assert_eq!(u.text, "123456789");
        assert!(u.plausible);
        let text = decodings(&[u16::from_be_bytes(*b"EM"), u16::from_be_bytes(*b"-1")]);
        let s = text
            .iter()
            .find(|d| d.dtype == "string" && d.order == Order::ABCD)
            .unwrap();
        assert_eq!(s.text, "\"EM-1\"");
        assert!(s.plausible);
        assert!(render(26, &words).contains("*    26  u64    ABCD  123456789"));
    }
}
