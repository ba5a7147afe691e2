//! Execution order: the nodes that feed an output node, in topological order
//! (ties broken by file order, so runs are reproducible).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use petgraph::Direction;
use petgraph::visit::{Dfs, Reversed};

use crate::ValidGraph;

/// Indices into `g.nodes` of the nodes to run, producers before consumers.
/// Nodes that feed no output node are left out.
pub fn execution_order(g: &ValidGraph) -> Vec<usize> {
    let n = g.nodes.len();
    let mut needed = vec![false; n];
    let reversed = Reversed(&g.dag);
    for ix in g.dag.node_indices() {
        if !g.nodes[g.dag[ix]].kind.schema().output_node {
            continue;
        }
        let mut dfs = Dfs::new(reversed, ix);
        while let Some(a) = dfs.next(reversed) {
            needed[g.dag[a]] = true;
        }
    }
    // Kahn's algorithm over the needed subgraph with a min-heap on file order.
    let mut indegree = vec![0usize; n];
    for ix in g.dag.node_indices() {
        let i = g.dag[ix];
        if needed[i] {
            indegree[i] = g.dag.neighbors_directed(ix, Direction::Incoming).filter(|p| needed[g.dag[*p]]).count();
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| needed[i] && indegree[i] == 0).map(Reverse).collect();
    let index_of: Vec<_> = g.dag.node_indices().collect();
    let mut order = Vec::new();
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for m in g.dag.neighbors_directed(index_of[i], Direction::Outgoing) {
            let j = g.dag[m];
            // Consumers that feed no output node are not scheduled.
            if !needed[j] {
                continue;
            }
            // Parallel edges (two links between one pair) appear once per edge.
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(Reverse(j));
            }
        }
    }
    order
}
