//! The world's deliveries still on their way, earliest first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use freshen_core::time::MonoTime;

/// Deliveries due at simulated instants, handed out earliest first and, at
/// one instant, in the order they were scheduled: what makes a seed replay.
///
/// The order is a heap of small keys and the deliveries sit in slots that
/// are reused, so that scheduling and delivering move a few bytes, not the
/// delivery itself (an ordered map of deliveries moved whole values around
/// its nodes on every delivery: a tenth of a tier-1 world's instructions).
#[derive(Debug)]
pub(super) struct Queue<T> {
    order: BinaryHeap<Reverse<(MonoTime, u64, usize)>>,
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    scheduled: u64,
}

impl<T> Queue<T> {
    pub(super) fn new() -> Self {
        Self { order: BinaryHeap::new(), slots: Vec::new(), free: Vec::new(), scheduled: 0 }
    }

    pub(super) fn push(&mut self, at: MonoTime, item: T) {
        self.scheduled += 1;
        let reused = self.free.pop().and_then(|slot| self.slots.get_mut(slot).map(|place| (slot, place)));
        let slot = match reused {
            Some((slot, place)) => {
                *place = Some(item);
                slot
            }
            None => {
                self.slots.push(Some(item));
                self.slots.len() - 1
            }
        };
        self.order.push(Reverse((at, self.scheduled, slot)));
    }

    /// When the next delivery is due.
    pub(super) fn next_at(&self) -> Option<MonoTime> {
        self.order.peek().map(|Reverse((at, ..))| *at)
    }

    /// The next delivery, taken out.
    pub(super) fn pop(&mut self) -> Option<T> {
        let Reverse((_, _, slot)) = self.order.pop()?;
        self.free.push(slot);
        self.slots.get_mut(slot).and_then(Option::take)
    }

    /// When the earliest delivery that `wanted` picks is due.
    pub(super) fn earliest(&self, wanted: impl Fn(&T) -> bool) -> Option<MonoTime> {
        self.order
            .iter()
            .map(|Reverse(key)| key)
            .filter(|(_, _, slot)| self.slots.get(*slot).and_then(Option::as_ref).is_some_and(&wanted))
            .min()
            .map(|(at, ..)| *at)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(millis: u64) -> MonoTime {
        MonoTime::ZERO.saturating_add(Duration::from_millis(millis))
    }

    #[test]
    fn earliest_first_and_one_instant_in_the_order_scheduled() {
        let mut queue = Queue::new();
        for (millis, item) in [(30, "c"), (10, "a1"), (20, "b"), (10, "a2"), (10, "a3")] {
            queue.push(at(millis), item);
        }
        assert_eq!(queue.next_at(), Some(at(10)));
        assert_eq!(queue.earliest(|item| item.starts_with('b') || item.starts_with('c')), Some(at(20)));
        let mut delivered = vec![queue.pop().unwrap(), queue.pop().unwrap()];
        // A slot freed by a delivery is reused, and the order still holds.
        queue.push(at(10), "a4");
        queue.push(at(5), "first");
        while let Some(item) = queue.pop() {
            delivered.push(item);
        }
        assert_eq!(delivered, ["a1", "a2", "first", "a3", "a4", "b", "c"]);
        assert_eq!((queue.next_at(), queue.earliest(|_| true)), (None, None));
        assert!(queue.slots.len() <= 5, "slots are reused: {}", queue.slots.len());
    }
}
