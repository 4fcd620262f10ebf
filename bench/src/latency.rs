//! ADD and DEL latency of each subject, interleaved in an order shuffled each round, so that machine drift and what
//! ran just before hit all alike.
//! Each subject has its own node netns; every sample is a fresh pod netns, added then deleted.

use crate::pod::PodNetns;
use crate::setups::Subject;
use crate::stats::{round_order, Samples};
use integration::Netns;

pub struct Latency {
    pub add: Samples,
    pub del: Samples,
}

pub fn run(subjects: &[&dyn Subject], samples: usize, warmup: usize) -> Vec<Latency> {
    let nodes: Vec<Netns> = subjects.iter().map(|_| Netns::new()).collect();
    for (subject, node) in subjects.iter().zip(&nodes) {
        subject.prepare(node);
    }
    let mut out: Vec<Latency> =
        subjects.iter().map(|_| Latency { add: Samples::default(), del: Samples::default() }).collect();
    for i in 0..warmup + samples {
        // A veth delete waits for every RCU callback queued before it: in a fixed order, whoever runs right after a
        // chain that churns iptables would always pay for it, so the order is shuffled each round.
        for j in round_order(i, subjects.len()) {
            let (subject, node, lat) = (subjects[j], &nodes[j], &mut out[j]);
            let pod = PodNetns::new();
            let id = format!("lat-{i}");
            let (add, added) = subject.add(node, &id, &pod);
            let del = subject.del(node, &id, &pod, &added);
            if i >= warmup {
                lat.add.push(add);
                lat.del.push(del);
            }
        }
    }
    out
}
