//! What a node's background tasks (the log's tail, the lease) report to its store.

use std::sync::Mutex;

/// What the background tasks report: why the replica stopped applying the log (if it
/// did), and which node the lease names.
#[derive(Debug, Default)]
pub(crate) struct Health {
    diverged: Mutex<Option<String>>,
    writer: Mutex<Option<String>>,
}

impl Health {
    pub(crate) fn set_diverged(&self, why: String) {
        *self.diverged.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    pub(crate) fn set_writer(&self, node: Option<String>) {
        *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = node;
    }

    pub(crate) fn diverged(&self) -> Option<String> {
        self.diverged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn writer(&self) -> Option<String> {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
