//! `fieldgate demo`: the water-tower simulator, the embedded broker and the gateway on
//! loopback, with every publication printed as it passes through the broker.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::simulator::{Endpoint, TowerOptions, serve_water_tower};

/// The shipped mapping, embedded so that the demo runs from any directory.
pub const WATER_TOWER_YAML: &str = include_str!("../mappings/water-tower.yaml");

/// Run the demo until `shutdown`; the web console listens on `127.0.0.1:web_port` (0: any free
/// port), and its URL is printed.
pub async fn run(speed: f64, web_port: u16, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let modbus = listener.local_addr()?;
    let opts = TowerOptions {
        kind: crate::simulator::Kind::WaterTower,
        units: vec![1],
        levels: vec![200.0],
        seed: 1,
        speed,
        auto: true,
        faults: Vec::new(),
        late: Duration::from_secs(1),
        control: false,
        max_connections: 0,
        quirks: crate::simulator::Quirks::default(),
    };
    tokio::spawn(serve_water_tower(
        Endpoint::Tcp(listener),
        opts,
        shutdown.clone(),
    ));
    let broker = tokio::task::spawn_blocking(|| {
        crate::outputs::broker::start("127.0.0.1:0".parse().expect("literal address"))
    })
    .await??;

    let mut vars: HashMap<String, String> = std::env::vars().collect();
    vars.insert("MODBUS_HOST".into(), modbus.ip().to_string());
    vars.insert("MODBUS_PORT".into(), modbus.port().to_string());
    vars.insert("MQTT_HOST".into(), broker.ip().to_string());
    vars.insert("MQTT_PORT".into(), broker.port().to_string());
    let mut model = crate::config::load_str(
        Path::new("mappings/water-tower.yaml"),
        WATER_TOWER_YAML,
        vars,
        "demo",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The console on loopback, writes allowed, no users: the seed's console (level trend, pump
    // states, the four pump buttons) on the tower's page.
    model.web = Some(crate::model::Web {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], web_port)),
        users: Vec::new(),
        users_file: None,
        tls: None,
        allow_writes: true,
        trend_samples: crate::config::raw::DEFAULT_TREND_SAMPLES,
    });
    let prefix = model
        .mqtt
        .status_topic
        .trim_end_matches("/status")
        .to_owned();
    println!("fieldgate demo: water tower on modbus tcp {modbus}, broker on mqtt {broker}");
    println!(
        "  watch:  mosquitto_sub -h {} -p {} -t '{prefix}/#' -v",
        broker.ip(),
        broker.port()
    );
    println!(
        "  start:  mosquitto_pub -h {} -p {} -t '{prefix}/pump' -q 2 -m startp1",
        broker.ip(),
        broker.port()
    );
    println!(
        "  The tower runs its automatic control, so the pumps switch by themselves. Ctrl-C stops."
    );

    let mut opts = MqttOptions::new(
        "fieldgate-demo-monitor",
        broker.ip().to_string(),
        broker.port(),
    );
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .subscribe(format!("{prefix}/#"), QoS::AtMostOnce)
        .await
        .context("subscribe")?;
    let monitor_stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                () = monitor_stop.cancelled() => return,
                e = events.poll() => e,
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
                    println!(
                        "{now}  {}  {}",
                        p.topic,
                        String::from_utf8_lossy(&p.payload)
                    );
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    });
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok(addr) = bound_rx.await {
            println!("  console: http://{addr}/#/device/tower  (writes allowed, loopback only)");
        }
    });
    crate::gateway::run_announcing(Arc::new(model), None, shutdown, Some(bound_tx)).await
}
