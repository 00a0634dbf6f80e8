//! Water-tower physics and its register map (the PLC's contract).
//!
//! Pure: `step(dt)` advances simulated time; reads and writes go through the map below. No
//! I/O and no clock. Consumption is a seeded random walk, so a seed reproduces a run.
//!
//! | table | address | meaning |
//! |---|---|---|
//! | input registers | 0 | level, cm (u16, 0-400) |
//! | input registers | 1, 2 | pump 1 / 2 motor temperature, 0.1 °C (i16) |
//! | input registers | 3-4 | consumption, l/min (f32, ABCD) |
//! | input registers | 5-6, 7-8 | pump 1 / 2 operating seconds (u32, CDAB) |
//! | input registers | 9-10 | diagnostic: reads served that covered it, counting from 1 (u32, ABCD) |
//! | discrete inputs | 0, 1 | pump 1 / 2 running |
//! | coils | 0, 1 | pump 1 / 2 run command |
//! | holding registers | 0-3 | auto thresholds: start P1 ≤, start P2 ≤, stop P1 >, stop P2 > (cm) |
//! | holding register | 4 | automatic control, 0 off / 1 on |

use tokio_modbus::ExceptionCode;

pub const INPUT_REGISTERS: u16 = 11;
/// The diagnostic read counter's first register.
const READ_COUNTER: u16 = 9;
pub const DISCRETE_INPUTS: u16 = 2;
pub const COILS: u16 = 2;
pub const HOLDING_REGISTERS: u16 = 5;

/// Litres per centimetre of tank height.
const LITRES_PER_CM: f64 = 10.0;
/// Delivery rates, l/min.
const PUMP_RATE: [f64; 2] = [600.0, 900.0];
const AMBIENT_C: f64 = 20.0;
const HOT_C: f64 = 65.0;
/// Thermal time constant, s.
const TAU_S: f64 = 60.0;
const MAX_LEVEL: f64 = 400.0;

#[derive(Debug, Clone)]
pub struct WaterTower {
    level_cm: f64,
    consumption_lpm: f64,
    temp_c: [f64; 2],
    op_seconds: [f64; 2],
    coils: [bool; 2],
    holding: [u16; 5],
    rng: fastrand::Rng,
    /// Reads that covered the read counter: each reader sees 1, 2, 3, ... with no gap, so a
    /// lost publication downstream shows as a missing number.
    reads: std::cell::Cell<u32>,
}

impl WaterTower {
    pub fn new(seed: u64, level_cm: f64) -> Self {
        WaterTower {
            level_cm: level_cm.clamp(0.0, MAX_LEVEL),
            consumption_lpm: 300.0,
            temp_c: [AMBIENT_C; 2],
            op_seconds: [0.0; 2],
            coils: [false; 2],
            holding: [20, 10, 370, 380, 0],
            rng: fastrand::Rng::with_seed(seed),
            reads: std::cell::Cell::new(0),
        }
    }

    /// Advance `dt` simulated seconds. Call at least every 100 ms of simulated time for a
    /// smooth level (the server ticks every 50 ms of real time).
    pub fn step(&mut self, dt: f64) {
        if dt <= 0.0 || !dt.is_finite() {
            return;
        }
        // Random walk of the outflow between 100 and 500 l/min.
        let drift = (self.rng.f64() - 0.5) * 40.0 * dt.sqrt();
        self.consumption_lpm = (self.consumption_lpm + drift).clamp(100.0, 500.0);
        if self.holding[4] == 1 {
            let l = self.level_cm;
            if l <= f64::from(self.holding[0]) {
                self.coils[0] = true;
            }
            if l <= f64::from(self.holding[1]) {
                self.coils[1] = true;
            }
            if l > f64::from(self.holding[2]) {
                self.coils[0] = false;
            }
            if l > f64::from(self.holding[3]) {
                self.coils[1] = false;
            }
        }
        let inflow: f64 = (0..2)
            .filter(|&i| self.coils[i])
            .map(|i| PUMP_RATE[i])
            .sum();
        let outflow = if self.level_cm > 0.0 {
            self.consumption_lpm
        } else {
            0.0
        };
        self.level_cm =
            (self.level_cm + (inflow - outflow) / 60.0 / LITRES_PER_CM * dt).clamp(0.0, MAX_LEVEL);
        let k = 1.0 - (-dt / TAU_S).exp();
        for i in 0..2 {
            let target = if self.coils[i] { HOT_C } else { AMBIENT_C };
            self.temp_c[i] += (target - self.temp_c[i]) * k;
            if self.coils[i] {
                self.op_seconds[i] += dt;
            }
        }
    }

    pub fn level_cm(&self) -> f64 {
        self.level_cm
    }

    fn input_registers(&self) -> [u16; INPUT_REGISTERS as usize] {
        let f = (self.consumption_lpm as f32).to_bits();
        let s1 = self.op_seconds[0] as u32;
        let s2 = self.op_seconds[1] as u32;
        [
            self.level_cm.round() as u16,
            (self.temp_c[0] * 10.0).round() as i16 as u16,
            (self.temp_c[1] * 10.0).round() as i16 as u16,
            (f >> 16) as u16,
            f as u16,
            // CDAB: low word first.
            s1 as u16,
            (s1 >> 16) as u16,
            s2 as u16,
            (s2 >> 16) as u16,
            (self.reads.get() >> 16) as u16,
            self.reads.get() as u16,
        ]
    }

    fn range(
        addr: u16,
        cnt: u16,
        size: u16,
        max: u16,
    ) -> Result<std::ops::Range<usize>, ExceptionCode> {
        super::check_range(addr, cnt, size, max)
    }

    pub fn read_input_registers(&self, addr: u16, cnt: u16) -> Result<Vec<u16>, ExceptionCode> {
        let r = Self::range(addr, cnt, INPUT_REGISTERS, 125)?;
        if r.contains(&usize::from(READ_COUNTER)) || r.contains(&usize::from(READ_COUNTER + 1)) {
            self.reads.set(self.reads.get().wrapping_add(1));
        }
        Ok(self.input_registers()[r].to_vec())
    }

    pub fn read_holding_registers(&self, addr: u16, cnt: u16) -> Result<Vec<u16>, ExceptionCode> {
        let r = Self::range(addr, cnt, HOLDING_REGISTERS, 125)?;
        Ok(self.holding[r].to_vec())
    }

    pub fn read_discrete_inputs(&self, addr: u16, cnt: u16) -> Result<Vec<bool>, ExceptionCode> {
        let r = Self::range(addr, cnt, DISCRETE_INPUTS, 2000)?;
        // The motors follow their run command at once.
        Ok(self.coils[r].to_vec())
    }

    pub fn read_coils(&self, addr: u16, cnt: u16) -> Result<Vec<bool>, ExceptionCode> {
        let r = Self::range(addr, cnt, COILS, 2000)?;
        Ok(self.coils[r].to_vec())
    }

    pub fn write_coils(&mut self, addr: u16, values: &[bool]) -> Result<(), ExceptionCode> {
        let r = Self::range(addr, values.len() as u16, COILS, 1968)?;
        self.coils[r].copy_from_slice(values);
        Ok(())
    }

    pub fn write_holding_registers(
        &mut self,
        addr: u16,
        values: &[u16],
    ) -> Result<(), ExceptionCode> {
        let r = Self::range(addr, values.len() as u16, HOLDING_REGISTERS, 123)?;
        for (i, &v) in r.clone().zip(values) {
            let ok = if i == 4 { v <= 1 } else { v <= 400 };
            if !ok {
                return Err(ExceptionCode::IllegalDataValue);
            }
        }
        self.holding[r].copy_from_slice(values);
        Ok(())
    }
}

impl super::Profile for WaterTower {
    fn step(&mut self, dt: f64) {
        WaterTower::step(self, dt);
    }
    fn read_input_registers(&self, addr: u16, cnt: u16) -> Result<Vec<u16>, ExceptionCode> {
        WaterTower::read_input_registers(self, addr, cnt)
    }
    fn read_holding_registers(&self, addr: u16, cnt: u16) -> Result<Vec<u16>, ExceptionCode> {
        WaterTower::read_holding_registers(self, addr, cnt)
    }
    fn read_discrete_inputs(&self, addr: u16, cnt: u16) -> Result<Vec<bool>, ExceptionCode> {
        WaterTower::read_discrete_inputs(self, addr, cnt)
    }
    fn read_coils(&self, addr: u16, cnt: u16) -> Result<Vec<bool>, ExceptionCode> {
        WaterTower::read_coils(self, addr, cnt)
    }
    fn write_coils(&mut self, addr: u16, values: &[bool]) -> Result<(), ExceptionCode> {
        WaterTower::write_coils(self, addr, values)
    }
    fn write_holding_registers(&mut self, addr: u16, values: &[u16]) -> Result<(), ExceptionCode> {
        WaterTower::write_holding_registers(self, addr, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_falls_without_pumps_and_rises_with_them() {
        let mut t = WaterTower::new(1, 200.0);
        for _ in 0..100 {
            t.step(0.1);
        }
        assert!(t.level_cm() < 200.0);
        t.write_coils(0, &[true, true]).unwrap();
        let before = t.level_cm();
        for _ in 0..100 {
            t.step(0.1);
        }
        assert!(t.level_cm() > before);
        assert_eq!(t.read_discrete_inputs(0, 2).unwrap(), [true, true]);
        // Operating seconds count in CDAB order and temperatures rise.
        let ir = t.read_input_registers(1, 8).unwrap();
        assert!(ir[0] as i16 > 200);
        let secs = u32::from(ir[4]) | u32::from(ir[5]) << 16;
        assert!((9..=10).contains(&secs), "{secs}");
    }

    #[test]
    fn automatic_control_uses_the_thresholds() {
        let mut t = WaterTower::new(7, 15.0);
        t.write_holding_registers(4, &[1]).unwrap();
        t.step(0.1);
        assert_eq!(t.read_coils(0, 2).unwrap(), [true, false]);
        let mut t = WaterTower::new(7, 395.0);
        t.write_coils(0, &[true, true]).unwrap();
        t.write_holding_registers(4, &[1]).unwrap();
        t.step(0.1);
        assert_eq!(t.read_coils(0, 2).unwrap(), [false, false]);
    }

    #[test]
    fn same_seed_same_run() {
        let mut a = WaterTower::new(42, 200.0);
        let mut b = WaterTower::new(42, 200.0);
        for _ in 0..50 {
            a.step(0.1);
            b.step(0.1);
        }
        assert_eq!(a.read_input_registers(0, 9), b.read_input_registers(0, 9));
    }

    #[test]
    fn the_read_counter_counts_reads_that_cover_it() {
        let t = WaterTower::new(1, 100.0);
        let counter = |t: &WaterTower| {
            let v = t.read_input_registers(9, 2).unwrap();
            (u32::from(v[0]) << 16) | u32::from(v[1])
        };
        assert_eq!(counter(&t), 1);
        assert_eq!(counter(&t), 2);
        t.read_input_registers(0, 1).unwrap(); // does not cover it
        assert_eq!(t.read_input_registers(0, 11).unwrap()[10], 3);
        assert_eq!(counter(&t), 4);
    }

    #[test]
    fn out_of_map_is_illegal_data_address() {
        let t = WaterTower::new(1, 0.0);
        assert_eq!(
            t.read_input_registers(10, 2),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(t.read_coils(2, 1), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(
            t.read_holding_registers(0, 0),
            Err(ExceptionCode::IllegalDataValue)
        );
        let mut t = t;
        assert_eq!(
            t.write_holding_registers(4, &[2]),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            t.write_holding_registers(65535, &[1]),
            Err(ExceptionCode::IllegalDataAddress)
        );
    }
}
