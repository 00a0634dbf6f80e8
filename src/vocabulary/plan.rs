//! The read planner: the fewest Modbus requests that cover a device's points.
//!
//! A pure function of (kind, address, width) spans. Spans of the same kind merge when the
//! hole between them is at most `max_gap`, and no request exceeds the protocol limit
//! (125 registers, 2000 bits). Every point then lives in exactly one request.

use super::RegisterKind;

/// One Modbus read of one poll cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadRequest {
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
}

impl ReadRequest {
    /// The last address (inclusive) this request covers.
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count) - 1
    }
}

/// Where a span landed: the request index and the offset within that request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub request: usize,
    pub offset: u16,
}

/// The requests of one poll cycle, and where each input span is found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadPlan {
    pub requests: Vec<ReadRequest>,
    pub slots: Vec<Slot>,
}

/// A span to read: `width` consecutive addresses from `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub kind: RegisterKind,
    pub address: u16,
    pub width: u16,
}

/// The most one read request of a device may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// FC 3 / FC 4: 1-125 (Modbus application protocol V1.1b3, 6.3 and 6.4).
    pub registers: u16,
    /// FC 1 / FC 2: 1-2000 (6.1 and 6.2).
    pub bits: u16,
}

impl Limits {
    /// The protocol's own limits.
    pub const PROTOCOL: Limits = Limits {
        registers: 125,
        bits: 2000,
    };

    fn of(self, kind: RegisterKind) -> u16 {
        if kind.is_bit() {
            self.bits.min(kind.max_per_request())
        } else {
            self.registers.min(kind.max_per_request())
        }
    }
}

/// Plan the requests for `spans` within the protocol's limits.
pub fn plan(spans: &[Span], max_gap: u16) -> ReadPlan {
    plan_limited(spans, max_gap, Limits::PROTOCOL)
}

/// Plan the requests for `spans`, no request asking for more than `limits`. Spans must have
/// `width >= 1`, fit the 16-bit address space, and be no wider than one request (`check`
/// rejects anything else before planning).
pub fn plan_limited(spans: &[Span], max_gap: u16, limits: Limits) -> ReadPlan {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].kind, spans[i].address, spans[i].width));

    let mut requests: Vec<ReadRequest> = Vec::new();
    let mut slots = vec![
        Slot {
            request: 0,
            offset: 0
        };
        spans.len()
    ];
    for i in order {
        let s = spans[i];
        let last_index = requests.len().saturating_sub(1);
        let s_end = u32::from(s.address) + u32::from(s.width) - 1;
        if let Some(last) = requests.last_mut() {
            let gap_ok = u32::from(s.address) <= last.end() + 1 + u32::from(max_gap);
            let new_end = s_end.max(last.end());
            let fits = new_end - u32::from(last.start) < u32::from(limits.of(s.kind));
            if last.kind == s.kind && gap_ok && fits {
                last.count = (new_end - u32::from(last.start) + 1) as u16;
                slots[i] = Slot {
                    request: last_index,
                    offset: s.address - last.start,
                };
                continue;
            }
        }
        requests.push(ReadRequest {
            kind: s.kind,
            start: s.address,
            count: s.width,
        });
        slots[i] = Slot {
            request: requests.len() - 1,
            offset: 0,
        };
    }
    ReadPlan { requests, slots }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegisterKind::*;

    fn span(kind: RegisterKind, address: u16, width: u16) -> Span {
        Span {
            kind,
            address,
            width,
        }
    }
    fn req(kind: RegisterKind, start: u16, count: u16) -> ReadRequest {
        ReadRequest { kind, start, count }
    }

    #[test]
    fn adjacent_spans_merge() {
        let p = plan(
            &[
                span(InputRegister, 0, 1),
                span(InputRegister, 1, 2),
                span(InputRegister, 3, 2),
            ],
            0,
        );
        assert_eq!(p.requests, [req(InputRegister, 0, 5)]);
        assert_eq!(
            p.slots[2],
            Slot {
                request: 0,
                offset: 3
            }
        );
    }

    #[test]
    fn gap_within_max_gap_merges_and_beyond_splits() {
        let spans = [span(HoldingRegister, 0, 1), span(HoldingRegister, 5, 1)];
        // hole of 4 registers (1..=4)
        assert_eq!(plan(&spans, 4).requests, [req(HoldingRegister, 0, 6)]);
        assert_eq!(
            plan(&spans, 3).requests,
            [req(HoldingRegister, 0, 1), req(HoldingRegister, 5, 1)]
        );
    }

    #[test]
    fn the_125_register_boundary_splits() {
        let spans = [span(HoldingRegister, 0, 2), span(HoldingRegister, 123, 2)];
        // 0..=124 is exactly 125 registers: one request.
        assert_eq!(plan(&spans, 200).requests, [req(HoldingRegister, 0, 125)]);
        let spans = [span(HoldingRegister, 0, 2), span(HoldingRegister, 124, 2)];
        let p = plan(&spans, 200);
        assert_eq!(
            p.requests,
            [req(HoldingRegister, 0, 2), req(HoldingRegister, 124, 2)]
        );
        assert_eq!(
            p.slots[1],
            Slot {
                request: 1,
                offset: 0
            }
        );
    }

    #[test]
    fn bits_allow_2000_per_request() {
        let spans = [span(Coil, 0, 1), span(Coil, 1999, 1), span(Coil, 2000, 1)];
        assert_eq!(
            plan(&spans, 5000).requests,
            [req(Coil, 0, 2000), req(Coil, 2000, 1)]
        );
    }

    #[test]
    fn kinds_never_mix_and_input_order_does_not_matter() {
        let spans = [
            span(HoldingRegister, 1, 1),
            span(InputRegister, 0, 1),
            span(Coil, 0, 1),
            span(DiscreteInput, 1, 1),
            span(InputRegister, 1, 1),
            span(HoldingRegister, 0, 1),
        ];
        let p = plan(&spans, 10);
        assert_eq!(
            p.requests,
            [
                req(Coil, 0, 1),
                req(DiscreteInput, 1, 1),
                req(InputRegister, 0, 2),
                req(HoldingRegister, 0, 2)
            ]
        );
        assert_eq!(
            p.slots[0],
            Slot {
                request: 3,
                offset: 1
            }
        );
        assert_eq!(
            p.slots[4],
            Slot {
                request: 2,
                offset: 1
            }
        );
    }

    #[test]
    fn overlapping_and_duplicate_spans_share_a_request() {
        let spans = [
            span(InputRegister, 3, 2),
            span(InputRegister, 3, 2),
            span(InputRegister, 4, 1),
        ];
        let p = plan(&spans, 0);
        assert_eq!(p.requests, [req(InputRegister, 3, 2)]);
        assert_eq!(
            p.slots[2],
            Slot {
                request: 0,
                offset: 1
            }
        );
    }

    #[test]
    fn device_limits_split_reads() {
        // 60 adjacent registers on a meter that takes at most 50 per read.
        let spans: Vec<_> = (0..60).map(|a| span(InputRegister, a, 1)).collect();
        let limits = Limits {
            registers: 50,
            bits: 16,
        };
        let p = plan_limited(&spans, 0, limits);
        assert_eq!(
            p.requests,
            [req(InputRegister, 0, 50), req(InputRegister, 50, 10)]
        );
        assert_eq!(
            p.slots[55],
            Slot {
                request: 1,
                offset: 5
            }
        );
        // A 2-register value never straddles two requests.
        let spans = [span(HoldingRegister, 0, 49), span(HoldingRegister, 49, 2)];
        assert_eq!(
            plan_limited(&spans, 0, limits).requests,
            [req(HoldingRegister, 0, 49), req(HoldingRegister, 49, 2)]
        );
        let bits: Vec<_> = (0..20).map(|a| span(Coil, a, 1)).collect();
        assert_eq!(
            plan_limited(&bits, 0, limits).requests,
            [req(Coil, 0, 16), req(Coil, 16, 4)]
        );
    }

    #[test]
    fn top_of_address_space() {
        let p = plan(&[span(HoldingRegister, 65534, 2)], 0);
        assert_eq!(p.requests, [req(HoldingRegister, 65534, 2)]);
        assert_eq!(p.requests[0].end(), 65535);
    }
}
