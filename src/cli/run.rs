//! `fieldgate run`: load the mapping, log its warnings, and run the gateway with reloads until
//! shutdown. The gateway itself lives in the library; nothing here polls or publishes.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use fieldgate::config;

/// Run the gateway on the mapping `config`; `watch` also reloads it when the file changes.
pub(crate) async fn run(
    config: PathBuf,
    watch: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let model = config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &model.warnings {
        tracing::warn!(
            file = %w.file.as_deref().unwrap_or(&config).display(),
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
