//! `fieldgate probe`: read registers once (or `--watch`) and print every plausible decoding, or
//! make one test write and read it back. It talks to one device directly and must not be used as
//! a gateway (no mapping, no MQTT).

use tokio_util::sync::CancellationToken;

use super::Target;

#[derive(Debug, clap::Args)]
pub(crate) struct ProbeArgs {
    #[command(flatten)]
    target: Target,
    /// holding, input, coil or discrete.
    #[arg(long, default_value = "holding")]
    kind: String,
    /// Zero-based protocol address.
    #[arg(long)]
    address: u16,
    /// Registers (or bits) to read.
    #[arg(long, default_value_t = 4)]
    count: u16,
    /// Read again every `--interval` until Ctrl-C.
    #[arg(long)]
    watch: bool,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: std::time::Duration,
    /// Write this value once (then read it back) instead of reading.
    #[arg(long)]
    write: Option<f64>,
    /// Data type of `--write`: u16, i16, u32, i32, u64, i64, f32, f64 (coils: 0 or 1).
    #[arg(long = "type", default_value = "u16")]
    dtype: String,
    /// Word order of `--write`: ABCD, CDAB, BADC or DCBA.
    #[arg(long, default_value = "ABCD")]
    order: String,
    /// Do not ask before writing.
    #[arg(long)]
    yes: bool,
}

fn register_kind(s: &str) -> anyhow::Result<fieldgate::mappings::RegisterKind> {
    use fieldgate::mappings::RegisterKind;
    Ok(match s {
        "holding" | "holding_register" => RegisterKind::HoldingRegister,
        "input" | "input_register" => RegisterKind::InputRegister,
        "coil" => RegisterKind::Coil,
        "discrete" | "discrete_input" => RegisterKind::DiscreteInput,
        other => anyhow::bail!("--kind {other}: holding, input, coil or discrete"),
    })
}

pub(crate) async fn probe(a: ProbeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    use fieldgate::inputs::commission;
    use fieldgate::mappings::{BlockData, RegisterKind, WriteValue, codec, plan::ReadRequest};
    let spec = a.target.spec()?;
    let kind = register_kind(&a.kind)?;
    let unit = a.target.unit;
    if let Some(value) = a.write {
        let v = match kind {
            RegisterKind::Coil if value == 0.0 || value == 1.0 => WriteValue::Coil(value == 1.0),
            RegisterKind::Coil => anyhow::bail!("a coil takes 0 or 1"),
            RegisterKind::HoldingRegister => {
                let dtype = match a.dtype.as_str() {
                    "u16" => codec::DataType::U16,
                    "i16" => codec::DataType::I16,
                    "u32" => codec::DataType::U32,
                    "i32" => codec::DataType::I32,
                    "u64" => codec::DataType::U64,
                    "i64" => codec::DataType::I64,
                    "f32" => codec::DataType::F32,
                    "f64" => codec::DataType::F64,
                    other => {
                        anyhow::bail!("--type {other}: u16, i16, u32, i32, u64, i64, f32 or f64")
                    }
                };
                let order: codec::Order = serde_json::from_value(serde_json::Value::String(
                    a.order.clone(),
                ))
                .map_err(|_| anyhow::anyhow!("--order {}: ABCD, CDAB, BADC or DCBA", a.order))?;
                WriteValue::Registers(codec::encode(value, dtype, order)?)
            }
            _ => anyhow::bail!("only coils and holding registers can be written"),
        };
        let what = format!(
            "{value} as {} to {} {} of unit {unit} on {spec}: {v:?}",
            a.dtype,
            kind.name(),
            a.address
        );
        if !a.yes {
            eprint!("write {what}? [y/N] ");
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "yes") {
                println!("not written");
                return Ok(());
            }
        }
        let back = commission::write(&spec, unit, kind, a.address, &v, a.target.timeout)
            .await
            .map_err(anyhow::Error::msg)?;
        tracing::info!(
            unit,
            address = a.address,
            value,
            origin = "probe",
            "write ok"
        );
        println!("written {what}; read back {back:?}");
        return Ok(());
    }
    loop {
        let req = ReadRequest {
            kind,
            start: a.address,
            count: a.count,
        };
        match commission::read(&spec, unit, req, a.target.timeout).await {
            Ok(BlockData::Words(w)) => {
                print!("{}", fieldgate::mappings::probe::render(a.address, &w))
            }
            Ok(BlockData::Bits(b)) => {
                for (i, bit) in b.iter().take(usize::from(a.count)).enumerate() {
                    println!("  {:>5}  {}", usize::from(a.address) + i, u8::from(*bit));
                }
            }
            Err(e) if a.watch => eprintln!("probe: {e}"),
            Err(e) => anyhow::bail!(e),
        }
        if !a.watch {
            return Ok(());
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(a.interval) => println!(),
        }
    }
}
