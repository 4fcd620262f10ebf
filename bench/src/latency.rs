//! ADD and DEL latency of each subject, interleaved (A B C … A B C …) so that machine drift hits all alike.
//! Each subject has its own node netns; every sample is a fresh pod netns, added then deleted.

use crate::pod::PodNetns;
use crate::setups::Subject;
use crate::stats::Samples;
use integration::Netns;

pub struct Latency {
    pub add: Samples,
    pub del: Samples,
}

pub fn run(subjects: &[&dyn Subject], samples: usize, warmup: usize) -> Vec<Latency> {
    let nodes: Vec<Netns> = subjects.iter().map(|_| Netns::new()).collect();
    let mut out: Vec<Latency> =
        subjects.iter().map(|_| Latency { add: Samples::default(), del: Samples::default() }).collect();
    for i in 0..warmup + samples {
        for ((subject, node), lat) in subjects.iter().zip(&nodes).zip(out.iter_mut()) {
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
