//! The simulator's agenda: a min-heap of pending things keyed by (true time,
//! insertion sequence number).
//!
//! Hand-written rather than `std::collections::BinaryHeap` for debug-build
//! speed: the heap holds small `Copy` keys compared with plain integer
//! operators, and the payloads (messages can be large) sit still in a slab
//! instead of being moved on every sift. Tests run unoptimised, and this is
//! the innermost loop of every simulation.
//!
//! Ties in time pop in insertion order, which is what makes a run
//! deterministic.

/// A min-heap of `T` by (time, insertion order).
pub(crate) struct TimeQueue<T> {
    /// Binary min-heap of keys: `heap[i]` is never after its children.
    heap: Vec<Key>,
    /// Payloads, indexed by `Key::slot`; `None` when the slot is free.
    slots: Vec<Option<T>>,
    /// Free slot indices, reused before the slab grows.
    free: Vec<usize>,
    next_seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct Key {
    /// Time in the high 64 bits, insertion sequence number in the low 64: one
    /// integer comparison orders by time, then insertion.
    order: u128,
    slot: usize,
}

impl Key {
    fn at(&self) -> u64 {
        (self.order >> 64) as u64
    }
}

impl<T> TimeQueue<T> {
    pub(crate) fn new() -> Self {
        Self {
            heap: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
            next_seq: 0,
        }
    }

    /// Adds `item` at time `at`, after everything already queued for `at`.
    pub(crate) fn push(&mut self, at: u64, item: T) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(item);
                slot
            }
            None => {
                self.slots.push(Some(item));
                self.slots.len() - 1
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let order = (u128::from(at) << 64) | u128::from(seq);
        self.heap.push(Key { order, slot });
        self.sift_up(self.heap.len() - 1);
    }

    /// The earliest entry, without removing it.
    pub(crate) fn peek(&self) -> Option<(u64, &T)> {
        let key = self.heap.first()?;
        // Invariant: every key in the heap names an occupied slot.
        self.slots[key.slot].as_ref().map(|item| (key.at(), item))
    }

    /// Removes and returns the earliest entry.
    pub(crate) fn pop(&mut self) -> Option<(u64, T)> {
        let last = self.heap.pop()?;
        let key = if self.heap.is_empty() {
            last
        } else {
            let root = self.heap[0];
            self.heap[0] = last;
            self.sift_down(0);
            root
        };
        self.free.push(key.slot);
        // Invariant: every key in the heap names an occupied slot.
        self.slots[key.slot].take().map(|item| (key.at(), item))
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    // The sifts work on a slice with the comparison written out: in an
    // unoptimised build, `Vec` indexing and small methods are real calls.

    fn sift_up(&mut self, mut index: usize) {
        let heap = &mut self.heap[..];
        let key = heap[index];
        while index > 0 {
            let parent = (index - 1) / 2;
            if key.order >= heap[parent].order {
                break;
            }
            heap[index] = heap[parent];
            index = parent;
        }
        heap[index] = key;
    }

    fn sift_down(&mut self, mut index: usize) {
        let heap = &mut self.heap[..];
        let key = heap[index];
        let len = heap.len();
        loop {
            let left = 2 * index + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child = if right < len && heap[right].order < heap[left].order {
                right
            } else {
                left
            };
            if heap[child].order >= key.order {
                break;
            }
            heap[index] = heap[child];
            index = child;
        }
        heap[index] = key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_pop_by_time_then_insertion_order() {
        let mut queue = TimeQueue::new();
        for (at, name) in [
            (5, "e"),
            (1, "a"),
            (3, "c1"),
            (3, "c2"),
            (0, "z"),
            (3, "c3"),
        ] {
            queue.push(at, name);
        }
        assert_eq!(queue.peek(), Some((0, &"z")));
        let order: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(
            order,
            [
                (0, "z"),
                (1, "a"),
                (3, "c1"),
                (3, "c2"),
                (3, "c3"),
                (5, "e")
            ]
        );
        assert_eq!(queue.pop(), None);
    }

    #[test]
    fn a_random_workload_matches_a_sorted_reference() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut queue = TimeQueue::new();
        let mut reference = std::collections::BTreeSet::new(); // (at, seq)
        let mut seq = 0u64;
        for _ in 0..20_000 {
            if rng.u8(0..3) > 0 || reference.is_empty() {
                let at = rng.u64(0..100);
                queue.push(at, seq);
                reference.insert((at, seq));
                seq += 1;
            } else {
                assert_eq!(queue.pop(), reference.pop_first());
            }
            assert_eq!(queue.len(), reference.len());
        }
        assert!(queue.slots.len() < 20_000, "slots are reused");
    }
}
