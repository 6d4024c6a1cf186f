//! The events2 bus: resource actors publish `create`/`change`/`destroy` lines,
//! `drbdctl events` subscribers receive them.
//!
//! Owns: the subscriber list, each with a bounded queue. Must never: block a
//! publisher (a subscriber that falls [`SUBSCRIBER_QUEUE_LINES`] behind is
//! dropped; its client sees the stream end).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;

/// Lines queued per subscriber at most.
pub const SUBSCRIBER_QUEUE_LINES: usize = 4096;

/// Fan-out of event lines.
#[derive(Debug, Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<SyncSender<String>>>,
}

impl EventBus {
    /// A new subscription; lines published from now on arrive on the receiver.
    pub fn subscribe(&self) -> Receiver<String> {
        let (tx, rx) = sync_channel(SUBSCRIBER_QUEUE_LINES);
        self.lock().push(tx);
        rx
    }

    /// Sends `lines` to every subscriber, dropping slow or gone ones.
    pub fn publish(&self, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        self.lock().retain(|tx| {
            lines.iter().all(|l| match tx.try_send(l.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    tracing::warn!("events subscriber too slow; dropping it");
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            })
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SyncSender<String>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
