//! Bus-time model of Modbus RTU: how long one poll cycle occupies a serial bus.
//!
//! Pure arithmetic over the read plan. One exchange is the request frame, the silence before
//! the next frame, the reply frame, and the silence after it; plus the configured turnaround.
//! A read request is 8 bytes (unit, function, address 2, count 2, CRC 2); its reply is
//! 5 bytes (unit, function, byte count, CRC 2) plus the data: 2 per register, 1 per 8 bits.

use std::time::Duration;

use crate::model::SerialSpec;
use crate::vocabulary::ReadRequest;

/// Time of one character on the wire.
pub fn char_time(s: &SerialSpec) -> Duration {
    Duration::from_secs_f64(f64::from(s.bits_per_char()) / f64::from(s.baud.max(1)))
}

/// The inter-frame silence: 3.5 characters, but a fixed 1.75 ms above 19200 baud (Modbus over
/// serial line specification, 2.5.1.1).
pub fn default_frame_gap(s: &SerialSpec) -> Duration {
    if s.baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        char_time(s).mul_f64(3.5)
    }
}

pub const fn request_bytes(_req: &ReadRequest) -> u32 {
    8
}

pub fn response_bytes(req: &ReadRequest) -> u32 {
    let data = if req.kind.is_bit() {
        u32::from(req.count).div_ceil(8)
    } else {
        2 * u32::from(req.count)
    };
    5 + data
}

/// What one poll cycle of one device costs on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CycleEstimate {
    pub requests: u32,
    pub bytes_out: u32,
    pub bytes_in: u32,
    pub time: Duration,
}

pub fn estimate(
    requests: &[ReadRequest],
    s: &SerialSpec,
    gap: Duration,
    turnaround: Duration,
) -> CycleEstimate {
    let mut e = CycleEstimate::default();
    for r in requests {
        e.requests += 1;
        e.bytes_out += request_bytes(r);
        e.bytes_in += response_bytes(r);
    }
    let chars = char_time(s) * (e.bytes_out + e.bytes_in);
    e.time = chars + (gap * 2 + turnaround) * e.requests;
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Parity;
    use crate::vocabulary::RegisterKind;

    fn spec(baud: u32, parity: Parity) -> SerialSpec {
        SerialSpec {
            path: "/dev/null".into(),
            baud,
            data_bits: 8,
            parity,
            stop_bits: 1,
        }
    }

    fn close(a: Duration, micros: f64) -> bool {
        (a.as_secs_f64() * 1e6 - micros).abs() < 1.0
    }

    #[test]
    fn character_times_and_gaps() {
        // 8E1 = 11 bits: 11/9600 s = 1145.83 µs; 3.5 characters = 4010.42 µs.
        let s = spec(9600, Parity::Even);
        assert!(close(char_time(&s), 1145.833));
        assert!(close(default_frame_gap(&s), 4010.417));
        // 8N1 = 10 bits at 19200: 520.83 µs; the gap is still 3.5 characters at 19200.
        let s = spec(19_200, Parity::None);
        assert!(close(char_time(&s), 520.833));
        assert!(close(default_frame_gap(&s), 1822.917));
        // Above 19200 the gap is fixed at 1.75 ms.
        assert_eq!(
            default_frame_gap(&spec(38_400, Parity::Even)),
            Duration::from_micros(1750)
        );
    }

    #[test]
    fn water_tower_cycle_at_9600_and_19200() {
        let plan = [
            ReadRequest {
                kind: RegisterKind::Coil,
                start: 0,
                count: 2,
            },
            ReadRequest {
                kind: RegisterKind::DiscreteInput,
                start: 0,
                count: 2,
            },
            ReadRequest {
                kind: RegisterKind::InputRegister,
                start: 0,
                count: 9,
            },
        ];
        // Frames: 3 requests of 8 B; replies 6 + 6 + 23 B. 24 out, 35 in, 59 characters.
        let s = spec(9600, Parity::Even);
        let e = estimate(&plan, &s, default_frame_gap(&s), Duration::ZERO);
        assert_eq!((e.requests, e.bytes_out, e.bytes_in), (3, 24, 35));
        // 59 × 1145.833 µs + 6 × 4010.417 µs = 67604.2 + 24062.5 = 91666.7 µs
        assert!(close(e.time, 91_666.667), "{:?}", e.time);
        let s = spec(19_200, Parity::None);
        let e = estimate(&plan, &s, default_frame_gap(&s), Duration::from_millis(1));
        // 59 × 520.833 + 6 × 1822.917 + 3 × 1000 = 30729.2 + 10937.5 + 3000 = 44666.7 µs
        assert!(close(e.time, 44_666.667), "{:?}", e.time);
    }

    #[test]
    fn bit_replies_round_up_to_bytes() {
        let r = ReadRequest {
            kind: RegisterKind::Coil,
            start: 0,
            count: 9,
        };
        assert_eq!(response_bytes(&r), 7);
        let r = ReadRequest {
            kind: RegisterKind::HoldingRegister,
            start: 0,
            count: 125,
        };
        assert_eq!(response_bytes(&r), 255);
    }
}
