//! Memory of the web console's trends: the `fieldgate` binary (`run`) polling 100 numeric
//! points every 50 ms with `web.trend_samples: 600`, so every trend window is full after 30 s;
//! its resident memory is sampled every 5 s for `--seconds` (default 180) and printed with the
//! trend fill read from `/api/trends`. Not part of `cargo test`; prints figures, asserts
//! nothing. Run: `bash scripts/web-memory.sh [--seconds N]` (README, Benchmarks).
//!
//! Peers: the binary's own water-tower simulator (100 points over its 11 input registers, each
//! address read by several points) and its embedded broker; the console listens on loopback
//! without users.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "RSS of the fieldgate binary with a full trend window for 100 points")]
struct Args {
    /// How long to sample, in seconds (the window is full after 30).
    #[arg(long, default_value_t = 180)]
    seconds: u64,
    /// The gateway binary; default: `fieldgate` next to this example's directory.
    #[arg(long)]
    gateway: Option<PathBuf>,
}

/// A child killed on drop, with its output lines on a channel.
struct Proc(Child, mpsc::Receiver<String>);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> anyhow::Result<Proc> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    let (tx, rx) = mpsc::channel();
    for s in [
        Box::new(child.stdout.take().context("stdout")?) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().context("stderr")?),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(s).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
    }
    Ok(Proc(child, rx))
}

/// The first output line containing `needle` (30 s deadline).
fn wait_line(p: &Proc, needle: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.1.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return Ok(l),
            Ok(_) => {}
            Err(_) => bail!("no line with `{needle}` in 30 s"),
        }
    }
}

fn last_word_addr(line: &str) -> anyhow::Result<SocketAddr> {
    line.rsplit(' ')
        .next()
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("no address in `{line}`"))
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Samples held over all trends (`GET /api/trends`).
fn trend_samples(web: SocketAddr) -> anyhow::Result<usize> {
    let mut s = TcpStream::connect(web)?;
    write!(s, "GET /api/trends HTTP/1.0\r\nHost: {web}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body)?;
    Ok(v.as_object()
        .map(|o| {
            o.values()
                .map(|t| t[0].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let gw = match args.gateway {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no directory above this example")?
            .join("fieldgate"),
    };
    if !gw.exists() {
        bail!(
            "{} not found: build it first, or pass --gateway",
            gw.display()
        );
    }
    let sim =
        spawn(Command::new(&gw).args(["simulate", "water-tower", "--listen", "127.0.0.1:0"]))?;
    let modbus = last_word_addr(&wait_line(&sim, "water tower listening on")?)?;
    let broker = spawn(Command::new(&gw).args(["broker", "--listen", "127.0.0.1:0"]))?;
    let mqtt = last_word_addr(&wait_line(&broker, "broker listening on")?)?;
    let dir = std::env::temp_dir().join(format!("fieldgate-web-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut yaml = format!(
        "mqtt: {{ host: 127.0.0.1, port: {}, client_id: web-memory, status_topic: webmem/status }}\n\
         web: {{ listen: 127.0.0.1:0, trend_samples: 600 }}\n\
         devices:\n  - name: d\n    tcp: {{ host: 127.0.0.1, port: {} }}\n    poll_interval: 50ms\n    points:\n",
        mqtt.port(),
        modbus.port()
    );
    for i in 0..100 {
        yaml.push_str(&format!(
            "      - {{ name: p{i}, kind: input_register, address: {}, type: u16 }}\n",
            i % 11
        ));
    }
    let config = dir.join("mapping.yaml");
    std::fs::write(&config, yaml)?;
    let gateway = spawn(
        Command::new(&gw)
            .args(["run", "-c"])
            .arg(&config)
            .env("RUST_LOG", "info"),
    )?;
    let line = wait_line(&gateway, "web console listening")?;
    let web: SocketAddr = line
        .split("url=http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no address in {line}"))?;
    let pid = gateway.0.id();
    println!(
        "gateway pid {pid}, 100 points every 50 ms, trend_samples 600 (window full after 30 s)"
    );
    println!("seconds  rss_kB  rss_anon_kB  trend_samples");
    let start = Instant::now();
    let mut t = 0;
    while t <= args.seconds {
        let due = start + Duration::from_secs(t);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        println!(
            "{t:>7}  {:>6}  {:>11}  {:>13}",
            status_kb(pid, "VmRSS:"),
            status_kb(pid, "RssAnon:"),
            trend_samples(web)?
        );
        t += 5;
    }
    drop((gateway, broker, sim));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
