//! The `fieldgate` command line: parse, set up logging, call into the library, map the result
//! to an exit code. Nothing else lives here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use fieldgate::config::{self, ConfigError};

#[derive(Debug, Parser)]
#[command(name = "fieldgate", version, about = "Modbus TCP ⇄ MQTT gateway")]
struct Cli {
    /// Log format on stderr: `text` (key=value, journald-friendly) or `json` (one object per line).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGINT or SIGTERM.
    Run {
        /// The mapping file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a mapping file and print what it will do; touches no network.
    Check {
        #[arg(short, long)]
        config: PathBuf,
        /// Also print each group's messages with every value null.
        #[arg(long)]
        sample: bool,
    },
    /// Print the JSON Schema of mapping files (for editors; also `docs/schemas/mapping.schema.json`).
    Schema,
    /// Run a simulated plant as a Modbus TCP slave.
    Simulate {
        #[command(subcommand)]
        plant: Plant,
    },
    /// Simulator, embedded broker and gateway on loopback, running mappings/water-tower.yaml.
    #[cfg(feature = "embedded-broker")]
    Demo {
        /// Simulated seconds per real second.
        #[arg(long, default_value_t = 20.0)]
        speed: f64,
    },
    /// An embedded MQTT broker on loopback (for demos and tests; no TLS, no auth).
    #[cfg(feature = "embedded-broker")]
    Broker {
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
enum Plant {
    /// The reference water tower (register map in the README). Serves Modbus TCP on
    /// `--listen`, or Modbus RTU on the serial port `--rtu`.
    WaterTower(TowerArgs),
    /// A three-phase energy meter (register map in the README). Same options; `--level`,
    /// `--levels` and `--auto` do not apply.
    EnergyMeter(TowerArgs),
}

#[derive(Debug, clap::Args)]
struct TowerArgs {
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
    /// Several units on one bus or listener, each its own tower: `--units 1,2`.
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
    /// A fault at start, `UNIT=MODE` (none, silent, late, garbage); repeatable. At run time,
    /// write `fault UNIT MODE` lines to stdin.
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// How late a `late` unit answers.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    late: std::time::Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    fieldgate::telemetry::init_logging(cli.log_format == "json");
    match cli.command {
        Command::Check { config, sample } => check(&config, sample),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&config::schema()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        command => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("fieldgate: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(run(command));
            // Do not wait for blocking readers (the simulator's stdin) that will never finish.
            rt.shutdown_timeout(std::time::Duration::from_millis(200));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fieldgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(path: &Path, sample: bool) -> ExitCode {
    match config::load(path) {
        Ok(model) => {
            println!("{}: ok", path.display());
            print!("{}", fieldgate::check::summary(&model));
            if sample {
                println!("sample messages:");
                print!("{}", fieldgate::check::samples(&model));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            if let ConfigError::Invalid { issues, .. } = &e {
                eprintln!("{} problem(s) found", issues.len());
            }
            ExitCode::FAILURE
        }
    }
}

/// Cancelled on SIGINT or SIGTERM.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}

async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signals();
    match command {
        Command::Check { .. } | Command::Schema => unreachable!("handled without a runtime"),
        Command::Run { config } => {
            let model = config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            fieldgate::run(Arc::new(model), shutdown).await
        }
        Command::Simulate {
            plant: Plant::WaterTower(args),
        } => simulate(fieldgate::simulator::Kind::WaterTower, args, shutdown).await,
        Command::Simulate {
            plant: Plant::EnergyMeter(args),
        } => simulate(fieldgate::simulator::Kind::EnergyMeter, args, shutdown).await,
        #[cfg(feature = "embedded-broker")]
        Command::Broker { listen } => {
            let addr =
                tokio::task::spawn_blocking(move || fieldgate::outputs::broker::start(listen))
                    .await??;
            println!("broker listening on {addr}");
            tracing::info!(%addr, "embedded broker listening");
            shutdown.cancelled().await;
            Ok(())
        }
        #[cfg(feature = "embedded-broker")]
        Command::Demo { speed } => fieldgate::demo::run(speed, shutdown).await,
    }
}

async fn simulate(
    kind: fieldgate::simulator::Kind,
    a: TowerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
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
                "water tower serving rtu on {} units {units:?}",
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
        "water tower simulator running"
    );
    fieldgate::simulator::serve_water_tower(endpoint, opts, shutdown).await?;
    Ok(())
}

fn name(kind: fieldgate::simulator::Kind) -> &'static str {
    match kind {
        fieldgate::simulator::Kind::WaterTower => "water tower",
        fieldgate::simulator::Kind::EnergyMeter => "energy meter",
    }
}
