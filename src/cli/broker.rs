//! `fieldgate broker`: an embedded MQTT broker on loopback, for demos and tests (no TLS, no
//! auth). It must not be offered as a production broker.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

/// Serve MQTT on `listen` until shutdown; the bound address is printed on stdout.
pub(crate) async fn run(listen: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<()> {
    let addr =
        tokio::task::spawn_blocking(move || fieldgate::outputs::broker::start(listen)).await??;
    println!("broker listening on {addr}");
    tracing::info!(%addr, "embedded broker listening");
    shutdown.cancelled().await;
    Ok(())
}
