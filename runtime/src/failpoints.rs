//! Failpoints for the race audit (only with the `failpoints` feature; never in a production
//! build): armed from `FAILPOINTS` at start, and re-armed from the file named by
//! `ORDERFLOW_FAILPOINTS_FILE` on SIGUSR2, so that the audit can arm the process that is active
//! right now (a freshly started worker would only be a standby). The `fail_point!` lines sit in
//! the api and worker at the steps they name.

/// Arms the failpoints; keep the returned scenario alive for the life of the process.
pub fn arm() -> fail::FailScenario<'static> {
    let scenario = fail::FailScenario::setup();
    tokio::spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut usr2 = signal(SignalKind::user_defined2()).expect("installing a SIGUSR2 handler");
        while usr2.recv().await.is_some() {
            let Ok(path) = std::env::var("ORDERFLOW_FAILPOINTS_FILE") else {
                continue;
            };
            // Same syntax as FAILPOINTS: `name=actions;name=actions`.
            let text = std::fs::read_to_string(path).unwrap_or_default();
            for (name, actions) in text.split(';').filter_map(|e| e.split_once('=')) {
                let (name, actions) = (name.trim(), actions.trim());
                match fail::cfg(name, actions) {
                    Ok(()) => tracing::info!(failpoint = name, actions, "failpoint armed"),
                    Err(error) => tracing::warn!(failpoint = name, error, "bad failpoint"),
                }
            }
        }
    });
    scenario
}
