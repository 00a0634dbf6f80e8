//! Commissioning tools: one-off reads and writes (`probe`) and finding the units on a bus
//! (`scan`). They speak Modbus only; the caller prints.

use std::time::Duration;

use tokio::time::{Instant, timeout};

use super::client::{LinkError, ModbusClient, OpenOptions, open};
use crate::model::LinkSpec;
use crate::vocabulary::ReadRequest;
use crate::vocabulary::{BlockData, RegisterKind, WriteValue, exception_name};

/// Read `count` values once.
pub async fn read(
    spec: &LinkSpec,
    unit: u8,
    req: ReadRequest,
    wait: Duration,
) -> Result<BlockData, String> {
    let mut c = open(spec, unit, OpenOptions::plain(Duration::from_secs(3))).await?;
    match timeout(wait, c.read(req)).await {
        Err(_) => Err(format!("no answer within {wait:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(Err(code))) => Err(format!("exception {code:#04x} ({})", exception_name(code))),
        Ok(Ok(Ok(data))) => Ok(data),
    }
}

/// Write once and read the address back.
pub async fn write(
    spec: &LinkSpec,
    unit: u8,
    kind: RegisterKind,
    address: u16,
    value: &WriteValue,
    wait: Duration,
) -> Result<BlockData, String> {
    let mut c = open(spec, unit, OpenOptions::plain(Duration::from_secs(3))).await?;
    match timeout(wait, c.write(kind, address, value, false)).await {
        Err(_) => return Err(format!("no answer within {wait:?}")),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(Err(code))) => {
            return Err(format!("exception {code:#04x} ({})", exception_name(code)));
        }
        Ok(Ok(Ok(()))) => {}
    }
    let count = match value {
        WriteValue::Coil(_) => 1,
        WriteValue::Registers(w) => w.len() as u16,
    };
    match timeout(
        wait,
        c.read(ReadRequest {
            kind,
            start: address,
            count,
        }),
    )
    .await
    {
        Ok(Ok(Ok(data))) => Ok(data),
        Ok(Ok(Err(code))) => Err(format!(
            "read-back: exception {code:#04x} ({})",
            exception_name(code)
        )),
        Ok(Err(e)) => Err(format!("read-back: {e}")),
        Err(_) => Err("read-back: no answer".into()),
    }
}

/// Which unit ids in `units` answer (with data or a Modbus exception other than the gateway
/// ones), asking each for holding register 0. Takes at most about
/// `units.len() × (wait + gap)` plus re-opening the port after each silent unit.
pub async fn scan(
    spec: &LinkSpec,
    units: std::ops::RangeInclusive<u8>,
    wait: Duration,
    gap: Duration,
) -> Result<Vec<u8>, String> {
    let first = *units.start();
    let mut c = open(spec, first, OpenOptions::plain(Duration::from_secs(3))).await?;
    let mut found = Vec::new();
    let mut last = Instant::now();
    for unit in units {
        tokio::time::sleep_until(last + gap).await;
        c.set_unit(unit);
        let r = timeout(
            wait,
            c.read(ReadRequest {
                kind: RegisterKind::HoldingRegister,
                start: 0,
                count: 1,
            }),
        )
        .await;
        last = Instant::now();
        match r {
            Ok(Ok(Ok(_))) => found.push(unit),
            // 0x0A/0x0B: a gateway saying that nothing answered behind it.
            Ok(Ok(Err(code))) if code != 0x0A && code != 0x0B => found.push(unit),
            Ok(Ok(Err(_))) => {}
            Ok(Err(LinkError::Transport(e))) => return Err(format!("transport: {e}")),
            // A timeout or a garbled reply: flush by re-opening, as the link task does.
            Ok(Err(LinkError::Protocol(_) | LinkError::Closed)) | Err(_) => {
                c.close().await;
                tokio::time::sleep_until(last + gap).await;
                c = open(spec, unit, OpenOptions::plain(Duration::from_secs(3))).await?;
                last = Instant::now();
            }
        }
    }
    Ok(found)
}
