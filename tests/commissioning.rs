//! Commissioning tools against the simulators: `probe` finds the word order, `probe --write`
//! asks first, `scan` finds the units on an RTU bus and behind a TCP gateway.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `fieldgate probe` of `count` input registers from `address`.
fn probe_input(addr: &str, address: &str, count: &str) -> (bool, String) {
    run(&[
        "probe",
        "--tcp",
        addr,
        "--kind",
        "input",
        "--address",
        address,
        "--count",
        count,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_shows_the_plausible_decodings_of_known_registers() {
    let (_meter, meter) = energy_meter().await;
    let addr = meter.to_string();
    // Voltage L1: f32 230.1, low word first.
    let (ok, out) = probe_input(&addr, "0", "2");
    assert!(ok, "{out}");
    assert!(out.contains("*     0  f32    CDAB  230.1"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("f32    ABCD") && !l.trim_start().starts_with('*')),
        "{out}"
    );
    // Imported energy: u64 123456789 Wh, high word first.
    let (ok, out) = probe_input(&addr, "26", "4");
    assert!(ok, "{out}");
    assert!(out.contains("*    26  u64    ABCD  123456789"), "{out}");
    // A read outside the map reports the exception and fails.
    let (ok, out) = run(&[
        "probe",
        "--tcp",
        &addr,
        "--kind",
        "holding",
        "--address",
        "0",
        "--count",
        "1",
    ]);
    assert!(!ok && out.contains("illegal data address"), "{out}");

    // The water tower's consumption is f32 ABCD (300 l/min when frozen).
    let (_tower, taddr) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let (ok, out) = run(&[
        "probe",
        "--tcp",
        &taddr.to_string(),
        "--kind",
        "input",
        "--address",
        "3",
        "--count",
        "2",
    ]);
    assert!(ok && out.contains("*     3  f32    ABCD  300"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_write_asks_first_and_reads_back() {
    let (_sim, addr) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let a = addr.to_string();
    let args = [
        "probe",
        "--tcp",
        a.as_str(),
        "--kind",
        "holding",
        "--address",
        "0",
        "--write",
        "55",
    ];
    // Answering no writes nothing.
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("not written"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("? [y/N]"),
        "it asked"
    );
    assert_eq!(read_holding(addr).await, 20);
    // With --yes it writes, and reads back.
    let (ok, out) = run(&[&args[..], &["--yes"]].concat());
    assert!(ok, "{out}");
    assert!(out.contains("read back Words([55])"), "{out}");
    assert_eq!(read_holding(addr).await, 55);
    // A value the register refuses (the tower takes 0-400) is reported, not hidden.
    let (ok, out) = run(&[
        "probe",
        "--tcp",
        &a,
        "--kind",
        "holding",
        "--address",
        "0",
        "--write",
        "999",
        "--yes",
    ]);
    assert!(!ok && out.contains("illegal data value"), "{out}");
}

async fn read_holding(addr: std::net::SocketAddr) -> u16 {
    use tokio_modbus::prelude::*;
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(1))
        .await
        .unwrap();
    ctx.read_holding_registers(0, 1).await.unwrap().unwrap()[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_the_units_on_an_rtu_bus_and_behind_a_tcp_gateway() {
    let pty = PtyPair::new().await;
    let _sim = rtu_simulator(&pty.a, &["--units", "2,5", "--speed", "0"]).await;
    let port = pty.b.to_str().unwrap();
    let (ok, out) = run(&[
        "scan",
        "--rtu",
        port,
        "--parity",
        "none",
        "--from",
        "1",
        "--to",
        "8",
        "--timeout",
        "100ms",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains(": 2, 5 (scanned 1-8 in"), "{out}");

    let (_tcp, addr) = simulator("127.0.0.1:0", &["--units", "1,3", "--speed", "0"]).await;
    let (ok, out) = run(&[
        "scan",
        "--tcp",
        &addr.to_string(),
        "--from",
        "1",
        "--to",
        "4",
        "--timeout",
        "200ms",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains(": 1, 3 (scanned 1-4 in"), "{out}");
}
