//! `fieldgate simulate`: serve a simulated plant (water tower, energy meter) as a Modbus slave
//! over TCP, RTU over TCP or a serial port. The plant lives in the library's simulator; this only
//! turns options into its settings and opens the endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Subcommand)]
pub(crate) enum Plant {
    /// The reference water tower (register map in the README). Serves Modbus TCP on
    /// `--listen`, or Modbus RTU on the serial port `--rtu`.
    WaterTower(TowerArgs),
    /// A three-phase energy meter (register map in the README). Same options; `--level`,
    /// `--levels` and `--auto` do not apply.
    EnergyMeter(MeterArgs),
}

/// `energy-meter`: the tower's options and the register map to present.
#[derive(Debug, clap::Args)]
pub(crate) struct MeterArgs {
    /// The register map: `native` (the simulator's own, in the README) or `sdm630` (the
    /// Eastron SDM630's input registers, float32 high word first; see
    /// mappings/devices/sdm630.yaml).
    #[arg(long, default_value = "native", value_parser = ["native", "sdm630"])]
    profile: String,
    #[command(flatten)]
    args: TowerArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TowerArgs {
    /// TCP address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:5020")]
    listen: SocketAddr,
    /// Speak RTU framing on the TCP listener (like a serial-to-Ethernet converter).
    #[arg(long)]
    rtu_over_tcp: bool,
    /// Serve Modbus RTU on this serial port instead of TCP.
    #[arg(long)]
    rtu: Option<PathBuf>,
    /// Baud rate of `--rtu`.
    #[arg(long, default_value_t = 19_200)]
    baud: u32,
    /// Parity of `--rtu`: none, even or odd.
    #[arg(long, default_value = "even")]
    parity: String,
    /// Unit id (when `--units` is not given).
    #[arg(long, default_value_t = 1)]
    unit: u8,
    /// Several units on one bus or listener, each its own plant (a tower, or a meter):
    /// `--units 1,2`.
    #[arg(long, value_delimiter = ',')]
    units: Vec<u8>,
    /// Seed of the consumption random walk.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds per real second (0 freezes the plant).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Level at start, cm.
    #[arg(long, default_value_t = 200.0)]
    level: f64,
    /// Level at start per unit, cm, in the order of `--units`.
    #[arg(long, value_delimiter = ',')]
    levels: Vec<f64>,
    /// Switch the tower's automatic pump control on at start.
    #[arg(long)]
    auto: bool,
    /// A fault at start, `UNIT=MODE` (none, silent, late, garbage, close, exception:CODE);
    /// repeatable. At run time, write `fault UNIT MODE` lines to stdin.
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// How late a `late` unit answers.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    late: std::time::Duration,
    /// TCP: serve at most this many connections at a time, closing others at once (0: no
    /// limit). At run time, write `connections N` to stdin.
    #[arg(long, default_value_t = 0)]
    max_connections: usize,
    /// A quirk of real devices, for every unit; repeatable: close-after-reply, no-fc5,
    /// no-fc6, no-fc16, max-read=N, hole=KIND:ADDR, connect-silence=DURATION,
    /// min-gap=DURATION, tid-zero, tid-swap, stale-prefix, echo, clamp=ADDR:MIN:MAX,
    /// poke=KIND:ADDR:VALUE, delay=DURATION, busy=N (KIND: co, di, ir, hr). At run time, write
    /// `quirk SPEC` or `quirk clear` to stdin.
    #[arg(long = "quirk", value_name = "SPEC")]
    quirks: Vec<fieldgate::simulator::Quirk>,
    /// Water tower only: serve it as a Siemens S7 PLC (S7comm PUT/GET over ISO-on-TCP) on
    /// `--listen` instead of Modbus, its values in DB1 (layout in the README). Any rack/slot is
    /// accepted; `--seed`, `--speed`, `--level` and `--auto` apply.
    #[arg(long)]
    s7: bool,
}

/// Serve `plant` until shutdown.
pub(crate) async fn run(plant: Plant, shutdown: CancellationToken) -> anyhow::Result<()> {
    match plant {
        Plant::WaterTower(args) => {
            simulate(fieldgate::simulator::Kind::WaterTower, args, shutdown).await
        }
        Plant::EnergyMeter(m) => {
            let kind = if m.profile == "sdm630" {
                fieldgate::simulator::Kind::EnergyMeterSdm630
            } else {
                fieldgate::simulator::Kind::EnergyMeter
            };
            simulate(kind, m.args, shutdown).await
        }
    }
}

async fn simulate(
    kind: fieldgate::simulator::Kind,
    a: TowerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if a.s7 {
        return simulate_s7(kind, a, shutdown).await;
    }
    let faults = a
        .faults
        .iter()
        .map(|f| {
            let (u, m) = f
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--fault {f}: write UNIT=MODE"))?;
            Ok((u.parse::<u8>()?, m.parse().map_err(anyhow::Error::msg)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let units = if a.units.is_empty() {
        vec![a.unit]
    } else {
        a.units
    };
    let levels = if a.levels.is_empty() {
        vec![a.level]
    } else {
        a.levels
    };
    let opts = fieldgate::simulator::TowerOptions {
        kind,
        units: units.clone(),
        levels,
        seed: a.seed,
        speed: a.speed,
        auto: a.auto,
        faults,
        late: a.late,
        control: true,
        max_connections: a.max_connections,
        quirks: a
            .quirks
            .iter()
            .fold(fieldgate::simulator::Quirks::default(), |mut q, &quirk| {
                q.add(quirk);
                q
            }),
    };
    let endpoint = match a.rtu {
        Some(path) => {
            let parity = match a.parity.as_str() {
                "none" => tokio_serial::Parity::None,
                "even" => tokio_serial::Parity::Even,
                "odd" => tokio_serial::Parity::Odd,
                other => anyhow::bail!("--parity {other}: none, even or odd"),
            };
            let builder = tokio_serial::new(path.to_string_lossy(), a.baud)
                .parity(parity)
                .exclusive(false);
            let port = tokio_serial::SerialStream::open(&builder)
                .with_context(|| format!("open {}", path.display()))?;
            println!(
                "{} serving rtu on {} units {units:?}",
                name(kind),
                path.display()
            );
            fieldgate::simulator::Endpoint::Rtu(port)
        }
        None => {
            let listener = tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("listen on {}", a.listen))?;
            let addr = listener.local_addr()?;
            println!("{} listening on {addr}", name(kind));
            if a.rtu_over_tcp {
                fieldgate::simulator::Endpoint::RtuOverTcp(listener)
            } else {
                fieldgate::simulator::Endpoint::Tcp(listener)
            }
        }
    };
    tracing::info!(
        ?units,
        seed = a.seed,
        speed = a.speed,
        "{} simulator running",
        name(kind)
    );
    fieldgate::simulator::serve_water_tower(endpoint, opts, shutdown).await?;
    Ok(())
}

fn name(kind: fieldgate::simulator::Kind) -> &'static str {
    match kind {
        fieldgate::simulator::Kind::WaterTower => "water tower",
        fieldgate::simulator::Kind::EnergyMeter => "energy meter",
        fieldgate::simulator::Kind::EnergyMeterSdm630 => "energy meter (sdm630)",
    }
}

/// `--s7`: the water tower as an S7 PLC (`fieldgate::simulator::s7`).
async fn simulate_s7(
    kind: fieldgate::simulator::Kind,
    a: TowerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if kind != fieldgate::simulator::Kind::WaterTower {
        anyhow::bail!("--s7 serves the water tower only");
    }
    if a.rtu.is_some() || a.rtu_over_tcp {
        anyhow::bail!("--s7 speaks ISO-on-TCP: --rtu and --rtu-over-tcp do not apply");
    }
    // Modbus-only options would be silently ignored: refused instead.
    let mut modbus_only = Vec::new();
    if !a.units.is_empty() {
        modbus_only.push("--units");
    }
    if !a.levels.is_empty() {
        modbus_only.push("--levels");
    }
    if !a.faults.is_empty() {
        modbus_only.push("--fault");
    }
    if !a.quirks.is_empty() {
        modbus_only.push("--quirk");
    }
    if !modbus_only.is_empty() {
        anyhow::bail!(
            "--s7 serves one S7 PLC: {} apply to the Modbus simulator only",
            modbus_only.join(", ")
        );
    }
    let mut tower = fieldgate::simulator::water_tower::WaterTower::new(a.seed, a.level);
    if a.auto {
        let _ = tower.write_holding_registers(4, &[1]);
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    println!("water tower (S7, DB1) listening on {addr}");
    tracing::info!(
        seed = a.seed,
        speed = a.speed,
        "water tower S7 simulator running"
    );
    fieldgate::simulator::s7::serve(listener, tower, a.speed, shutdown).await?;
    Ok(())
}
