//! The simulator's device quirks, each seen from outside: the real `fieldgate simulate` with
//! `--quirk SPEC` (or `quirk SPEC` on its stdin), and an independent master: tokio-modbus's
//! client where it accepts the replies, raw bytes where a quirk breaks the framing it checks
//! (transaction ids, stale frames, closed connections, echoes).

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_modbus::prelude::*;

use common::*;

/// The water tower, frozen, with these quirks (each `--quirk`), on a free TCP port.
async fn quirky(quirks: &[&str], extra: &[&str]) -> (Proc, std::net::SocketAddr) {
    let mut args = vec!["--speed", "0"];
    for q in quirks {
        args.extend(["--quirk", q]);
    }
    args.extend(extra);
    simulator("127.0.0.1:0", &args).await
}

async fn client(addr: std::net::SocketAddr) -> client::Context {
    within(tcp::connect_slave(addr, Slave(1)))
        .await
        .expect("connect")
}

/// `f`, or a panic after the harness deadline.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("no answer within {DEADLINE:?}"))
}

/// A Modbus TCP request frame (MBAP header, Modbus Messaging on TCP/IP 3.1.3).
fn mbap(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = tid.to_be_bytes().to_vec();
    f.extend([0, 0]);
    f.extend((pdu.len() as u16 + 1).to_be_bytes());
    f.push(unit);
    f.extend(pdu);
    f
}

/// The PDU of "read `n` input registers at `addr`" (FC4).
fn read_ir(addr: u16, n: u16) -> Vec<u8> {
    let mut p = vec![4];
    p.extend(addr.to_be_bytes());
    p.extend(n.to_be_bytes());
    p
}

/// Read one MBAP frame, whole.
async fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut f = vec![0u8; 7];
    within(s.read_exact(&mut f)).await.expect("MBAP header");
    let len = usize::from(u16::from_be_bytes([f[4], f[5]]));
    assert!(len >= 2, "bad MBAP length in {f:02x?}");
    let mut rest = vec![0u8; len - 1];
    within(s.read_exact(&mut rest)).await.expect("MBAP body");
    f.extend(rest);
    f
}

fn tid(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[0], frame[1]])
}

/// CRC-16/MODBUS, written here again so the test does not trust the simulator's.
fn crc(data: &[u8]) -> [u8; 2] {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc.to_le_bytes()
}

fn rtu(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = vec![unit];
    f.extend(pdu);
    let c = crc(&f);
    f.extend(c);
    f
}

/// Wait until the peer closes the connection (EOF or reset) and nothing else came first.
async fn assert_closed(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    match within(s.read(&mut b)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("more bytes instead of a close: {:02x?}", &b[..n]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_write_functions_answer_illegal_function_and_the_others_work() {
    let (_sim, addr) = quirky(&["no-fc6", "no-fc5"], &[]).await;
    let mut ctx = client(addr).await;
    assert_eq!(
        within(ctx.write_single_register(0, 50)).await.unwrap(),
        Err(ExceptionCode::IllegalFunction)
    );
    assert_eq!(
        within(ctx.write_single_coil(0, true)).await.unwrap(),
        Err(ExceptionCode::IllegalFunction)
    );
    within(ctx.write_multiple_registers(0, &[50]))
        .await
        .unwrap()
        .unwrap();
    within(ctx.write_multiple_coils(0, &[true]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        within(ctx.read_holding_registers(0, 1)).await.unwrap(),
        Ok(vec![50])
    );
    assert_eq!(within(ctx.read_coils(0, 1)).await.unwrap(), Ok(vec![true]));

    let (_sim, addr) = quirky(&["no-fc16"], &[]).await;
    let mut ctx = client(addr).await;
    assert_eq!(
        within(ctx.write_multiple_registers(0, &[60]))
            .await
            .unwrap(),
        Err(ExceptionCode::IllegalFunction)
    );
    within(ctx.write_single_register(0, 61))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        within(ctx.read_holding_registers(0, 1)).await.unwrap(),
        Ok(vec![61])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_reads_and_reads_over_a_hole_answer_illegal_data_address() {
    let (_sim, addr) = quirky(&["max-read=5", "hole=ir:3", "hole=co:1"], &[]).await;
    let mut ctx = client(addr).await;
    let bad = Err(ExceptionCode::IllegalDataAddress);
    // max-read: 5 registers work, 6 do not (no hole in 4..10).
    assert!(
        within(ctx.read_input_registers(4, 5))
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(within(ctx.read_input_registers(4, 6)).await.unwrap(), bad);
    // The hole: reads covering ir 3 fail, the neighbours work.
    assert_eq!(within(ctx.read_input_registers(0, 4)).await.unwrap(), bad);
    assert_eq!(within(ctx.read_input_registers(3, 1)).await.unwrap(), bad);
    assert!(
        within(ctx.read_input_registers(0, 3))
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        within(ctx.read_input_registers(4, 1))
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(
        within(ctx.read_coils(0, 2)).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert!(within(ctx.read_coils(0, 1)).await.unwrap().is_ok());
    // Other tables are untouched.
    assert!(
        within(ctx.read_holding_registers(0, 5))
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamped_setpoints_and_poked_values() {
    let (_sim, addr) = quirky(
        &[
            "clamp=0:0:100",
            "poke=ir:20:0x7FC0",
            "poke=ir:21:0",
            "poke=hr:30:0x8000",
            "poke=ir:0:999",
            "poke=di:1:1",
        ],
        &["--level", "123"],
    )
    .await;
    let mut ctx = client(addr).await;
    // Clamp: success, and the read-back differs.
    within(ctx.write_single_register(0, 300))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        within(ctx.read_holding_registers(0, 1)).await.unwrap(),
        Ok(vec![100])
    );
    within(ctx.write_multiple_registers(0, &[40]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        within(ctx.read_holding_registers(0, 1)).await.unwrap(),
        Ok(vec![40])
    );
    // Poke: an f32 NaN where the water tower has no registers at all.
    let w = within(ctx.read_input_registers(20, 2))
        .await
        .unwrap()
        .unwrap();
    let v = f32::from_bits((u32::from(w[0]) << 16) | u32::from(w[1]));
    assert!(v.is_nan(), "{w:04x?}");
    // A SunSpec "not implemented", and writes to it are accepted and change nothing.
    assert_eq!(
        within(ctx.read_holding_registers(30, 1)).await.unwrap(),
        Ok(vec![0x8000])
    );
    within(ctx.write_single_register(30, 5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        within(ctx.read_holding_registers(30, 1)).await.unwrap(),
        Ok(vec![0x8000])
    );
    // Inside the map the poke wins over the profile; its neighbours are the profile's.
    let w = within(ctx.read_input_registers(0, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w[0], 999);
    assert_eq!(
        within(ctx.read_discrete_inputs(0, 2)).await.unwrap(),
        Ok(vec![false, true])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_ids_zero_and_swapped() {
    for (quirk, want) in [("tid-zero", [0u8, 0]), ("tid-swap", [0x34, 0x12])] {
        let (_sim, addr) = quirky(&[quirk], &["--level", "123"]).await;
        let mut s = within(TcpStream::connect(addr)).await.unwrap();
        s.write_all(&mbap(0x1234, 1, &read_ir(0, 1))).await.unwrap();
        let f = read_frame(&mut s).await;
        assert_eq!(&f[..2], &want, "{quirk}: {f:02x?}");
        // The rest of the reply is a normal one: unit 1, FC4, 2 bytes, level 123.
        assert_eq!(&f[6..], &[1, 4, 2, 0, 123], "{quirk}: {f:02x?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_reply_comes_before_each_reply() {
    let (_sim, addr) = quirky(&["stale-prefix"], &["--level", "123"]).await;
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    s.write_all(&mbap(1, 1, &read_ir(0, 1))).await.unwrap();
    let first = read_frame(&mut s).await;
    assert_eq!(
        tid(&first),
        1,
        "the first reply has nothing stale before it"
    );
    s.write_all(&mbap(2, 1, &read_ir(1, 2))).await.unwrap();
    let stale = read_frame(&mut s).await;
    let reply = read_frame(&mut s).await;
    assert_eq!(
        stale, first,
        "the previous reply, with its old transaction id"
    );
    assert_eq!(tid(&reply), 2);
    assert_eq!(&reply[6..9], &[1, 4, 4], "{reply:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_closes_after_each_reply_on_tcp_and_rtu_over_tcp() {
    let (_sim, addr) = quirky(&["close-after-reply"], &["--level", "123"]).await;
    for i in 0..2 {
        let mut s = within(TcpStream::connect(addr)).await.unwrap();
        s.write_all(&mbap(7, 1, &read_ir(0, 1))).await.unwrap();
        let f = read_frame(&mut s).await;
        assert_eq!(&f[6..], &[1, 4, 2, 0, 123], "connection {i}: {f:02x?}");
        assert_closed(&mut s).await;
    }

    let (_sim, addr) = quirky(
        &["close-after-reply"],
        &["--level", "123", "--rtu-over-tcp"],
    )
    .await;
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    s.write_all(&rtu(1, &read_ir(0, 1))).await.unwrap();
    let mut reply = [0u8; 7];
    within(s.read_exact(&mut reply)).await.unwrap();
    assert_eq!(reply.to_vec(), rtu(1, &[4, 2, 0, 123]));
    assert_closed(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_tcp_echoes_each_request_before_the_reply() {
    let (_sim, addr) = quirky(&["echo"], &["--level", "123", "--rtu-over-tcp"]).await;
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    for _ in 0..2 {
        let request = rtu(1, &read_ir(0, 1));
        s.write_all(&request).await.unwrap();
        let mut got = vec![0u8; request.len() + 7];
        within(s.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got[..request.len()], &request[..], "the echo: {got:02x?}");
        assert_eq!(got[request.len()..].to_vec(), rtu(1, &[4, 2, 0, 123]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_bus_echoes_each_request_before_the_reply() {
    let pty = PtyPair::new().await;
    let _sim = rtu_simulator(
        &pty.a,
        &["--speed", "0", "--level", "123", "--quirk", "echo"],
    )
    .await;
    let mut port =
        tokio_serial::SerialStream::open(&tokio_serial::new(pty.b.to_string_lossy(), 19_200))
            .expect("open the master's end");
    // A write (FC6) and a read (FC4): each comes back, then its reply.
    let write = rtu(1, &[6, 0, 0, 0, 42]);
    let read = rtu(1, &read_ir(0, 1));
    for (request, reply) in [
        (write.clone(), write.clone()),
        (read, rtu(1, &[4, 2, 0, 123])),
    ] {
        port.write_all(&request).await.unwrap();
        let mut got = vec![0u8; request.len() + reply.len()];
        within(port.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got[..request.len()], &request[..], "the echo: {got:02x?}");
        assert_eq!(&got[request.len()..], &reply[..], "the reply: {got:02x?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_right_after_connecting_are_swallowed() {
    let silence = Duration::from_millis(1500);
    let (_sim, addr) = quirky(&["connect-silence=1500ms"], &[]).await;
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    // The server accepts after the handshake, so its silence ends after this + 1.5 s.
    let connected = Instant::now();
    // Ask again every 200 ms until one is answered; the first (tid 1) never is.
    let (mut reader, mut writer) = s.split();
    let asked = async {
        for tid in 1u16..100 {
            writer
                .write_all(&mbap(tid, 1, &read_ir(0, 1)))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let answered = async {
        let mut f = vec![0u8; 11];
        reader.read_exact(&mut f).await.unwrap();
        tid(&f)
    };
    let first = tokio::select! {
        t = within(answered) => t,
        () = asked => panic!("no request answered"),
    };
    assert!(first > 1, "a request at once after connecting was answered");
    assert!(
        connected.elapsed() >= silence,
        "an answer within {silence:?} of connecting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_right_after_a_reply_is_swallowed() {
    let (_sim, addr) = quirky(&["min-gap=1s"], &[]).await;
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    // The server notes its reply after this, so its gap ends after this + 1 s.
    let asked_first = Instant::now();
    s.write_all(&mbap(1, 1, &read_ir(0, 1))).await.unwrap();
    assert_eq!(tid(&read_frame(&mut s).await), 1);
    // At once after the reply: swallowed. Then ask every 200 ms until one is answered.
    s.write_all(&mbap(2, 1, &read_ir(0, 1))).await.unwrap();
    let (mut reader, mut writer) = s.split();
    let asked = async {
        for tid in 3u16..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer
                .write_all(&mbap(tid, 1, &read_ir(0, 1)))
                .await
                .unwrap();
        }
    };
    let answered = async {
        let mut f = vec![0u8; 11];
        reader.read_exact(&mut f).await.unwrap();
        tid(&f)
    };
    let first = tokio::select! {
        t = within(answered) => t,
        () = asked => panic!("no request answered"),
    };
    assert!(first > 2, "the request right after a reply was answered");
    assert!(
        asked_first.elapsed() >= Duration::from_secs(1),
        "answered again within the gap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_comes_after_the_delay() {
    let (_sim, addr) = quirky(&["delay=700ms"], &[]).await;
    let mut ctx = client(addr).await;
    for _ in 0..2 {
        let t0 = Instant::now();
        within(ctx.read_input_registers(0, 1))
            .await
            .unwrap()
            .unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(700),
            "{:?}",
            t0.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quirks_switch_on_and_off_over_stdin() {
    let (mut sim, addr) = quirky(&[], &[]).await;
    let mut ctx = client(addr).await;
    within(ctx.write_single_register(0, 30))
        .await
        .unwrap()
        .unwrap();

    sim.send_line("quirk no-fc6");
    sim.wait_line("quirk no-fc6 ok").await;
    assert_eq!(
        within(ctx.write_single_register(0, 31)).await.unwrap(),
        Err(ExceptionCode::IllegalFunction)
    );
    // Several in one line; a bad one applies none of them.
    sim.send_line("quirk max-read=2 bogus");
    let line = sim.wait_line("quirk max-read=2 bogus:").await;
    assert!(line.contains("unknown quirk `bogus`"), "{line}");
    assert!(line.contains("close-after-reply"), "{line}");
    assert!(
        within(ctx.read_input_registers(0, 3))
            .await
            .unwrap()
            .is_ok()
    );
    sim.send_line("quirk max-read=2 hole=hr:4");
    sim.wait_line("quirk max-read=2 hole=hr:4 ok").await;
    assert_eq!(
        within(ctx.read_input_registers(0, 3)).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );

    sim.send_line("quirk clear");
    sim.wait_line("quirk clear ok").await;
    within(ctx.write_single_register(0, 32))
        .await
        .unwrap()
        .unwrap();
    assert!(
        within(ctx.read_input_registers(0, 3))
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(
        within(ctx.read_holding_registers(0, 5))
            .await
            .unwrap()
            .unwrap()[0],
        32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_quirk_on_the_command_line_exits_naming_it_and_the_valid_ones() {
    let mut p = Proc::spawn(std::process::Command::new(bin()).args([
        "simulate",
        "water-tower",
        "--listen",
        "127.0.0.1:0",
        "--quirk",
        "max-read=lots",
    ]));
    let code = p.wait_exit().await;
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}");
    let out = p.output();
    assert!(out.contains("max-read=lots"), "{out}");
    assert!(out.contains("poke=KIND:ADDR:VALUE"), "{out}");
    assert!(!out.contains("listening"), "{out}");
}
