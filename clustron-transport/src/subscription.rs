//! [`Subscription`]: the one shape of every change stream in Clustron
//! (transport events, membership, leadership, the event bus): values in
//! order, and a [`Notification::Lagged`] count instead of silence when the
//! subscriber falls behind.

use tokio::sync::broadcast;

/// What [`Subscription::recv`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification<T> {
    /// The next change.
    Event(T),
    /// The subscriber fell behind and this many changes were dropped for it.
    /// Read the current state again (e.g. `members()`, `leader()`) to
    /// resynchronise; the stream goes on with the oldest change still kept.
    Lagged(u64),
}

/// A stream of changes that says when it lagged. Every subscriber gets
/// every change (a bounded buffer per publisher; the buffer size is on the
/// publisher's options), in the order they happened.
#[derive(Debug)]
pub struct Subscription<T> {
    rx: broadcast::Receiver<T>,
}

impl<T: Clone> Subscription<T> {
    /// Wraps a broadcast receiver: for crates that publish their own
    /// changes in this shape.
    pub fn new(rx: broadcast::Receiver<T>) -> Self {
        Self { rx }
    }

    /// The next change, or how many were missed; `None` once the publisher
    /// has stopped and everything sent before was received.
    pub async fn recv(&mut self) -> Option<Notification<T>> {
        match self.rx.recv().await {
            Ok(event) => Some(Notification::Event(event)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Notification::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next change if one is already waiting (or how many were missed);
    /// `None` when nothing is waiting or the publisher has stopped.
    pub fn try_recv(&mut self) -> Option<Notification<T>> {
        match self.rx.try_recv() {
            Ok(event) => Some(Notification::Event(event)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Notification::Lagged(n)),
            Err(_) => None,
        }
    }

    /// A new subscription at the same publisher that starts with the next
    /// change (nothing queued here is copied).
    pub fn resubscribe(&self) -> Self {
        Self {
            rx: self.rx.resubscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_how_many_it_missed() {
        let (tx, rx) = broadcast::channel(2);
        let mut sub = Subscription::new(rx);
        for i in 0..5 {
            tx.send(i).unwrap_or_default();
        }
        assert_eq!(sub.recv().await, Some(Notification::Lagged(3)));
        assert_eq!(sub.recv().await, Some(Notification::Event(3)));
        assert_eq!(sub.try_recv(), Some(Notification::Event(4)));
        assert_eq!(sub.try_recv(), None);
        drop(tx);
        assert_eq!(sub.recv().await, None);
    }
}
