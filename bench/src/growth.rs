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
    /// The same subject on a node kept at the first level's pods, sampled in the same turns (a compared pass's).
    pub alongside: Option<Alongside>,
    pub rules: usize,
    /// Each plugin's calls at this level, by binary and verb (a chain's only).
    pub calls: BTreeMap<String, Samples>,
}

/// One more pod's ADD and DEL on a node kept at the first level. The levels are sampled one after the other, so a
/// drift of the machine's speed between them shows as growth; against this node, sampled in the same turns, it cancels.
pub struct Alongside {
    pub add: Samples,
    pub del: Samples,
}

struct Node<'a> {
    chain: &'a dyn Subject,
    netns: Netns,
    pods: Vec<(PodNetns, String, Added)>,
    /// Stays at the first level's pods, beside the loaded node with this index.
    kept_for: Option<usize>,
}

impl<'a> Node<'a> {
    fn new(chain: &'a dyn Subject, kept_for: Option<usize>) -> Self {
        Node { chain, netns: Netns::new(), pods: Vec::new(), kept_for }
    }

    fn fill(&mut self, live: usize) {
        while self.pods.len() < live {
            let (pod, id) = (PodNetns::new(), format!("live-{}", self.pods.len()));
            let (_, added) = self.chain.add(&self.netns, &id, &pod);
            self.pods.push((pod, id, added));
        }
    }
}

/// Subjects measured together at each level: their samples interleave, in an order shuffled each round.
pub struct Pass<'a> {
    pub subjects: Vec<&'a dyn Subject>,
    pub samples: usize,
    /// Empty, or a twin of each subject (the same setup with a state of its own: its own host-local store) kept
    /// at the first level and sampled in the same turns.
    pub alongside: Vec<&'a dyn Subject>,
}

/// Each pass's subjects' levels, in the order of the passes and their subjects. At each level every subject is
/// brought to that many live pods, then the passes sample one after the other: a subject only for comparison (the
/// reference's, whose iptables work at 1000 pods slows whatever runs next by 0.4–0.5 ms) goes in a pass of its
/// own, so that it adds nothing to the spread of the ones compared.
pub fn run(passes: &[Pass], levels: &[usize]) -> Vec<Vec<Level>> {
    let first_level = levels.first().copied().unwrap_or(0);
    // Per pass, the range of its nodes: its subjects' loaded nodes, then their twins' kept ones.
    let (mut nodes, mut ranges, mut loaded) = (Vec::new(), Vec::new(), Vec::new());
    for pass in passes {
        let start = nodes.len();
        nodes.extend(pass.subjects.iter().map(|s| Node::new(*s, None)));
        loaded.extend(start..nodes.len());
        nodes.extend(pass.alongside.iter().enumerate().map(|(i, twin)| Node::new(*twin, Some(start + i))));
        ranges.push(start..nodes.len());
    }
    let mut out: Vec<Vec<Level>> = loaded.iter().map(|_| Vec::new()).collect();
    for &live in levels {
        for node in nodes.iter_mut() {
            node.fill(if node.kept_for.is_some() { first_level } else { live });
            eprintln!("  {}: {} live pods", node.chain.label(), node.pods.len());
            node.chain.take_calls();
        }
        let rules: Vec<usize> = nodes.iter().map(|n| rule_count(&n.netns)).collect();
        let (mut add, mut del) = (vec![Samples::default(); nodes.len()], vec![Samples::default(); nodes.len()]);
        for (pass, members) in passes.iter().zip(&ranges) {
            for s in 0..pass.samples {
                for j in round_order(s, members.len()).into_iter().map(|k| members.start + k) {
                    let node = &nodes[j];
                    let (pod, id) = (PodNetns::new(), format!("extra-{live}-{s}"));
                    let (took, added) = node.chain.add(&node.netns, &id, &pod);
                    add[j].push(took);
                    del[j].push(node.chain.del(&node.netns, &id, &pod, &added));
                }
            }
        }
        for (series, &j) in out.iter_mut().zip(&loaded) {
            let kept = nodes.iter().position(|n| n.kept_for == Some(j));
            series.push(Level {
                live,
                add: std::mem::take(&mut add[j]),
                del: std::mem::take(&mut del[j]),
                alongside: kept
                    .map(|k| Alongside { add: std::mem::take(&mut add[k]), del: std::mem::take(&mut del[k]) }),
                rules: rules[j],
                calls: nodes[j].chain.take_calls(),
            });
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
