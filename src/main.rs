//! The `fieldgate` command line: parse, set up logging, dispatch to a subcommand in `cli/`, map
//! the result to an exit code. Nothing else lives here: the subcommands call into the library,
//! and no gateway logic belongs in the binary.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fieldgate",
    version,
    about = "Modbus (TCP, RTU) and Siemens S7 ⇄ MQTT gateway"
)]
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
        /// Also print every device with every point, templates expanded: exactly what runs.
        #[arg(long)]
        expand: bool,
    },
    /// Read registers once (or `--watch`) and print every plausible decoding; or, with
    /// `--write`, make one test write.
    Probe(cli::probe::ProbeArgs),
    /// Find which unit ids answer on a bus (or behind a TCP gateway), within a bounded time.
    Scan(cli::scan::ScanArgs),
    /// TLS tools: `tls inspect` shows what a broker presents and whether the configured trust
    /// accepts it; `--pin` accepts it explicitly.
    Tls {
        #[command(subcommand)]
        command: cli::tls::TlsCommand,
    },
    /// Encrypt or decrypt a payload (stdin to stdout) as the gateway does with
    /// `mqtt.payload_encryption`, for operators and other clients' tests.
    Crypt {
        #[command(subcommand)]
        command: cli::crypt::CryptCommand,
    },
    /// The web console's users file: `web passwd NAME` prints a user line with an argon2 hash
    /// of a password read from stdin; `web token NAME` makes a bearer token.
    Web {
        #[command(subcommand)]
        command: cli::web::WebCommand,
    },
    /// Print the JSON Schema of mapping files (for editors; also `docs/schemas/mapping.schema.json`).
    Schema {
        /// The schema of an included file of templates instead (a device library; also
        /// `docs/schemas/device-library.schema.json`).
        #[arg(long)]
        library: bool,
    },
    /// Run a simulated plant as a Modbus TCP slave (or, with `--s7`, as an S7 PLC).
    Simulate {
        #[command(subcommand)]
        plant: cli::simulate::Plant,
    },
    /// Simulator, embedded broker and gateway on loopback, running mappings/water-tower.yaml.
    #[cfg(feature = "embedded-broker")]
    Demo {
        /// Simulated seconds per real second.
        #[arg(long, default_value_t = 20.0)]
        speed: f64,
        /// The web console's port on 127.0.0.1 (0: any free port; the URL is printed).
        #[arg(long, default_value_t = 0)]
        web_port: u16,
    },
    /// An embedded MQTT broker on loopback (for demos and tests; no TLS, no auth).
    #[cfg(feature = "embedded-broker")]
    Broker {
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    // Before any thread starts: which mapped files are the program's own (src/memory.rs).
    fieldgate::memory::note_startup_objects();
    let cli = Cli::parse();
    fieldgate::telemetry::init_logging(cli.log_format == "json");
    match cli.command {
        Command::Check {
            config,
            sample,
            expand,
        } => cli::check::check(&config, sample, expand),
        Command::Crypt { command } => match cli::crypt::crypt(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fieldgate: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Schema { library } => cli::check::schema(library),
        Command::Web { command } => cli::web::run(command),
        command => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(worker_threads())
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

/// The runtime's worker threads: `TOKIO_WORKER_THREADS` when it is a positive number (the
/// variable tokio itself reads when a program does not choose), else one.
///
/// One is the measured choice for a gateway, whose tasks wait on sockets and timers and do
/// little work per wake-up: with one worker the engine, the links and the MQTT task hand
/// values to each other on the same thread, without a cross-thread wake-up or a free into
/// another thread's malloc arena. `bench_e2e --broker sink`, release build, the same binary
/// with 2 and 1 workers in alternating runs: 10 × 1000@0.1 (100,000 values/s) CPU 1.46–1.58
/// → 1.26–1.34 ms per 1,000 values and `RssAnon` 8.3–8.4 → 6.9–7.1 MB; 1000@0.1 read → broker
/// p50 0.66–0.77 → 0.52–0.57 ms. Blocking work never runs on it: fsyncs leave it
/// (`block_in_place`), password hashing and the simulator's stdin go to the blocking pool,
/// and loading or reloading a mapping runs on the main thread.
/// A value that is not a positive number is reported on stderr and one is used.
fn worker_threads() -> usize {
    let value = std::env::var("TOKIO_WORKER_THREADS").ok();
    match parse_worker_threads(value.as_deref()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("fieldgate: {e}; using 1 worker thread");
            1
        }
    }
}

/// `TOKIO_WORKER_THREADS` as a count: unset is 1; an error names the value.
fn parse_worker_threads(value: Option<&str>) -> Result<usize, String> {
    let Some(v) = value else { return Ok(1) };
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "TOKIO_WORKER_THREADS={v:?} is not a positive number of threads"
        )),
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = cli::shutdown_on_signals();
    match command {
        Command::Check { .. } | Command::Schema { .. } | Command::Web { .. } => {
            unreachable!("handled without a runtime")
        }
        Command::Run { config, watch } => cli::run::run(config, watch, shutdown).await,
        Command::Simulate { plant } => cli::simulate::run(plant, shutdown).await,
        #[cfg(feature = "embedded-broker")]
        Command::Broker { listen } => cli::broker::run(listen, shutdown).await,
        #[cfg(feature = "embedded-broker")]
        Command::Demo { speed, web_port } => fieldgate::demo::run(speed, web_port, shutdown).await,
        Command::Probe(a) => cli::probe::probe(a, shutdown).await,
        Command::Scan(a) => cli::scan::scan(a).await,
        Command::Crypt { .. } => anyhow::bail!("crypt runs before the runtime starts"),
        Command::Tls { command } => cli::tls::run(command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_worker_threads;

    #[test]
    fn worker_threads_default_to_one_and_bad_values_are_named() {
        assert_eq!(parse_worker_threads(None), Ok(1));
        assert_eq!(parse_worker_threads(Some("3")), Ok(3));
        assert_eq!(parse_worker_threads(Some(" 2 ")), Ok(2));
        for bad in ["0", "-1", "two", ""] {
            let e = parse_worker_threads(Some(bad)).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
