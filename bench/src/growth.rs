//! Cost growth: ADD and DEL latency of one more pod on a node that already has 1, 100, 500, 1000… live pods,
//! for each chain and for the floor (nodes side by side, the compared ones' samples interleaved), and the nftables
//! rules at each level.

use crate::pod::PodNetns;
use crate::setups::{Added, Subject};
use crate::stats::{round_order, Samples};
use integration::Netns;
use std::collections::BTreeMap;

pub struct Level {
    pub live: usize,
    pub add: Samples,
    pub del: Samples,
    pub rules: usize,
    /// Each plugin's calls at this level, by binary and verb (a chain's only).
    pub calls: BTreeMap<String, Samples>,
}

struct Node<'a> {
    chain: &'a dyn Subject,
    netns: Netns,
    pods: Vec<(PodNetns, String, Added)>,
}

/// Subjects measured together at each level: their samples interleave, in an order shuffled each round.
pub struct Pass<'a> {
    pub subjects: Vec<&'a dyn Subject>,
    pub samples: usize,
}

/// Each pass's subjects' levels, in the order of the passes and their subjects. At each level every subject is
/// brought to that many live pods, then the passes sample one after the other: a subject only for comparison (the
/// reference's, whose iptables work at 1000 pods slows whatever runs next by 0.4–0.5 ms) goes in a pass of its
/// own, so that it adds nothing to the spread of the ones compared.
pub fn run(passes: &[Pass], levels: &[usize]) -> Vec<Vec<Level>> {
    let mut nodes: Vec<Node> = passes
        .iter()
        .flat_map(|p| &p.subjects)
        .map(|c| Node { chain: *c, netns: Netns::new(), pods: Vec::new() })
        .collect();
    let mut out: Vec<Vec<Level>> = nodes.iter().map(|_| Vec::new()).collect();
    for &live in levels {
        for node in nodes.iter_mut() {
            while node.pods.len() < live {
                let (pod, id) = (PodNetns::new(), format!("live-{}", node.pods.len()));
                let (_, added) = node.chain.add(&node.netns, &id, &pod);
                node.pods.push((pod, id, added));
            }
            eprintln!("  {}: {live} live pods", node.chain.label());
            node.chain.take_calls();
        }
        let mut levels: Vec<Level> = nodes
            .iter()
            .map(|n| Level {
                live,
                add: Samples::default(),
                del: Samples::default(),
                rules: rule_count(&n.netns),
                calls: BTreeMap::new(),
            })
            .collect();
        let mut first = 0;
        for pass in passes {
            let members = first..first + pass.subjects.len();
            for s in 0..pass.samples {
                for j in round_order(s, members.len()).into_iter().map(|k| members.start + k) {
                    let (node, level) = (&nodes[j], &mut levels[j]);
                    let (pod, id) = (PodNetns::new(), format!("extra-{live}-{s}"));
                    let (add, added) = node.chain.add(&node.netns, &id, &pod);
                    level.add.push(add);
                    level.del.push(node.chain.del(&node.netns, &id, &pod, &added));
                }
            }
            first = members.end;
        }
        for ((series, mut level), node) in out.iter_mut().zip(levels).zip(&nodes) {
            level.calls = node.chain.take_calls();
            series.push(level);
        }
    }
    for node in &nodes {
        // Not timed: two at a time, to get the reference's 1000 DELs done sooner.
        std::thread::scope(|scope| {
            for half in node.pods.chunks(node.pods.len().div_ceil(2).max(1)) {
                let node = &*node;
                scope.spawn(move || {
                    for (pod, id, added) in half {
                        node.chain.del(&node.netns, id, pod, added);
                    }
                });
            }
        });
    }
    out
}

/// nftables rules in the node netns, whoever made them (iptables-nft rules included).
pub fn rule_count(node: &Netns) -> usize {
    let ruleset = node.nft_json();
    ruleset["nftables"].as_array().map_or(0, |objects| objects.iter().filter(|o| o.get("rule").is_some()).count())
}
