//! The dissemination queue: news waiting to be piggybacked.
//!
//! Each item is sent a bounded number of times (`retransmit_mult ×
//! ceil(log10(N + 1))`), least-sent first. News about a member replaces older
//! news about the same member, so the queue holds at most one item per member.

use super::message::Gossip;

#[derive(Debug, Clone)]
struct Item {
    gossip: Gossip,
    size: usize,
    transmits: u32,
    /// Insertion order, for a deterministic tie-break (newest first).
    order: u64,
}

/// News waiting to be sent.
#[derive(Debug, Default)]
pub struct Broadcasts {
    items: Vec<Item>,
    order: u64,
}

impl Broadcasts {
    /// Queues `gossip`, replacing anything older about the same member.
    pub fn push(&mut self, gossip: Gossip) {
        self.items
            .retain(|item| item.gossip.subject() != gossip.subject());
        let size = postcard::experimental::serialized_size(&gossip).unwrap_or(usize::MAX);
        self.order += 1;
        self.items.push(Item {
            gossip,
            size,
            transmits: 0,
            order: self.order,
        });
    }

    /// Takes news for one message: least-sent (then newest) first, at most
    /// `budget` encoded bytes; items sent `limit` times are dropped.
    pub fn take(&mut self, budget: usize, limit: u32) -> Vec<Gossip> {
        if self.items.is_empty() {
            return Vec::new();
        }
        self.items
            .sort_by(|a, b| a.transmits.cmp(&b.transmits).then(b.order.cmp(&a.order)));
        let mut out = Vec::new();
        let mut used = 0;
        for item in &mut self.items {
            if used + item.size > budget {
                continue;
            }
            used += item.size;
            item.transmits += 1;
            out.push(item.gossip.clone());
        }
        self.items.retain(|item| item.transmits < limit);
        out
    }

    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether news about `name` is still queued.
    pub fn has_news_about(&self, name: &crate::member::NodeName) -> bool {
        self.items.iter().any(|item| item.gossip.subject() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::{Incarnation, NodeName};

    fn left(name: &str, inc: u64) -> Gossip {
        Gossip::Left {
            name: NodeName::new(name).unwrap(),
            incarnation: Incarnation(inc),
        }
    }

    #[test]
    fn news_is_sent_a_bounded_number_of_times_least_sent_first() {
        let mut queue = Broadcasts::default();
        queue.push(left("a", 1));
        assert_eq!(queue.take(1000, 2), vec![left("a", 1)]);
        queue.push(left("b", 1));
        // b has been sent less often, so it comes first.
        assert_eq!(queue.take(1000, 2), vec![left("b", 1), left("a", 1)]);
        assert_eq!(queue.take(1000, 2), vec![left("b", 1)]);
        assert!(queue.is_empty());
    }

    #[test]
    fn newer_news_about_a_member_replaces_older() {
        let mut queue = Broadcasts::default();
        queue.push(left("a", 1));
        queue.push(left("a", 2));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.take(1000, 5), vec![left("a", 2)]);
    }

    #[test]
    fn the_byte_budget_is_respected() {
        let mut queue = Broadcasts::default();
        for name in ["a", "b", "c"] {
            queue.push(left(name, 1));
        }
        let one = postcard::experimental::serialized_size(&left("a", 1)).unwrap();
        assert_eq!(queue.take(2 * one, 5).len(), 2);
    }
}
