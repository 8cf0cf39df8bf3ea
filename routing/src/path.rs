//! Path selection (`docs/architecture.md, "Path selection"`): which relays a circuit crosses.
//!
//! Every choice here is made on the node's own copy of the graph, so
//! choosing a path sends nothing a relay could observe, and only edges that
//! both ends sign count (that is what [`Graph`] holds).
//!
//! - **Balanced** (the default): the first hop is the home node; then a
//!   random walk from it over agreement edges, each step choosing a
//!   neighbour with probability proportional to 1/degree (biased away from
//!   high-degree nodes, as Pisces is), never repeating a node; then the
//!   shortest path from where the walk ended to the destination, again
//!   without repeats. At least [`MIN_RELAYS_BALANCED`] relays stand between
//!   the two ends.
//! - **Strong**: the same with at least [`MIN_RELAYS_STRONG`] relays.
//! - **Fast**: the shortest path, over any live first hop. No home node:
//!   whoever picks "fast" has chosen speed over hiding the origin from its
//!   first relay.
//!
//! When no path satisfies the setting, the error says so; the setting is
//! never weakened. A home node that is down is an error too: circuits never
//! fall back to another first hop by themselves.

use rand_core::RngCore;

use crate::crypto::KEY_LEN;
use crate::graph::Graph;

/// Relays between the ends on a balanced path, at least.
pub const MIN_RELAYS_BALANCED: usize = 3;
/// Relays between the ends on a strong path, at least.
pub const MIN_RELAYS_STRONG: usize = 5;
/// Random steps a walk takes from the home node before it looks for the
/// shortest way on (Pisces walks a fixed length too). Without them, whenever
/// the shortest path from the home is long enough the walk took no step and
/// the whole path was fixed by the home and the destination: the simulation
/// found that on three paths in four.
pub const WALK_STEPS: usize = 2;
/// Random walks tried per walk length before giving up.
const WALK_TRIES: usize = 32;

type Key = [u8; KEY_LEN];

/// The anonymity setting (config `anonymity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Anonymity {
    /// The shortest path.
    Fast,
    /// Home node, random walk, then shortest path; at least 3 relays.
    #[default]
    Balanced,
    /// As balanced, with at least 5 relays.
    Strong,
}

impl Anonymity {
    /// Relays a path must have between its ends.
    pub fn min_relays(self) -> usize {
        match self {
            Anonymity::Fast => 0,
            Anonymity::Balanced => MIN_RELAYS_BALANCED,
            Anonymity::Strong => MIN_RELAYS_STRONG,
        }
    }
}

/// Why no path was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// This node or the destination is not in the graph.
    #[error("the destination is not in the graph")]
    UnknownDestination,
    /// There is no home node: no `[home]` and no agreement.
    #[error("no home node: this node has no agreement yet")]
    NoHome,
    /// The home node has no live link.
    #[error("the home node {} is down; circuits wait for it (pin another with [home] key)", hex::encode(&.0[..4]))]
    HomeDown(Key),
    /// The destination is the home node, and the setting needs relays.
    #[error(
        "the destination is this node's home node, the first hop of every circuit, so no {} \
         path, which needs {need} relays between the ends, can reach it",
        format!("{:?}", .0).to_lowercase(),
        need = .1
    )]
    DestinationIsHome(Anonymity, usize),
    /// The graph has no room for a whole random walk from the home node
    /// (for the circuit pool).
    #[error("the graph has no walk of {WALK_STEPS} steps from the home node")]
    NoWalk,
    /// The graph offers no path with enough relays.
    #[error("{}", no_path_message(*.anonymity, *.need, *.best))]
    NoPath {
        /// The setting.
        anonymity: Anonymity,
        /// Relays the setting needs between the ends.
        need: usize,
        /// Relays on the longest path to the destination found through the
        /// home node ([`longest_relays`]); `None` when there is none at all.
        best: Option<usize>,
    },
}

impl PathError {
    /// Whether more agreements, or a weaker setting for this destination,
    /// would give a path: the graph is too small, not broken.
    pub fn too_few_relays(&self) -> bool {
        matches!(
            self,
            PathError::NoPath { .. } | PathError::DestinationIsHome(..)
        )
    }
}

fn no_path_message(anonymity: Anonymity, need: usize, best: Option<usize>) -> String {
    let setting = format!("{anonymity:?}").to_lowercase();
    match best {
        None => format!("the graph has no path to the destination (anonymity = \"{setting}\")"),
        Some(best) => format!(
            "the graph has no {setting} path to the destination: anonymity = \"{setting}\" needs \
             {need} relays between the ends, and the longest path through the home node has {best}"
        ),
    }
}

/// What a path is chosen with.
#[allow(missing_debug_implementations)]
pub struct PathRequest<'a> {
    /// This node.
    pub origin: Key,
    /// The destination node.
    pub destination: Key,
    /// The setting.
    pub anonymity: Anonymity,
    /// The home node (balanced and strong).
    pub home: Option<Key>,
    /// Whether this node has a live link to a peer.
    pub live: &'a dyn Fn(&Key) -> bool,
    /// Edges not to use for now (a relay refused to extend over them).
    pub avoid: &'a dyn Fn(&Key, &Key) -> bool,
}

/// Chooses a path for `req`: the hops after the origin, destination last.
pub fn choose(
    graph: &Graph,
    req: &PathRequest<'_>,
    rng: &mut dyn RngCore,
) -> Result<Vec<Key>, PathError> {
    let (me, dest) = (req.origin, req.destination);
    if graph.get(&me).is_none() || graph.get(&dest).is_none() {
        return Err(PathError::UnknownDestination);
    }
    if req.anonymity == Anonymity::Fast {
        let path = graph
            .shortest_path_where(&me, &dest, |a, b| {
                !(req.avoid)(a, b) && (*a != me || (req.live)(b))
            })
            .filter(|p| p.len() >= 2)
            .ok_or(PathError::NoPath {
                anonymity: Anonymity::Fast,
                need: 0,
                best: None,
            })?;
        return Ok(path[1..].to_vec());
    }
    let home = req.home.ok_or(PathError::NoHome)?;
    if !(req.live)(&home) {
        return Err(PathError::HomeDown(home));
    }
    let need = req.anonymity.min_relays();
    if home == dest {
        return Err(PathError::DestinationIsHome(req.anonymity, need));
    }
    // Fewer random steps only where the graph has no room for them (a dead
    // end near the home); the relay count is never lowered.
    let excluded = [me, dest];
    for steps in (0..=WALK_STEPS).rev() {
        for _ in 0..WALK_TRIES {
            let Some(mut path) = walk(graph, home, steps, &excluded, req.avoid, rng) else {
                continue;
            };
            if let Some(rest) = complete(graph, req, &path, rng) {
                path.extend_from_slice(&rest);
                return Ok(path);
            }
        }
    }
    Err(PathError::NoPath {
        anonymity: req.anonymity,
        need,
        best: longest_relays(graph, req, need),
    })
}

/// Nodes a search for the longest path visits at most, so that a failed
/// choice stays cheap in a big graph (the figure is then a lower bound).
const LONGEST_SEARCH_STEPS: usize = 10_000;

/// Relays on the longest simple path from the origin through its home node
/// to the destination (the home counts; the ends do not), stopping early
/// at `enough`: what an operator is told when a setting needs more. `None`
/// when no such path exists. Depth-first, bounded by
/// [`LONGEST_SEARCH_STEPS`]: exact in the small graphs where paths fail.
pub fn longest_relays(graph: &Graph, req: &PathRequest<'_>, enough: usize) -> Option<usize> {
    let home = req.home?;
    if home == req.destination || home == req.origin {
        return None;
    }
    let mut best = None;
    let mut steps = 0;
    let mut path = vec![req.origin, home];
    // Each frame: the node and the neighbours still to try from it.
    let mut stack = vec![graph.neighbours(&home)];
    while let Some(next) = stack.last_mut() {
        let Some(n) = next.pop() else {
            stack.pop();
            path.pop();
            continue;
        };
        let at = path[path.len() - 1];
        if path.contains(&n) || (req.avoid)(&at, &n) {
            continue;
        }
        steps += 1;
        if n == req.destination {
            let relays = path.len() - 1;
            best = best.max(Some(relays));
            if relays >= enough {
                break;
            }
            continue;
        }
        if steps >= LONGEST_SEARCH_STEPS {
            break;
        }
        path.push(n);
        stack.push(graph.neighbours(&n));
    }
    best
}

/// Chooses a prefix for the circuit pool: the home node and [`WALK_STEPS`]
/// random steps, the part of a balanced or strong path that does not depend
/// on the destination. [`complete`] later finishes it for one. Needs the
/// home node up, as [`choose`] does, and room for the whole walk: the pool
/// never holds a shorter one.
pub fn choose_prefix(
    graph: &Graph,
    origin: Key,
    home: Option<Key>,
    live: &dyn Fn(&Key) -> bool,
    avoid: &dyn Fn(&Key, &Key) -> bool,
    rng: &mut dyn RngCore,
) -> Result<Vec<Key>, PathError> {
    let home = home.ok_or(PathError::NoHome)?;
    if !live(&home) {
        return Err(PathError::HomeDown(home));
    }
    (0..WALK_TRIES)
        .find_map(|_| walk(graph, home, WALK_STEPS, &[origin], avoid, rng))
        .ok_or(PathError::NoWalk)
}

/// The hops after `prefix` (home first) to `req.destination`: more random
/// steps while the relays so far plus the shortest way on are fewer than the
/// setting needs, then that shortest way, destination last. `None` when the
/// prefix holds the destination or no way on exists.
pub fn complete(
    graph: &Graph,
    req: &PathRequest<'_>,
    prefix: &[Key],
    rng: &mut dyn RngCore,
) -> Option<Vec<Key>> {
    let (me, dest) = (req.origin, req.destination);
    if prefix.is_empty() || prefix.contains(&dest) {
        return None;
    }
    let need = req.anonymity.min_relays();
    let mut path = prefix.to_vec();
    loop {
        let at = *path.last()?;
        let used = |k: &Key| *k == me || path.contains(k);
        let rest = graph.shortest_path_where(&at, &dest, |a, b| !(req.avoid)(a, b) && !used(b))?;
        // `rest` runs from `at` to `dest`; its inner nodes are relays.
        if path.len() + rest.len() - 2 >= need {
            path.extend_from_slice(&rest[1..]);
            return Some(path.split_off(prefix.len()));
        }
        let mut excluded = path.clone();
        excluded.extend([me, dest]);
        let next = step(graph, at, &excluded, req.avoid, rng)?;
        path.push(next);
    }
}

/// `steps` random steps from `home`, never onto an `excluded` node or back.
fn walk(
    graph: &Graph,
    home: Key,
    steps: usize,
    excluded: &[Key],
    avoid: &dyn Fn(&Key, &Key) -> bool,
    rng: &mut dyn RngCore,
) -> Option<Vec<Key>> {
    let mut path = vec![home];
    for _ in 0..steps {
        let at = *path.last()?;
        let mut used = path.clone();
        used.extend_from_slice(excluded);
        path.push(step(graph, at, &used, avoid, rng)?);
    }
    Some(path)
}

/// One random-walk step from `at`: a neighbour not in `used`, with
/// probability proportional to 1/its degree.
fn step(
    graph: &Graph,
    at: Key,
    used: &[Key],
    avoid: &dyn Fn(&Key, &Key) -> bool,
    rng: &mut dyn RngCore,
) -> Option<Key> {
    let choices: Vec<(Key, f64)> = graph
        .neighbours(&at)
        .into_iter()
        .filter(|n| !used.contains(n) && !avoid(&at, n))
        .map(|n| {
            let degree = graph.neighbours(&n).len().max(1);
            (n, 1.0 / degree as f64)
        })
        .collect();
    let total: f64 = choices.iter().map(|(_, w)| w).sum();
    if choices.is_empty() || total <= 0.0 {
        return None;
    }
    // A uniform draw in [0, total) from 53 random bits.
    let mut x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for (n, w) in &choices {
        if x < *w {
            return Some(*n);
        }
        x -= w;
    }
    choices.last().map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Identity;
    use crate::graph::Time;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    /// A seeded test RNG.
    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    /// A graph of `n` nodes with `edges` (both ends list each edge).
    fn graph(n: usize, edges: &[(usize, usize)]) -> (Graph, Vec<Key>) {
        let ids: Vec<Identity> = (0..n)
            .map(|i| Identity::from_seed(&[i as u8 + 1; 32]))
            .collect();
        let now = Time::from_unix_secs(1_700_000_000);
        let g = Graph::from_topology(&ids, edges, now).expect("graph");
        (g, ids.iter().map(Identity::public).collect())
    }

    fn req<'a>(
        keys: &[Key],
        from: usize,
        to: usize,
        home: usize,
        a: Anonymity,
        live: &'a dyn Fn(&Key) -> bool,
    ) -> PathRequest<'a> {
        PathRequest {
            origin: keys[from],
            destination: keys[to],
            anonymity: a,
            home: Some(keys[home]),
            live,
            avoid: &|_, _| false,
        }
    }

    /// A 4×4 grid.
    fn grid() -> (Graph, Vec<Key>) {
        let mut e = Vec::new();
        for r in 0..4 {
            for c in 0..4 {
                let i = r * 4 + c;
                if c < 3 {
                    e.push((i, i + 1));
                }
                if r < 3 {
                    e.push((i, i + 4));
                }
            }
        }
        graph(16, &e)
    }

    #[test]
    fn balanced_paths_start_at_home_never_repeat_and_vary() {
        let (g, keys) = grid();
        let live = |_: &Key| true;
        let mut rng = rng(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = choose(
                &g,
                &req(&keys, 0, 15, 1, Anonymity::Balanced, &live),
                &mut rng,
            )
            .expect("path");
            assert_valid(&g, &keys, &p, 15);
            seen.insert(p);
        }
        assert!(seen.len() >= 5, "only {} distinct paths", seen.len());
    }

    /// `p` (from node 0) starts at the home node 1, ends at `dest`, has
    /// enough relays for balanced, repeats no node and follows graph edges.
    fn assert_valid(g: &Graph, keys: &[Key], p: &[Key], dest: usize) {
        assert_eq!(p[0], keys[1]);
        assert_eq!(p.last(), Some(&keys[dest]));
        assert!(p.len() > MIN_RELAYS_BALANCED, "{} relays", p.len() - 1);
        let mut seen = p.to_vec();
        seen.push(keys[0]);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), p.len() + 1, "a node repeats");
        let mut prev = keys[0];
        for k in p {
            assert!(g.edge(&prev, k).is_some(), "not an edge");
            prev = *k;
        }
    }

    #[test]
    fn pooled_prefixes_complete_to_valid_paths() {
        let (g, keys) = grid();
        let live = |_: &Key| true;
        let mut rng = rng(5);
        let (mut completed, mut tried, mut unserved) = (0, 0, 0);
        let mut prefixes = std::collections::HashSet::new();
        for _ in 0..200 {
            let prefix = choose_prefix(&g, keys[0], Some(keys[1]), &live, &|_, _| false, &mut rng)
                .expect("prefix");
            assert_eq!(prefix.len(), WALK_STEPS + 1);
            assert_eq!(prefix[0], keys[1]);
            assert!(!prefix.contains(&keys[0]));
            prefixes.insert(prefix.clone());
            for dest in [15, 12, 3, 6] {
                let r = req(&keys, 0, dest, 1, Anonymity::Balanced, &live);
                tried += 1;
                let Some(rest) = complete(&g, &r, &prefix, &mut rng) else {
                    // On a grid, only a prefix through the destination
                    // cannot serve it.
                    unserved += usize::from(!prefix.contains(&keys[dest]));
                    continue;
                };
                completed += 1;
                let mut p = prefix.clone();
                p.extend_from_slice(&rest);
                assert_valid(&g, &keys, &p, dest);
            }
            // A prefix through the destination cannot serve it.
            let through = req(&keys, 0, 0, 1, Anonymity::Balanced, &live);
            let r = PathRequest {
                destination: prefix[WALK_STEPS],
                ..through
            };
            assert_eq!(complete(&g, &r, &prefix, &mut rng), None);
        }
        assert!(prefixes.len() >= 4, "only {} prefixes", prefixes.len());
        assert_eq!(
            unserved, 0,
            "{completed} of {tried} completed; the rest must hold the destination"
        );
    }

    #[test]
    fn a_prefix_needs_the_home_up_and_room_for_the_walk() {
        let (g, keys) = grid();
        let home = keys[1];
        let mut rng = rng(9);
        let down = move |k: &Key| *k != home;
        let err = choose_prefix(&g, keys[0], Some(home), &down, &|_, _| false, &mut rng);
        assert_eq!(err, Err(PathError::HomeDown(home)));
        let (chain, keys) = graph(3, &[(0, 1), (1, 2)]);
        let err = choose_prefix(
            &chain,
            keys[0],
            Some(keys[1]),
            &|_| true,
            &|_, _| false,
            &mut rng,
        );
        assert_eq!(err, Err(PathError::NoWalk));
    }

    #[test]
    fn settings_are_never_weakened() {
        // A chain 0-1-2-3: from 0 to 3 with home 1 there are 2 relays only.
        let (g, keys) = graph(4, &[(0, 1), (1, 2), (2, 3)]);
        let live = |_: &Key| true;
        let mut rng = rng(1);
        let err = choose(
            &g,
            &req(&keys, 0, 3, 1, Anonymity::Balanced, &live),
            &mut rng,
        )
        .expect_err("no path");
        assert_eq!(
            err,
            PathError::NoPath {
                anonymity: Anonymity::Balanced,
                need: 3,
                best: Some(2)
            }
        );
        assert_eq!(
            err.to_string(),
            "the graph has no balanced path to the destination: anonymity = \"balanced\" needs 3 \
             relays between the ends, and the longest path through the home node has 2"
        );
        assert!(err.too_few_relays());
        let fast =
            choose(&g, &req(&keys, 0, 3, 1, Anonymity::Fast, &live), &mut rng).expect("fast");
        assert_eq!(fast, [keys[1], keys[2], keys[3]]);
    }

    #[test]
    fn a_down_home_is_an_error_not_a_fallback() {
        let (g, keys) = grid();
        let home = keys[1];
        let live = move |k: &Key| *k != home;
        let mut rng = rng(3);
        let err = choose(
            &g,
            &req(&keys, 0, 15, 1, Anonymity::Balanced, &live),
            &mut rng,
        )
        .expect_err("no path");
        assert_eq!(err, PathError::HomeDown(keys[1]));
        // Fast goes around it.
        let p = choose(&g, &req(&keys, 0, 15, 1, Anonymity::Fast, &live), &mut rng).expect("fast");
        assert_eq!(p[0], keys[4]);
    }

    #[test]
    fn the_longest_path_is_reported_not_the_shortest() {
        // 0-1 (home), then 1-2-3-5 and 1-4-5: the shortest way to 5 has 2
        // relays (1, 4), the longest 3 (1, 2, 3), which is what strong is
        // told it lacks.
        let (g, keys) = graph(6, &[(0, 1), (1, 2), (2, 3), (3, 5), (1, 4), (4, 5)]);
        let live = |_: &Key| true;
        let r = req(&keys, 0, 5, 1, Anonymity::Strong, &live);
        assert_eq!(longest_relays(&g, &r, usize::MAX), Some(3));
        assert!(longest_relays(&g, &r, 2) >= Some(2), "stops at enough");
        let err = choose(&g, &r, &mut rng(4)).expect_err("strong needs 5");
        assert_eq!(
            err,
            PathError::NoPath {
                anonymity: Anonymity::Strong,
                need: 5,
                best: Some(3)
            }
        );
        // Cut off from the home node, there is no path at all.
        let (g, keys) = graph(4, &[(0, 1), (2, 3)]);
        let r = req(&keys, 0, 3, 1, Anonymity::Balanced, &live);
        assert_eq!(longest_relays(&g, &r, 3), None);
        let err = choose(&g, &r, &mut rng(5)).expect_err("none");
        assert!(
            err.to_string().contains("no path to the destination"),
            "{err}"
        );
    }
}
