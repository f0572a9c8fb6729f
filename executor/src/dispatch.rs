//! Fair dispatch of step attempts: a process-wide limit, a per-tenant limit, and free
//! slots handed round-robin to the tenants that wait, each tenant's requests first in,
//! first out. One tenant's backlog then delays another tenant's next attempt by at most
//! one slot turnover, however long the backlog is.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// A running attempt's slot; dropping it frees the slot for the next waiting request.
#[derive(Debug)]
pub struct Slot {
    dispatcher: Arc<Shared>,
    tenant: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let grants = {
            let mut state = self.dispatcher.state.lock().expect("dispatcher lock");
            state.total -= 1;
            if let Some(running) = state.running.get_mut(&self.tenant) {
                *running -= 1;
                if *running == 0 {
                    state.running.remove(&self.tenant);
                }
            }
            state.take_grants(&self.dispatcher.limits)
        };
        Dispatcher::deliver(&self.dispatcher, grants);
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    total: usize,
    per_tenant: usize,
}

#[derive(Debug, Default)]
struct State {
    queues: BTreeMap<String, VecDeque<oneshot::Sender<Slot>>>,
    running: HashMap<String, usize>,
    total: usize,
    /// The tenant served last: the next turn starts after it.
    last_served: Option<String>,
}

impl State {
    /// Takes every request that can run now, in round-robin order across tenants.
    fn take_grants(&mut self, limits: &Limits) -> Vec<(String, oneshot::Sender<Slot>)> {
        let mut grants = Vec::new();
        while self.total < limits.total {
            let eligible = |(tenant, queue): &(&String, &VecDeque<_>)| {
                !queue.is_empty()
                    && self.running.get(*tenant).copied().unwrap_or(0) < limits.per_tenant
            };
            let after = self.last_served.clone();
            let next = match &after {
                Some(last) => self
                    .queues
                    .range::<String, _>((
                        std::ops::Bound::Excluded(last),
                        std::ops::Bound::Unbounded,
                    ))
                    .find(eligible)
                    .or_else(|| self.queues.iter().find(eligible)),
                None => self.queues.iter().find(eligible),
            }
            .map(|(tenant, _)| tenant.clone());
            let Some(tenant) = next else { break };
            let queue = self.queues.get_mut(&tenant).expect("found above");
            let request = queue.pop_front().expect("eligible queues are not empty");
            if queue.is_empty() {
                self.queues.remove(&tenant);
            }
            if request.is_closed() {
                continue; // its run stopped waiting
            }
            self.total += 1;
            *self.running.entry(tenant.clone()).or_default() += 1;
            self.last_served = Some(tenant.clone());
            grants.push((tenant, request));
        }
        grants
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    limits: Limits,
}

/// Hands out attempt slots.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

impl Dispatcher {
    /// At most `total` attempts at once, at most `per_tenant` of one tenant.
    pub fn new(total: usize, per_tenant: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                limits: Limits {
                    total: total.max(1),
                    per_tenant: per_tenant.max(1),
                },
            }),
        }
    }

    /// Queues a request for a slot of `tenant`; the receiver gets the slot when it is this
    /// request's turn (dropping the receiver withdraws the request).
    pub fn request(&self, tenant: &str) -> oneshot::Receiver<Slot> {
        let (sender, receiver) = oneshot::channel();
        let grants = {
            let mut state = self.shared.state.lock().expect("dispatcher lock");
            state
                .queues
                .entry(tenant.to_owned())
                .or_default()
                .push_back(sender);
            state.take_grants(&self.shared.limits)
        };
        Self::deliver(&self.shared, grants);
        receiver
    }

    /// Sends granted slots outside the lock: a slot whose receiver is gone is dropped,
    /// which frees it again (and takes the lock).
    fn deliver(shared: &Arc<Shared>, grants: Vec<(String, oneshot::Sender<Slot>)>) {
        for (tenant, sender) in grants {
            let slot = Slot {
                dispatcher: Arc::clone(shared),
                tenant,
            };
            drop(sender.send(slot));
        }
    }

    /// Attempts running now, and requests waiting, per tenant.
    pub fn load(&self) -> (usize, BTreeMap<String, (usize, usize)>) {
        let state = self.shared.state.lock().expect("dispatcher lock");
        let mut per_tenant: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (tenant, running) in &state.running {
            per_tenant.entry(tenant.clone()).or_default().0 = *running;
        }
        for (tenant, queue) in &state.queues {
            per_tenant.entry(tenant.clone()).or_default().1 = queue.len();
        }
        (state.total, per_tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_go_round_robin_and_respect_both_limits() {
        let dispatcher = Dispatcher::new(2, 1);
        let mut a: Vec<_> = (0..3).map(|_| dispatcher.request("a")).collect();
        let mut b = dispatcher.request("b");
        // One for a (per-tenant limit 1), one for b.
        let first_a = a[0].try_recv().expect("a's first request runs");
        assert!(a[1].try_recv().is_err());
        let first_b = b.try_recv().expect("b runs beside a");
        assert_eq!(dispatcher.load().0, 2);
        drop(first_b);
        assert!(a[1].try_recv().is_err(), "a is still at its tenant limit");
        drop(first_a);
        let _second_a = a[1].try_recv().expect("a's next request runs");
        assert_eq!(dispatcher.load().1["a"], (1, 1));
    }

    #[tokio::test]
    async fn a_late_tenant_is_served_before_a_long_backlog_drains() {
        let dispatcher = Dispatcher::new(1, 1);
        let mut backlog: VecDeque<_> = (0..100).map(|_| dispatcher.request("a")).collect();
        let running = backlog.pop_front().unwrap().try_recv().unwrap();
        let mut late = dispatcher.request("b");
        drop(running);
        assert!(late.try_recv().is_ok(), "b gets the very next slot");
    }

    #[tokio::test]
    async fn a_withdrawn_request_does_not_hold_a_slot() {
        let dispatcher = Dispatcher::new(1, 1);
        let running = dispatcher.request("a").try_recv().unwrap();
        drop(dispatcher.request("a"));
        let mut next = dispatcher.request("a");
        drop(running);
        assert!(next.try_recv().is_ok());
    }
}
