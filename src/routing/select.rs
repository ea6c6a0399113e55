//! Picking the order in which candidates are tried. Weighted: the first pick is drawn in
//! proportion to the weights; the rest keep their routing order as fallbacks.

use super::Candidate;
use rand::Rng;

/// Reorders `candidates` so that the one to try first comes first.
pub fn order(candidates: &mut [Candidate]) {
    if candidates.len() < 2 {
        return;
    }
    let total: u64 = candidates.iter().map(|c| u64::from(c.weight.max(1))).sum();
    let mut pick = rand::thread_rng().gen_range(0..total);
    let mut chosen = 0;
    for (i, c) in candidates.iter().enumerate() {
        let w = u64::from(c.weight.max(1));
        if pick < w {
            chosen = i;
            break;
        }
        pick -= w;
    }
    candidates[..=chosen].rotate_right(1);
}
