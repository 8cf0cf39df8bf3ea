//! Tasks the daemon cannot work without (docs/architecture.md, "The
//! service"): the datapath (the routing core), the link listeners, the task
//! that adopts their links, the ledger charges, the metrics server, the DNS
//! responder (the
//! datapath's own helpers, like the ledgers' saver, end it when they die). If one of them ends, fails or panics, the node would stay up and
//! answer `status` while it routes nothing; instead the daemon is told, logs
//! why, shuts down what it set up and exits 1, so systemd
//! (`Restart=on-failure`) starts it again.
//!
//! Per-connection and per-peer tasks are not vital: one bad peer or
//! connection must not take the node down.

use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};

/// Spawns vital tasks; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Vital(mpsc::UnboundedSender<String>);

/// Where the first death of a vital task is heard.
pub(crate) type Deaths = mpsc::UnboundedReceiver<String>;

impl Vital {
    pub(crate) fn new() -> (Vital, Deaths) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Vital(tx), rx)
    }

    /// Spawns `task` as the vital task `name`. Its end, error or panic is
    /// reported as one sentence; its [`VitalTask::stop`] (at shutdown) is not.
    pub(crate) fn spawn<F>(&self, name: &'static str, task: F) -> VitalTask
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = tokio::spawn(task);
        let abort = handle.abort_handle();
        let tx = self.0.clone();
        let watcher = tokio::spawn(async move {
            let why = match handle.await {
                Ok(Ok(())) => "ended".to_string(),
                Ok(Err(e)) => format!("failed: {e:#}"),
                Err(e) if e.is_panic() => {
                    let payload = e.into_panic();
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".into());
                    format!("panicked: {msg}")
                }
                Err(_) => return,
            };
            let _ = tx.send(format!("the {name} task {why}"));
        });
        VitalTask { abort, watcher }
    }
}

/// A running vital task.
#[derive(Debug)]
pub(crate) struct VitalTask {
    abort: AbortHandle,
    watcher: JoinHandle<()>,
}

impl VitalTask {
    /// Cancels the task and returns once it is gone (and has dropped what
    /// it held), without reporting it.
    pub(crate) async fn stop(self) {
        self.abort.abort();
        let _ = self.watcher.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_end_an_error_and_a_panic_are_reported_and_an_abort_is_not() {
        let (vital, mut deaths) = Vital::new();
        vital.spawn("quiet", async { Ok(()) });
        assert_eq!(deaths.recv().await.as_deref(), Some("the quiet task ended"));
        vital.spawn("broken", async { Err(anyhow::anyhow!("the disk is gone")) });
        assert_eq!(
            deaths.recv().await.as_deref(),
            Some("the broken task failed: the disk is gone")
        );
        vital.spawn("buggy", async {
            let v: Vec<u8> = Vec::new();
            let i = v.len() + 3;
            #[allow(clippy::indexing_slicing)]
            let _ = v[i];
            Ok(())
        });
        let death = deaths.recv().await.unwrap_or_default();
        assert!(
            death.starts_with("the buggy task panicked: index out of bounds"),
            "{death}"
        );
        vital.spawn("stopped", std::future::pending()).stop().await;
        drop(vital);
        assert_eq!(deaths.recv().await, None, "an abort is not a death");
    }
}
