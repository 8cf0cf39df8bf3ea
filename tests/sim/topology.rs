//! Random agreement topologies for the simulation.

use std::collections::BTreeSet;

use super::Rng;

/// A connected random graph on `n` nodes: a ring (so it is connected) plus
/// `chords_per_node` random chords from each node, without repeats or
/// self-loops. The mean degree is about `2 + 2 × chords_per_node`; 3 chords
/// give degree 8, the scale target's (the graph figures of
/// `docs/architecture.md, "Testing"`). Edges are `(a, b)` with
/// `a < b`, sorted.
pub fn ring_with_chords(n: usize, chords_per_node: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut edges = BTreeSet::new();
    if n < 2 {
        return Vec::new();
    }
    for i in 0..n {
        let j = (i + 1) % n;
        if i != j {
            edges.insert((i.min(j), i.max(j)));
        }
    }
    for i in 0..n {
        for _ in 0..chords_per_node {
            // A few tries; in a small graph a node may run out of new peers.
            for _ in 0..16 {
                let j = rng.index(n);
                if j != i && edges.insert((i.min(j), i.max(j))) {
                    break;
                }
            }
        }
    }
    edges.into_iter().collect()
}

/// Whether `edges` connect all `n` nodes (union–find).
pub fn is_connected(n: usize, edges: &[(usize, usize)]) -> bool {
    fn root(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut parent: Vec<usize> = (0..n).collect();
    let mut parts = n;
    for &(a, b) in edges {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        if ra != rb {
            parent[ra] = rb;
            parts -= 1;
        }
    }
    parts <= 1
}

/// Each node's neighbours in `edges`, sorted.
pub fn neighbours(n: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut adj = vec![Vec::new(); n];
    for &(a, b) in edges {
        adj[a].push(b);
        adj[b].push(a);
    }
    for list in &mut adj {
        list.sort_unstable();
    }
    adj
}
