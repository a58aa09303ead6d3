//! One intake statement per order at a time in this process. Requests for one order are
//! serialized by its stream row anyway (`commands::record_next` locks it); without a gate, a storm
//! on one order parks a queue of requests on that row lock, each holding a pool connection, and
//! the worker's update of the order's progress waits behind the whole queue. With it, the storm
//! waits here, in memory, and only so deep: the pool stays free for other orders, and the worker
//! meets at most one request per API process on the row.
//!
//! A gate belongs to the order *as the sending client names it*: another client's requests for
//! the same order id (all of which answer 404) wait at a gate of their own, so they cannot take
//! the owner's turn or room.

use orderflow_domain::{ClientId, OrderId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// An order's gate and how many requests hold or wait for it.
#[derive(Default)]
struct Gate {
    turn: Arc<AsyncMutex<()>>,
    requests: usize,
}

/// The orders with a request at their gate; an order's entry goes when its last request leaves.
#[derive(Clone, Default)]
pub struct OrderGates {
    gates: Arc<Mutex<HashMap<(ClientId, OrderId), Gate>>>,
}

impl OrderGates {
    /// Waits until no other request of this process is past the gate of `order` as `client`
    /// names it; `None` at once if `max_queue` requests already hold or wait for it.
    pub async fn enter(&self, client: ClientId, order: OrderId, max_queue: usize) -> Option<Pass> {
        let order = (client, order);
        let turn = {
            let mut gates = self.gates.lock().expect("the gates lock is never poisoned");
            let gate = gates.entry(order).or_default();
            if gate.requests >= max_queue {
                return None;
            }
            gate.requests += 1;
            gate.turn.clone()
        };
        // Counted from here on: a request dropped while it waits (its client hung up) is
        // uncounted by the pass's drop.
        let mut pass = Pass {
            turn: None,
            gates: self.clone(),
            order,
        };
        pass.turn = Some(turn.lock_owned().await);
        Some(pass)
    }

    /// Orders with a request at their gate.
    pub fn len(&self) -> usize {
        self.gates.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request at an order's gate (past it once `turn` is held); dropping it lets the next one in.
pub struct Pass {
    turn: Option<OwnedMutexGuard<()>>,
    gates: OrderGates,
    order: (ClientId, OrderId),
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut gates = self
            .gates
            .gates
            .lock()
            .expect("the gates lock is never poisoned");
        drop(self.turn.take());
        if let Some(gate) = gates.get_mut(&self.order) {
            gate.requests -= 1;
            if gate.requests == 0 {
                gates.remove(&self.order);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_request_per_order_passes_and_the_entry_goes_with_the_last() {
        let gates = OrderGates::default();
        let client = ClientId::new();
        let (hot, cold) = (OrderId::new(), OrderId::new());
        let first = gates.enter(client, hot, 8).await.expect("room");
        // Another order is not held up.
        let other = gates.enter(client, cold, 8).await.expect("room");
        assert_eq!(gates.len(), 2);
        drop(other);
        assert_eq!(gates.len(), 1);

        // The second request on the hot order waits until the first leaves.
        let waiting = tokio::spawn({
            let gates = gates.clone();
            async move { gates.enter(client, hot, 8).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the second request passes once the first leaves")
            .expect("no panic")
            .expect("room");
        // Still held by the second: the entry stays until it leaves.
        assert_eq!(gates.len(), 1);
        drop(second);
        assert!(gates.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_turns_a_request_away_at_once() {
        let gates = OrderGates::default();
        let (client, order) = (ClientId::new(), OrderId::new());
        let first = gates.enter(client, order, 2).await.expect("room");
        let mut second = Box::pin(gates.enter(client, order, 2));
        assert!(futures_util::poll!(second.as_mut()).is_pending());
        // One holds the gate and one waits: a third is turned away without waiting.
        assert!(gates.enter(client, order, 2).await.is_none());
        drop(first);
        let second = second.await.expect("room");
        // A place is free again.
        let third = Box::pin(gates.enter(client, order, 2));
        drop(second);
        assert!(third.await.is_some());
        assert!(gates.is_empty());
    }

    #[tokio::test]
    async fn a_request_that_gives_up_waiting_leaves_no_entry_behind() {
        let gates = OrderGates::default();
        let (client, order) = (ClientId::new(), OrderId::new());

        // Gives up while the first still holds the gate.
        let first = gates.enter(client, order, 8).await.expect("room");
        let abandoned =
            tokio::time::timeout(Duration::from_millis(1), gates.enter(client, order, 8)).await;
        assert!(abandoned.is_err());
        drop(first);
        assert!(gates.is_empty());

        // Gives up after the first has handed it the gate, before it noticed.
        let first = gates.enter(client, order, 8).await.expect("room");
        let mut waiting = Box::pin(gates.enter(client, order, 8));
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        drop(first);
        assert_eq!(gates.len(), 1);
        drop(waiting);
        assert!(gates.is_empty());
    }

    #[tokio::test]
    async fn another_clients_requests_for_the_same_order_wait_at_a_gate_of_their_own() {
        let gates = OrderGates::default();
        let (owner, stranger, order) = (ClientId::new(), ClientId::new(), OrderId::new());
        // The stranger holds its gate for the order, one more of its requests waits, and a third
        // is turned away: its queue is full.
        let held = gates.enter(stranger, order, 2).await.expect("room");
        let mut waiting = Box::pin(gates.enter(stranger, order, 2));
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        assert!(gates.enter(stranger, order, 2).await.is_none());
        // The owner walks straight in.
        let owner = tokio::time::timeout(Duration::from_secs(5), gates.enter(owner, order, 2))
            .await
            .expect("the owner does not wait behind the stranger");
        assert!(owner.is_some());
        drop((held, waiting, owner));
        assert!(gates.is_empty());
    }
}
