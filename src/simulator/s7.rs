//! The water tower as an S7 PLC (`fieldgate simulate water-tower --s7`): a small S7comm server
//! on the same frame code as the client (`inputs::s7::frame`), serving the tower's values from
//! data block DB1 (layout below and in the README, "The water tower as an S7 PLC").
//!
//! It accepts any rack/slot (TSAP), grants at most 480 bytes of PDU, answers ReadVar and
//! WriteVar item by item: 0x0A for any area but DB1, 0x05 past its end, 0x03 for writes to a
//! read-only part. `put-get off` on stdin makes it refuse every ReadVar and WriteVar as an
//! S7-1200/1500 does when PUT/GET access is not enabled (error class 0x81, code 0x04) while the
//! connection stays up; `put-get on` ends that. For tests and demos only: no PLC behaviour
//! beyond that.
//!
//! | bytes | address | meaning | type |
//! |---|---|---|---|
//! | 0-1 | `DB1,INT0` | water level, cm | INT |
//! | 2-3 | `DB1,INT2` | pump 1 motor temperature, 0.1 °C | INT |
//! | 4-5 | `DB1,INT4` | pump 2 motor temperature, 0.1 °C | INT |
//! | 6-9 | `DB1,REAL6` | consumption, l/min | REAL |
//! | 10-13 | `DB1.DBD10` | pump 1 operating seconds | DWORD |
//! | 14-17 | `DB1.DBD14` | pump 2 operating seconds | DWORD |
//! | 18-21 | `DB1.DBD18` | read counter (+1 for each read that covers it) | DWORD |
//! | 22.0, 22.1 | `DB1.DBX22.0`, `.1` | pump 1 / 2 running | BOOL |
//! | 23.0, 23.1 | `DB1.DBX23.0`, `.1` | pump 1 / 2 run command (writable) | BOOL |
//! | 24-31 | `DB1,INT24` ... `DB1,INT30` | thresholds: start P1, start P2, stop P1, stop P2 (writable, 0-400) | INT |
//! | 32-33 | `DB1,INT32` | automatic control, 0/1 (writable) | INT |
//! | 34-51 | `DB1,STRING34.16` | the tower's name, `WATER TOWER 1` | STRING[16] |
//! | 52-59 | `DB1,LREAL52` | water level, m | LREAL |
//! | 60-63 | | spare, 0 | |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::water_tower::WaterTower;
use crate::inputs::s7::frame::{self, Cotp, ItemSpec, Job, Pdu, ReadItem};

/// The data block that holds the tower.
pub const DB: u16 = 1;
/// Its size in bytes.
pub const DB_BYTES: usize = 64;
/// The largest PDU granted.
pub const MAX_PDU: u16 = 480;
/// The tower's name, in the STRING at byte 34.
pub const NAME: &str = "WATER TOWER 1";

/// The DB1 image of `t`; `counter` reads (and counts) the read counter.
fn image(t: &WaterTower, counter: bool) -> [u8; DB_BYTES] {
    let mut b = [0u8; DB_BYTES];
    let ir = t.read_input_registers(0, 9).unwrap_or_default();
    let word = |i: usize| ir.get(i).copied().unwrap_or(0);
    b[0..2].copy_from_slice(&word(0).to_be_bytes());
    b[2..4].copy_from_slice(&word(1).to_be_bytes());
    b[4..6].copy_from_slice(&word(2).to_be_bytes());
    b[6..8].copy_from_slice(&word(3).to_be_bytes());
    b[8..10].copy_from_slice(&word(4).to_be_bytes());
    // The Modbus map holds the operating seconds low word first (CDAB); S7 is big-endian.
    b[10..12].copy_from_slice(&word(6).to_be_bytes());
    b[12..14].copy_from_slice(&word(5).to_be_bytes());
    b[14..16].copy_from_slice(&word(8).to_be_bytes());
    b[16..18].copy_from_slice(&word(7).to_be_bytes());
    if counter {
        let c = t.read_input_registers(9, 2).unwrap_or_default();
        for (i, w) in c.iter().enumerate() {
            b[18 + 2 * i..20 + 2 * i].copy_from_slice(&w.to_be_bytes());
        }
    }
    let di = t.read_discrete_inputs(0, 2).unwrap_or_default();
    let coils = t.read_coils(0, 2).unwrap_or_default();
    let bits = |v: &[bool]| {
        v.iter()
            .enumerate()
            .fold(0u8, |acc, (i, &on)| acc | (u8::from(on) << i))
    };
    b[22] = bits(&di);
    b[23] = bits(&coils);
    let hr = t.read_holding_registers(0, 5).unwrap_or_default();
    for (i, w) in hr.iter().enumerate() {
        b[24 + 2 * i..26 + 2 * i].copy_from_slice(&w.to_be_bytes());
    }
    b[34] = 16;
    b[35] = NAME.len() as u8;
    b[36..36 + NAME.len()].copy_from_slice(NAME.as_bytes());
    b[52..60].copy_from_slice(&(t.level_cm() / 100.0).to_be_bytes());
    b
}

/// Read `spec` from the tower.
fn read(t: &WaterTower, spec: &ItemSpec) -> ReadItem {
    let fail = |code| ReadItem {
        code,
        data: Vec::new(),
    };
    if spec.area != 0x84 || spec.db != DB {
        return fail(frame::ITEM_NO_OBJECT);
    }
    let Some(len) = spec.byte_len() else {
        return fail(frame::ITEM_TYPE_INCONSISTENT);
    };
    let start = spec.byte() as usize;
    let end = start.saturating_add(len);
    if len == 0 || end > DB_BYTES {
        return fail(frame::ITEM_OUT_OF_RANGE);
    }
    let img = image(t, start < 22 && end > 18);
    let mut data = img[start..end].to_vec();
    if spec.transport == frame::TS_BIT {
        data = vec![(img[start] >> (spec.address & 7)) & 1];
    }
    ReadItem {
        code: frame::ITEM_OK,
        data,
    }
}

/// Write `data` at `spec` into the tower: the run commands (bits 23.0, 23.1 or byte 23) and
/// the thresholds and automatic control (whole INTs in 24-33); anything else is read-only.
fn write(t: &mut WaterTower, spec: &ItemSpec, data: &[u8]) -> u8 {
    if spec.area != 0x84 || spec.db != DB {
        return frame::ITEM_NO_OBJECT;
    }
    let start = spec.byte() as usize;
    if start.saturating_add(data.len()) > DB_BYTES || data.is_empty() {
        return frame::ITEM_OUT_OF_RANGE;
    }
    if spec.transport == frame::TS_BIT {
        let bit = (spec.address & 7) as u16;
        return match (start, bit) {
            (23, 0 | 1) => match t.write_coils(bit, &[data[0] & 1 == 1]) {
                Ok(()) => frame::ITEM_OK,
                Err(_) => frame::ITEM_TYPE_INCONSISTENT,
            },
            _ => frame::ITEM_ACCESS_DENIED,
        };
    }
    if start == 23 && data.len() == 1 {
        let coils = [data[0] & 1 == 1, data[0] & 2 == 2];
        return match t.write_coils(0, &coils) {
            Ok(()) => frame::ITEM_OK,
            Err(_) => frame::ITEM_TYPE_INCONSISTENT,
        };
    }
    if (24..34).contains(&start)
        && start.is_multiple_of(2)
        && data.len().is_multiple_of(2)
        && start + data.len() <= 34
    {
        let words: Vec<u16> = data
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        return match t.write_holding_registers(((start - 24) / 2) as u16, &words) {
            Ok(()) => frame::ITEM_OK,
            // A threshold above 400, automatic control other than 0/1: refused.
            Err(_) => frame::ITEM_TYPE_INCONSISTENT,
        };
    }
    frame::ITEM_ACCESS_DENIED
}

/// The reply to one S7 PDU from a client; `None` for what deserves no answer. With
/// `refuse`, reads and writes are refused as by a CPU without PUT/GET access.
fn answer(t: &Mutex<WaterTower>, pdu: &[u8], refuse: bool) -> Option<Vec<u8>> {
    let Ok(Pdu::Job { pdu_ref, job }) = frame::decode_pdu(pdu) else {
        return None;
    };
    if refuse && matches!(job, Job::Read(_) | Job::Write(_)) {
        return Some(frame::error_reply(pdu_ref, 0x81, 0x04));
    }
    let mut t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Some(match job {
        Job::Setup { pdu } => frame::setup_reply(pdu_ref, pdu.clamp(240, MAX_PDU)),
        Job::Read(specs) => {
            let items: Vec<(ItemSpec, ReadItem)> =
                specs.iter().map(|s| (*s, read(&t, s))).collect();
            frame::read_reply(pdu_ref, &items)
        }
        Job::Write(items) => {
            let codes: Vec<u8> = items
                .iter()
                .map(|(spec, _, data)| write(&mut t, spec, data))
                .collect();
            frame::write_reply(pdu_ref, &codes)
        }
        // Function not available.
        Job::Other(_) => frame::error_reply(pdu_ref, 0x81, 0x04),
    })
}

/// The server's answer to `data` taken as an S7 PDU (and as a COTP TPDU), for the fuzz
/// target: must never panic.
pub fn answer_for_fuzzing(data: &[u8]) -> Option<Vec<u8>> {
    let tower = Mutex::new(WaterTower::new(1, 200.0));
    if let Ok(Cotp::Data { payload, .. }) = frame::decode_cotp(data) {
        let _ = answer(&tower, payload, false);
    }
    let _ = answer(&tower, data, true);
    answer(&tower, data, false)
}

/// Serve one client: COTP connect, then jobs until it goes.
async fn client(
    mut s: TcpStream,
    tower: Arc<Mutex<WaterTower>>,
    refuse: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut pdu = Vec::new();
    loop {
        let mut header = [0u8; frame::TPKT_HEADER];
        if s.read_exact(&mut header).await.is_err() {
            return Ok(());
        }
        let len = frame::tpkt_length(&header).map_err(std::io::Error::other)?;
        let mut body = vec![0u8; len - frame::TPKT_HEADER];
        s.read_exact(&mut body).await?;
        match frame::decode_cotp(&body).map_err(std::io::Error::other)? {
            Cotp::Connect {
                code: frame::COTP_CR,
                src_ref,
                src_tsap,
                dst_tsap,
                ..
            } => {
                let cc = frame::connection_confirm(
                    src_ref,
                    dst_tsap.unwrap_or(0x0102),
                    src_tsap.unwrap_or(0x0100),
                );
                s.write_all(&cc).await?;
            }
            Cotp::Data { eot, payload } => {
                pdu.extend_from_slice(payload);
                if pdu.len() > 8192 {
                    return Err(std::io::Error::other("S7 PDU too long"));
                }
                if eot {
                    if let Some(reply) = answer(&tower, &pdu, refuse.load(Ordering::Relaxed)) {
                        s.write_all(&frame::data(&reply)).await?;
                    }
                    pdu.clear();
                }
            }
            _ => return Ok(()),
        }
    }
}

/// Reads `put-get off` / `put-get on` lines from stdin; prints the line and `ok`, or what is
/// wrong.
fn control_from_stdin(refuse: Arc<AtomicBool>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            let line = tokio::select! {
                () = shutdown.cancelled() => return,
                l = lines.next_line() => match l { Ok(Some(l)) => l, _ => return },
            };
            match line.trim() {
                "put-get off" => refuse.store(true, Ordering::Relaxed),
                "put-get on" => refuse.store(false, Ordering::Relaxed),
                _ => {
                    println!("{line}: the S7 simulator takes `put-get off` or `put-get on`");
                    continue;
                }
            }
            println!("{line} ok");
        }
    });
}

/// Serve the water tower as an S7 PLC on `listener` until shutdown; `speed` simulated seconds
/// per real second.
pub async fn serve(
    listener: TcpListener,
    tower: WaterTower,
    speed: f64,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tower = Arc::new(Mutex::new(tower));
    let refuse = Arc::new(AtomicBool::new(false));
    control_from_stdin(Arc::clone(&refuse), shutdown.clone());
    let stepper = Arc::clone(&tower);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let tick = Duration::from_millis(50);
        let mut every = tokio::time::interval(tick);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {
                    stepper
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .step(tick.as_secs_f64() * speed);
                }
            }
        }
    });
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => {
                let (s, peer) = r?;
                let tower = Arc::clone(&tower);
                let refuse = Arc::clone(&refuse);
                tokio::spawn(async move {
                    if let Err(e) = client(s, tower, refuse).await {
                        tracing::debug!(%peer, error = %e, "s7 client dropped");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocabulary::s7::{Area, S7Item};

    fn spec(start: u32, len: u16) -> ItemSpec {
        ItemSpec::bytes(&S7Item {
            area: Area::Db(DB),
            start,
            len,
        })
    }

    #[test]
    fn db1_holds_the_tower() {
        let t = WaterTower::new(1, 123.0);
        let r = read(&t, &spec(0, 64));
        assert_eq!(r.code, frame::ITEM_OK);
        assert_eq!(i16::from_be_bytes([r.data[0], r.data[1]]), 123);
        assert_eq!(r.data[35] as usize, NAME.len());
        assert_eq!(&r.data[36..36 + NAME.len()], NAME.as_bytes());
        let m = f64::from_be_bytes(r.data[52..60].try_into().unwrap());
        assert!((m - 1.23).abs() < 1e-9);
        assert_eq!(read(&t, &spec(60, 5)).code, frame::ITEM_OUT_OF_RANGE);
        let other = ItemSpec::bytes(&S7Item {
            area: Area::Db(9),
            start: 0,
            len: 2,
        });
        assert_eq!(read(&t, &other).code, frame::ITEM_NO_OBJECT);
    }

    #[test]
    fn writes_reach_the_commands_and_thresholds_only() {
        let mut t = WaterTower::new(1, 123.0);
        assert_eq!(
            write(&mut t, &ItemSpec::bit(Area::Db(DB), 23, 1), &[1]),
            frame::ITEM_OK
        );
        assert_eq!(t.read_coils(0, 2).unwrap(), [false, true]);
        assert_eq!(write(&mut t, &spec(24, 2), &[0, 42]), frame::ITEM_OK);
        assert_eq!(t.read_holding_registers(0, 1).unwrap(), [42]);
        assert_eq!(
            write(&mut t, &spec(24, 2), &[0x10, 0]),
            frame::ITEM_TYPE_INCONSISTENT
        );
        assert_eq!(
            write(&mut t, &spec(0, 2), &[0, 1]),
            frame::ITEM_ACCESS_DENIED
        );
    }
}
