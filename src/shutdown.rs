//! One shutdown signal for a node, fanned out to every task that must stop.
//!
//! The node owns a [`Shutdown`]; each task holds a [`ShutdownListener`] and
//! selects on [`ShutdownListener::recv`] next to its own work. A `watch`
//! channel is used rather than a broadcast: a listener created *after* the
//! signal still sees it, so no task can miss the shutdown by starting late.

use tokio::sync::watch;

/// Sends the shutdown signal. Dropping it also signals shutdown.
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

/// Receives the shutdown signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownListener {
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        Self { tx }
    }

    /// A listener for one task.
    pub fn listener(&self) -> ShutdownListener {
        ShutdownListener {
            rx: self.tx.subscribe(),
        }
    }

    /// Tells every listener to stop. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl ShutdownListener {
    /// Completes once shutdown has been triggered (or the sender is gone).
    pub async fn recv(&mut self) {
        // `wait_for` returns an error only when the sender is dropped, which
        // also means shutdown.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_listener_sees_earlier_trigger() {
        let shutdown = Shutdown::new();
        shutdown.trigger();
        let mut late = shutdown.listener();
        assert!(late.is_triggered());
        late.recv().await;
    }

    #[tokio::test]
    async fn dropping_the_sender_releases_listeners() {
        let shutdown = Shutdown::new();
        let mut listener = shutdown.listener();
        assert!(!listener.is_triggered());
        drop(shutdown);
        listener.recv().await;
    }
}
