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
    /// Run the gateway until SIGINT or SIGTERM; SIGHUP re-reads the mapping file.
    Run {
        /// The mapping file.
        #[arg(short, long)]
        config: PathBuf,
        /// Also re-read the mapping file when it changes on disk.
        #[arg(long)]
        watch: bool,
    },
    /// Validate a mapping file and print what it will do; touches no network.
    Check {
        #[arg(short, long)]
        config: PathBuf,
        /// Also print each group's messages with every value null.
        #[arg(long)]
        sample: bool,
    },
    /// Read registers once (or `--watch`) and print every plausible decoding; or, with
    /// `--write`, make one test write.
    Probe(ProbeArgs),
    /// Find which unit ids answer on a bus (or behind a TCP gateway), within a bounded time.
    Scan(ScanArgs),
    /// TLS tools: `tls inspect` shows what a broker presents and whether the configured trust
    /// accepts it; `--pin` accepts it explicitly.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Encrypt or decrypt a payload (stdin to stdout) as the gateway does with
    /// `mqtt.payload_encryption`, for operators and other clients' tests.
    Crypt {
        #[command(subcommand)]
        command: CryptCommand,
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

/// Where a commissioning tool connects.
#[derive(Debug, clap::Args)]
struct Target {
    /// Modbus TCP, `HOST:PORT`.
    #[arg(long, conflicts_with_all = ["rtu", "rtu_over_tcp"])]
    tcp: Option<String>,
    /// Modbus RTU on this serial port.
    #[arg(long)]
    rtu: Option<PathBuf>,
    /// RTU framing over TCP, `HOST:PORT`.
    #[arg(long, conflicts_with = "rtu")]
    rtu_over_tcp: Option<String>,
    #[arg(long, default_value_t = 19_200)]
    baud: u32,
    /// none, even or odd.
    #[arg(long, default_value = "even")]
    parity: String,
    #[arg(long, default_value_t = 1)]
    unit: u8,
    /// Time to wait for an answer.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

impl Target {
    fn spec(&self) -> anyhow::Result<fieldgate::model::LinkSpec> {
        use fieldgate::model::{LinkSpec, Parity, SerialSpec};
        let host_port = |s: &str| -> anyhow::Result<(String, u16)> {
            let (h, p) = s
                .rsplit_once(':')
                .ok_or_else(|| anyhow::anyhow!("`{s}`: write HOST:PORT"))?;
            Ok((h.trim_matches(['[', ']']).to_owned(), p.parse()?))
        };
        Ok(match (&self.tcp, &self.rtu, &self.rtu_over_tcp) {
            (Some(t), None, None) => {
                let (host, port) = host_port(t)?;
                LinkSpec::Tcp { host, port }
            }
            (None, None, Some(t)) => {
                let (host, port) = host_port(t)?;
                LinkSpec::RtuOverTcp { host, port }
            }
            (None, Some(p), None) => LinkSpec::Rtu(SerialSpec {
                path: p.to_string_lossy().into_owned(),
                baud: self.baud,
                data_bits: 8,
                parity: match self.parity.as_str() {
                    "none" => Parity::None,
                    "even" => Parity::Even,
                    "odd" => Parity::Odd,
                    other => anyhow::bail!("--parity {other}: none, even or odd"),
                },
                stop_bits: 1,
            }),
            _ => anyhow::bail!("name exactly one of --tcp, --rtu or --rtu-over-tcp"),
        })
    }
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
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

#[derive(Debug, clap::Args)]
struct ScanArgs {
    #[command(flatten)]
    target: Target,
    /// First unit id to try.
    #[arg(long, default_value_t = 1)]
    from: u8,
    /// Last unit id to try.
    #[arg(long, default_value_t = 247)]
    to: u8,
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

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Connect to the broker and print the certificate it presents: subject, issuer, names,
    /// validity and SHA-256, and whether the configured trust accepts it.
    Inspect {
        /// The mapping file: its broker, `mqtt.tls` trust and client certificate.
        #[arg(short, long, conflicts_with_all = ["host"])]
        config: Option<PathBuf>,
        /// The broker, when no mapping is given (judged against the system CA store).
        #[arg(long, requires = "port")]
        host: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        /// Trust the presented certificate from now on: add its SHA-256 to the mapping's
        /// `mqtt.tls.pin_file`.
        #[arg(long, requires = "config")]
        pin: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CryptCommand {
    /// Seal stdin for TOPIC: the envelope (binary) on stdout.
    Encrypt {
        /// The 32-byte key file (raw, base64 or hex).
        #[arg(long)]
        key: PathBuf,
        /// The topic the message is for (bound into the envelope).
        #[arg(long)]
        topic: String,
    },
    /// Open an envelope from stdin (received on TOPIC): the payload on stdout. Fails, with
    /// nothing on stdout, if it does not authenticate.
    Decrypt {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        topic: String,
        /// Print the sender's timestamp (RFC 3339) on stderr.
        #[arg(long)]
        show_time: bool,
    },
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
    /// poke=KIND:ADDR:VALUE, delay=DURATION (KIND: co, di, ir, hr). At run time, write
    /// `quirk SPEC` or `quirk clear` to stdin.
    #[arg(long = "quirk", value_name = "SPEC")]
    quirks: Vec<fieldgate::simulator::Quirk>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    fieldgate::telemetry::init_logging(cli.log_format == "json");
    match cli.command {
        Command::Check { config, sample } => check(&config, sample),
        Command::Crypt { command } => match crypt(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fieldgate: {e:#}");
                ExitCode::FAILURE
            }
        },
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
            eprint!("{}", fieldgate::check::warnings(path, &model));
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
        Command::Run { config, watch } => {
            let model = config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            for w in &model.warnings {
                tracing::warn!(
                    file = %config.display(),
                    line = w.line,
                    col = w.col,
                    key = %w.path,
                    "{}",
                    w.message
                );
            }
            let reloads = fieldgate::gateway::reload_requests(config, watch, shutdown.clone());
            fieldgate::gateway::run_reloadable(Arc::new(model), Some(reloads), shutdown).await
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
        Command::Probe(a) => probe(a, shutdown).await,
        Command::Scan(a) => scan(a).await,
        Command::Crypt { .. } => anyhow::bail!("crypt runs before the runtime starts"),
        Command::Tls {
            command:
                TlsCommand::Inspect {
                    config,
                    host,
                    port,
                    pin,
                },
        } => tls_inspect(config, host, port, pin).await,
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

async fn probe(a: ProbeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
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

fn crypt(command: CryptCommand) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let (key, topic) = match &command {
        CryptCommand::Encrypt { key, topic } | CryptCommand::Decrypt { key, topic, .. } => {
            (key, topic)
        }
    };
    let key = fieldgate::config::read_key_file(key).map_err(anyhow::Error::msg)?;
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;
    let out = match command {
        CryptCommand::Encrypt { .. } => {
            use aes_gcm::aead::Generate;
            let nonce: aes_gcm::Nonce<aes_gcm::aes::cipher::consts::U12> =
                aes_gcm::Nonce::generate();
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as u64;
            fieldgate::mappings::envelope::seal(&key, nonce.into(), topic, ts, &input)
        }
        CryptCommand::Decrypt { show_time, .. } => {
            let (ts, plain) = fieldgate::mappings::envelope::open(&key, topic, &input)
                .with_context(|| format!("message for {topic}"))?;
            if show_time {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts);
                eprintln!("sent {}", fieldgate::mappings::engine::timestamp(at));
            }
            plain
        }
    };
    std::io::stdout().write_all(&out)?;
    Ok(())
}

async fn tls_inspect(
    config: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
    pin: bool,
) -> anyhow::Result<()> {
    use fieldgate::outputs::tls;
    let (host, port, settings, source) = match &config {
        Some(path) => {
            let model = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let settings = model
                .mqtt
                .tls
                .clone()
                .ok_or_else(|| anyhow::anyhow!("{}: no mqtt.tls section", path.display()))?;
            let source = match &settings.trust {
                tls::Trust::System => "the system CA store".to_owned(),
                tls::Trust::CaFile(p) => format!("ca_file {}", p.display()),
                tls::Trust::Pins(p) => format!("{} pin(s)", p.len()),
            };
            (model.mqtt.host.clone(), model.mqtt.port, settings, source)
        }
        None => {
            let (Some(h), Some(p)) = (host, port) else {
                anyhow::bail!("give -c FILE, or --host and --port");
            };
            let settings = tls::TlsSettings {
                trust: tls::Trust::System,
                client: None,
                min_version: tls::TlsVersion::V1_2,
                server_name: None,
                pin_file: None,
            };
            (h, p, settings, "the system CA store".to_owned())
        }
    };
    let presented = tls::inspect(&host, port, &settings)
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "{host}:{port} presented {} certificate(s)",
        presented.chain.len()
    );
    for (i, der) in presented.chain.iter().enumerate() {
        print!("{}", tls::describe(der, i == 0));
    }
    match &presented.verdict {
        Ok(()) => println!("trust ({source}): accepted"),
        Err((state, reason)) => println!("trust ({source}): refused, {}: {reason}", state.as_str()),
    }
    if pin {
        let file = settings.pin_file.clone().ok_or_else(|| {
            anyhow::anyhow!("the mapping has no mqtt.tls.pin_file to write the pin to")
        })?;
        let leaf = &presented.chain[0];
        let hex = tls::hex(&tls::sha256(leaf.as_ref()));
        let existing = tls::read_pin_file(&file).map_err(anyhow::Error::msg)?;
        if existing.contains(&tls::sha256(leaf.as_ref())) {
            println!("already pinned in {}", file.display());
        } else {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .with_context(|| format!("open {}", file.display()))?;
            writeln!(
                f,
                "{hex}  # {}, pinned {}",
                tls::subject(leaf),
                fieldgate::mappings::engine::timestamp(std::time::SystemTime::now())
            )?;
            println!(
                "pinned {hex} in {}; restart the gateway to use it",
                file.display()
            );
        }
    }
    Ok(())
}

async fn scan(a: ScanArgs) -> anyhow::Result<()> {
    let spec = a.target.spec()?;
    anyhow::ensure!(a.from <= a.to, "--from must not exceed --to");
    let gap = match &spec {
        fieldgate::model::LinkSpec::Rtu(s) => fieldgate::mappings::bustime::default_frame_gap(s),
        _ => std::time::Duration::ZERO,
    };
    let started = std::time::Instant::now();
    let found = fieldgate::inputs::commission::scan(&spec, a.from..=a.to, a.target.timeout, gap)
        .await
        .map_err(anyhow::Error::msg)?;
    let list: Vec<String> = found.iter().map(ToString::to_string).collect();
    println!(
        "units answering on {spec}: {} (scanned {}-{} in {:.1} s)",
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        },
        a.from,
        a.to,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
