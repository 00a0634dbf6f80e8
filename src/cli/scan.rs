//! `fieldgate scan`: find which unit ids answer on a bus or behind a TCP gateway, within a
//! bounded time. It only reads; it must not write to any device.

use super::Target;

#[derive(Debug, clap::Args)]
pub(crate) struct ScanArgs {
    #[command(flatten)]
    target: Target,
    /// First unit id to try.
    #[arg(long, default_value_t = 1)]
    from: u8,
    /// Last unit id to try.
    #[arg(long, default_value_t = 247)]
    to: u8,
}

pub(crate) async fn scan(a: ScanArgs) -> anyhow::Result<()> {
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
