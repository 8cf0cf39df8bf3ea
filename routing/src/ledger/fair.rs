//! Weighted fair queueing of the cells waiting for one link
//! (docs/architecture.md, "Ledgers"): each cell belongs to a *flow*, the
//! neighbour that pays for it (the one its circuit came from, or this node
//! for its own), and flows take turns, each sending as many cells per turn
//! as its weight. The weight comes from the payer's standing in its ledger,
//! so when the link is busy creditors go first and debtors last; when it is
//! idle, nothing waits and every flow goes at full speed.
//!
//! Control items (graph records, ledger reports) go before any cell; one
//! last item (a link's `moved` marker) goes once everything else has.
//! Sans-IO: the driver pushes and pops.

use std::collections::{HashMap, VecDeque};

/// Who pays for a cell: a neighbour's key, or this node's own.
pub type Flow = [u8; 32];

#[derive(Debug)]
struct FlowQueue<T> {
    items: VecDeque<T>,
    weight: u32,
}

/// The queue of one link. See the [module docs](self).
#[derive(Debug)]
pub struct FairQueue<T> {
    control: VecDeque<T>,
    flows: HashMap<Flow, FlowQueue<T>>,
    /// Flows with cells waiting, in turn order; the head is being served.
    active: VecDeque<Flow>,
    /// Cells the head flow may still send in its turn.
    turn_left: u32,
    last: Option<T>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            control: VecDeque::new(),
            flows: HashMap::new(),
            active: VecDeque::new(),
            turn_left: 0,
            last: None,
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Queues a cell of `flow`, whose weight is now `weight` (at least 1).
    pub fn push(&mut self, flow: Flow, weight: u32, item: T) {
        let q = self.flows.entry(flow).or_insert_with(|| FlowQueue {
            items: VecDeque::new(),
            weight,
        });
        q.weight = weight.max(1);
        if q.items.is_empty() {
            self.active.push_back(flow);
        }
        q.items.push_back(item);
        self.len += 1;
    }

    /// Queues an item that goes before every cell (in order among control
    /// items).
    pub fn push_control(&mut self, item: T) {
        self.control.push_back(item);
        self.len += 1;
    }

    /// Sets the item that goes once everything queued has gone, and after it
    /// nothing (a replaced one is returned).
    pub fn push_last(&mut self, item: T) -> Option<T> {
        let old = self.last.replace(item);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Cells of `flow` waiting.
    pub fn flow_len(&self, flow: &Flow) -> usize {
        self.flows.get(flow).map_or(0, |q| q.items.len())
    }

    /// The next item to send.
    pub fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.control.pop_front() {
            self.len -= 1;
            return Some(item);
        }
        while let Some(&flow) = self.active.front() {
            let Some(q) = self.flows.get_mut(&flow) else {
                self.active.pop_front();
                self.turn_left = 0;
                continue;
            };
            if self.turn_left == 0 {
                self.turn_left = q.weight;
            }
            let Some(item) = q.items.pop_front() else {
                self.flows.remove(&flow);
                self.active.pop_front();
                self.turn_left = 0;
                continue;
            };
            self.turn_left -= 1;
            if q.items.is_empty() {
                self.flows.remove(&flow);
                self.active.pop_front();
                self.turn_left = 0;
            } else if self.turn_left == 0 {
                self.active.rotate_left(1);
            }
            self.len -= 1;
            return Some(item);
        }
        let last = self.last.take();
        if last.is_some() {
            self.len -= 1;
        }
        last
    }

    /// Drops every cell (not control items) for which `drop` says so, and
    /// returns how many went: a circuit closed while its cells wait.
    pub fn remove_cells(&mut self, mut drop: impl FnMut(&T) -> bool) -> usize {
        let mut removed = 0;
        for q in self.flows.values_mut() {
            let before = q.items.len();
            q.items.retain(|item| !drop(item));
            removed += before - q.items.len();
        }
        // Emptied flows leave the turn order.
        let flows = &self.flows;
        self.active
            .retain(|f| flows.get(f).is_some_and(|q| !q.items.is_empty()));
        self.flows.retain(|_, q| !q.items.is_empty());
        if self.active.front().is_none() {
            self.turn_left = 0;
        }
        self.len -= removed;
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const F: Flow = [1; 32];
    const G: Flow = [2; 32];

    #[test]
    fn removed_cells_leave_the_rest_in_order() {
        let mut q = FairQueue::default();
        for i in 0..10 {
            q.push(F, 1, ('f', i));
            q.push(G, 1, ('g', i));
        }
        q.push_control(('c', 0));
        assert_eq!(q.remove_cells(|&(k, _)| k == 'g'), 10);
        assert_eq!(q.remove_cells(|&(k, _)| k == 'c'), 0, "control items stay");
        assert_eq!(q.len(), 11);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        let mut want = vec![('c', 0)];
        want.extend((0..10).map(|i| ('f', i)));
        assert_eq!(order, want);
        assert!(q.is_empty());
    }

    #[test]
    fn a_busy_queue_serves_flows_by_weight() {
        let mut q = FairQueue::default();
        for i in 0..900 {
            q.push(F, 1, ('f', i));
            q.push(G, 8, ('g', i));
        }
        // While both have cells, G gets 8 of every 9.
        let first: Vec<char> = (0..900).map(|_| q.pop().expect("item").0).collect();
        let g = first.iter().filter(|&&c| c == 'g').count();
        assert_eq!(g, 800, "G's share of the first 900");
        // Each flow's own order is kept.
        let mut last_f = None;
        while let Some((c, i)) = q.pop() {
            if c == 'f' {
                assert!(last_f < Some(i));
                last_f = Some(i);
            }
        }
        assert!(q.is_empty());
    }

    #[test]
    fn an_idle_queue_serves_one_flow_alone_at_once() {
        let mut q = FairQueue::default();
        for i in 0..10 {
            q.push(F, 1, i);
        }
        let got: Vec<i32> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn control_goes_first_and_the_last_item_last() {
        let mut q = FairQueue::default();
        q.push(F, 4, "cell 1");
        assert_eq!(q.push_last("moved"), None);
        q.push(G, 4, "cell 2");
        q.push_control("report");
        assert_eq!(q.len(), 4);
        let got: Vec<&str> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(got, ["report", "cell 1", "cell 2", "moved"]);
        assert_eq!(q.len(), 0);
    }

    proptest! {
        /// Whatever is pushed comes out exactly once, each flow in its own
        /// order, and `len` counts what waits.
        #[test]
        fn everything_comes_out_once_in_flow_order(
            ops in proptest::collection::vec((0u8..4, 1u32..20, any::<bool>()), 0..300)
        ) {
            let mut q = FairQueue::default();
            let mut pushed = 0usize;
            let mut popped = Vec::new();
            for (i, (flow, weight, pop)) in ops.into_iter().enumerate() {
                if pop {
                    if let Some(x) = q.pop() { popped.push(x) }
                } else {
                    q.push([flow; 32], weight, (flow, i));
                    pushed += 1;
                }
                prop_assert_eq!(q.len(), pushed - popped.len());
            }
            while let Some(x) = q.pop() { popped.push(x) }
            prop_assert_eq!(popped.len(), pushed);
            for f in 0..4u8 {
                let order: Vec<usize> = popped.iter().filter(|x| x.0 == f).map(|x| x.1).collect();
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
