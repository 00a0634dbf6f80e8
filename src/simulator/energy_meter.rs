//! A three-phase energy meter and its register map. Pure: `step(dt)` advances simulated time.
//!
//! Input registers (zero-based), realistic meter encodings:
//!
//! | address | value | encoding |
//! |---|---|---|
//! | 0-1, 2-3, 4-5 | voltage L1, L2, L3, V | f32, CDAB |
//! | 6-7, 8-9, 10-11 | current L1, L2, L3, A | f32, CDAB |
//! | 12-13, 14-15, 16-17 | active power L1, L2, L3, 0.1 W | i32, CDAB |
//! | 18-19 | active power total, 0.1 W | i32, CDAB |
//! | 20-21 | reactive power total, 0.1 var | i32, CDAB |
//! | 22-23 | apparent power total, 0.1 VA | i32, CDAB |
//! | 24-25 | power factor | f32, CDAB |
//! | 26-29 | imported active energy, Wh | u64, ABCD |
//! | 30-33 | exported active energy, Wh | u64, ABCD |
//! | 34-35 | frequency, Hz | f32, CDAB |
//! | 36-37, 38-39, 40-41 | apparent power L1, L2, L3, 0.1 VA | i32, CDAB |
//! | 42-43, 44-45, 46-47 | power factor L1, L2, L3 | f32, CDAB |
//! | 48-51, 52-55, 56-59 | imported active energy L1, L2, L3, Wh | u64, ABCD |
//! | 60-63, 64-67, 68-71 | apparent energy L1, L2, L3, VAh | u64, ABCD |
//!
//! The total power factor (24-25) is the total active over the total apparent power.
//! Phase L3 carries a PV inverter, so its current (and the total power) can turn negative:
//! then the export counter runs.

use tokio_modbus::ExceptionCode;

use super::Profile;

pub const INPUT_REGISTERS: u16 = 72;

#[derive(Debug, Clone)]
pub struct EnergyMeter {
    volts: [f64; 3],
    amps: [f64; 3],
    /// Power factor per phase.
    pf: [f64; 3],
    hz: f64,
    import_wh: f64,
    export_wh: f64,
    /// Imported active energy per phase, Wh.
    import_wh_phase: [f64; 3],
    /// Apparent energy per phase, VAh.
    apparent_vah_phase: [f64; 3],
    rng: fastrand::Rng,
}

fn f32_cdab(v: f64) -> [u16; 2] {
    let b = (v as f32).to_bits();
    [b as u16, (b >> 16) as u16]
}

fn i32_cdab(v: f64) -> [u16; 2] {
    let b = v.round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32 as u32;
    [b as u16, (b >> 16) as u16]
}

fn u64_abcd(v: f64) -> [u16; 4] {
    let b = v.max(0.0) as u64;
    [
        (b >> 48) as u16,
        (b >> 32) as u16,
        (b >> 16) as u16,
        b as u16,
    ]
}

impl EnergyMeter {
    pub fn new(seed: u64) -> Self {
        EnergyMeter {
            volts: [230.1, 229.8, 231.2],
            amps: [10.0, 5.0, 2.0],
            pf: [0.95, 0.97, 0.92],
            hz: 50.0,
            import_wh: 123_456_789.0,
            export_wh: 4_567.0,
            import_wh_phase: [61_728_394.0, 41_152_263.0, 20_576_132.0],
            apparent_vah_phase: [64_977_257.0, 42_424_807.0, 22_365_361.0],
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Active power per phase, W.
    pub fn phase_power(&self, i: usize) -> f64 {
        self.volts[i] * self.amps[i] * self.pf[i]
    }

    /// Apparent power per phase, VA (never negative).
    pub fn phase_apparent(&self, i: usize) -> f64 {
        (self.volts[i] * self.amps[i]).abs()
    }

    pub fn total_power(&self) -> f64 {
        (0..3).map(|i| self.phase_power(i)).sum()
    }

    fn apparent(&self) -> f64 {
        (0..3).map(|i| self.phase_apparent(i)).sum()
    }

    pub fn registers(&self) -> [u16; INPUT_REGISTERS as usize] {
        let mut r = [0u16; INPUT_REGISTERS as usize];
        for i in 0..3 {
            r[2 * i..2 * i + 2].copy_from_slice(&f32_cdab(self.volts[i]));
            r[6 + 2 * i..8 + 2 * i].copy_from_slice(&f32_cdab(self.amps[i]));
            r[12 + 2 * i..14 + 2 * i].copy_from_slice(&i32_cdab(self.phase_power(i) * 10.0));
        }
        let p: f64 = (0..3).map(|i| self.phase_power(i).abs()).sum();
        let s = self.apparent();
        let q = (s * s - p * p).max(0.0).sqrt();
        r[18..20].copy_from_slice(&i32_cdab(self.total_power() * 10.0));
        r[20..22].copy_from_slice(&i32_cdab(q * 10.0));
        r[22..24].copy_from_slice(&i32_cdab(s * 10.0));
        r[24..26].copy_from_slice(&f32_cdab(if s > 0.0 { p / s } else { 1.0 }));
        r[26..30].copy_from_slice(&u64_abcd(self.import_wh));
        r[30..34].copy_from_slice(&u64_abcd(self.export_wh));
        r[34..36].copy_from_slice(&f32_cdab(self.hz));
        for i in 0..3 {
            r[36 + 2 * i..38 + 2 * i].copy_from_slice(&i32_cdab(self.phase_apparent(i) * 10.0));
            r[42 + 2 * i..44 + 2 * i].copy_from_slice(&f32_cdab(self.pf[i]));
            r[48 + 4 * i..52 + 4 * i].copy_from_slice(&u64_abcd(self.import_wh_phase[i]));
            r[60 + 4 * i..64 + 4 * i].copy_from_slice(&u64_abcd(self.apparent_vah_phase[i]));
        }
        r
    }
}

fn walk(rng: &mut fastrand::Rng, v: f64, step: f64, lo: f64, hi: f64) -> f64 {
    (v + (rng.f64() - 0.5) * step).clamp(lo, hi)
}

impl Profile for EnergyMeter {
    fn step(&mut self, dt: f64) {
        if dt <= 0.0 || !dt.is_finite() {
            return;
        }
        // Energy over the step at the power it started with, then the load moves.
        let p = self.total_power();
        if p >= 0.0 {
            self.import_wh += p * dt / 3600.0;
        } else {
            self.export_wh += -p * dt / 3600.0;
        }
        for i in 0..3 {
            self.import_wh_phase[i] += self.phase_power(i).max(0.0) * dt / 3600.0;
            self.apparent_vah_phase[i] += self.phase_apparent(i) * dt / 3600.0;
        }
        let s = dt.sqrt();
        for i in 0..3 {
            self.volts[i] = walk(&mut self.rng, self.volts[i], 1.0 * s, 220.0, 240.0);
        }
        self.amps[0] = walk(&mut self.rng, self.amps[0], 2.0 * s, 0.0, 32.0);
        self.amps[1] = walk(&mut self.rng, self.amps[1], 2.0 * s, 0.0, 32.0);
        self.amps[2] = walk(&mut self.rng, self.amps[2], 2.0 * s, -15.0, 20.0);
        for pf in &mut self.pf {
            *pf = walk(&mut self.rng, *pf, 0.01 * s, 0.85, 0.99);
        }
        self.hz = walk(&mut self.rng, self.hz, 0.01 * s, 49.9, 50.1);
    }

    fn read_input_registers(&self, addr: u16, cnt: u16) -> Result<Vec<u16>, ExceptionCode> {
        let r = super::check_range(addr, cnt, INPUT_REGISTERS, 125)?;
        Ok(self.registers()[r].to_vec())
    }
}

// --- the SDM630 profile (issue 18) ---

/// Input registers of the SDM630 profile: up to the last mapped value (total kWh L3 at 362).
pub const SDM630_INPUT_REGISTERS: u16 = 400;

/// The same meter presenting the Eastron SDM630's input register map (SDM630 Modbus protocol,
/// input register table, as in `mappings/devices/sdm630.yaml`): every value an IEEE 754 float32,
/// high word first, energies in kWh. Addresses the manual lists but this meter does not
/// simulate read 0.0, as do the reserved ones between them. Exports per phase are not
/// simulated: all export is booked on L3, the phase that carries the PV inverter.
#[derive(Debug, Clone)]
pub struct Sdm630(pub EnergyMeter);

fn f32_abcd(v: f64) -> [u16; 2] {
    let b = (v as f32).to_bits();
    [(b >> 16) as u16, b as u16]
}

impl Sdm630 {
    /// The total harmonic distortion of each phase's voltage, %: constant.
    const THD: [f64; 3] = [1.2, 1.5, 1.1];

    pub fn registers(&self) -> Vec<u16> {
        let m = &self.0;
        let mut r = vec![0u16; usize::from(SDM630_INPUT_REGISTERS)];
        let mut put = |addr: usize, v: f64| r[addr..addr + 2].copy_from_slice(&f32_abcd(v));
        let p: f64 = (0..3).map(|i| m.phase_power(i).abs()).sum();
        let s = m.apparent();
        let q = (s * s - p * p).max(0.0).sqrt();
        let export_phase = [0.0, 0.0, m.export_wh];
        for (i, export) in export_phase.into_iter().enumerate() {
            put(2 * i, m.volts[i]);
            put(6 + 2 * i, m.amps[i]);
            put(12 + 2 * i, m.phase_power(i));
            put(30 + 2 * i, m.pf[i]);
            put(234 + 2 * i, Self::THD[i]);
            put(346 + 2 * i, m.import_wh_phase[i] / 1000.0);
            put(352 + 2 * i, export / 1000.0);
            put(358 + 2 * i, (m.import_wh_phase[i] + export) / 1000.0);
        }
        put(52, m.total_power());
        put(56, s);
        put(60, q);
        put(62, if s > 0.0 { p / s } else { 1.0 });
        put(70, m.hz);
        put(72, m.import_wh / 1000.0);
        put(74, m.export_wh / 1000.0);
        put(84, m.total_power().max(0.0));
        put(248, Self::THD.iter().sum::<f64>() / 3.0);
        put(342, (m.import_wh + m.export_wh) / 1000.0);
        r
    }
}

impl Profile for Sdm630 {
    fn step(&mut self, dt: f64) {
        self.0.step(dt);
    }

    fn read_input_registers(&self, addr: u16, cnt: u16) -> Result<Vec<u16>, ExceptionCode> {
        let r = super::check_range(addr, cnt, SDM630_INPUT_REGISTERS, 125)?;
        Ok(self.registers()[r].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_decode_to_the_physics() {
        use crate::mappings::codec::{DataType, Order, Raw, decode};
        let m = EnergyMeter::new(1);
        let r = m.registers();
        assert_eq!(
            decode(&r[0..2], DataType::F32, Order::CDAB),
            Ok(Raw::F32(230.1))
        );
        assert_eq!(
            decode(&r[26..30], DataType::U64, Order::ABCD),
            Ok(Raw::UInt(123_456_789))
        );
        let p1 = decode(&r[12..14], DataType::I32, Order::CDAB).unwrap();
        assert_eq!(p1, Raw::Int((230.1f64 * 10.0 * 0.95 * 10.0).round() as i64));
        assert_eq!(
            m.read_input_registers(70, 3),
            Err(ExceptionCode::IllegalDataAddress)
        );
        // Per phase: apparent power, power factor, active and apparent energy.
        let s2 = decode(&r[38..40], DataType::I32, Order::CDAB).unwrap();
        assert_eq!(s2, Raw::Int((229.8f64 * 5.0 * 10.0).round() as i64));
        assert_eq!(
            decode(&r[46..48], DataType::F32, Order::CDAB),
            Ok(Raw::F32(0.92))
        );
        assert_eq!(
            decode(&r[52..56], DataType::U64, Order::ABCD),
            Ok(Raw::UInt(41_152_263))
        );
        assert_eq!(
            decode(&r[68..72], DataType::U64, Order::ABCD),
            Ok(Raw::UInt(22_365_361))
        );
        assert_eq!(m.read_coils(0, 1), Err(ExceptionCode::IllegalDataAddress));
    }

    #[test]
    fn the_sdm630_profile_lays_values_out_as_the_manual_says() {
        use crate::mappings::codec::{DataType, Order, Raw, decode};
        let m = Sdm630(EnergyMeter::new(1));
        let r = m.registers();
        let f = |a: usize| match decode(&r[a..a + 2], DataType::F32, Order::ABCD) {
            Ok(Raw::F32(v)) => f64::from(v),
            other => panic!("{other:?}"),
        };
        assert_eq!(f(0), f64::from(230.1f32));
        assert_eq!(f(8), 5.0);
        assert_eq!(f(70), 50.0);
        assert_eq!(f(72), f64::from((123_456.789f64) as f32));
        assert_eq!(f(34), f64::from(0.92f32));
        assert_eq!(f(350), f64::from((20_576.132f64) as f32));
        // A reserved register reads 0; past the map is an exception.
        assert_eq!(f(64), 0.0);
        assert_eq!(
            m.read_input_registers(399, 2),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }

    #[test]
    fn counters_only_grow_and_export_runs_when_power_is_negative() {
        let mut m = EnergyMeter::new(3);
        m.amps = [0.0, 0.0, -15.0];
        let (i0, e0) = (m.import_wh, m.export_wh);
        let (p0, a0) = (m.import_wh_phase, m.apparent_vah_phase);
        m.step(3600.0);
        assert!(m.export_wh > e0);
        assert!(m.import_wh >= i0);
        // L3 exports: its import counter stands, its apparent energy still runs.
        assert_eq!(m.import_wh_phase[2], p0[2]);
        assert!(m.apparent_vah_phase[2] > a0[2]);
    }
}
