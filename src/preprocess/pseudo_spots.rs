//! Pseudo spots (SPEC §4): sampled uniformly in the feasible domain in 10 rounds; after each
//! round the ±radius squares around the chosen points leave the domain (points chosen in
//! the same round may be closer, as in the reference).

use rand::seq::index::sample;
use rand::Rng;
use rayon::prelude::*;

use super::morphology::Mask;

/// P = min(max(0.5, round(N / 1000)) · 1000 · ratio, 40000), truncated.
pub fn pseudo_spot_count(sequenced: usize, ratio: f64) -> usize {
    let k = (sequenced as f64 / 1000.0).round_ties_even().max(0.5);
    (k * 1000.0 * ratio).min(40000.0) as usize
}

/// Pseudo spot centres (row, col) in the feasible domain's pixels. The domain is consumed:
/// it is cleared round by round.
pub fn create_pseudo_spots(
    feasible: Mask,
    radius: usize,
    count: usize,
    rounds: usize,
    rng: &mut impl Rng,
) -> Vec<[usize; 2]> {
    let mut domain = feasible;
    let (h, w) = (domain.height, domain.width);
    let per_round = count.div_ceil(rounds.max(1));
    let mut out = Vec::with_capacity(count);
    for _ in 0..rounds {
        let row_counts: Vec<usize> = (0..h).into_par_iter().map(|r| domain.row_count(r)).collect();
        let available: usize = row_counts.iter().sum();
        if available == 0 {
            break;
        }
        let k = per_round.min(available);
        let mut chosen = sample(rng, available, k).into_vec();
        chosen.sort_unstable();
        // walk rows once, mapping the sorted k-th available pixel to (row, col)
        let mut picked = Vec::with_capacity(k);
        let (mut row, mut before) = (0usize, 0usize);
        for idx in chosen {
            while before + row_counts[row] <= idx {
                before += row_counts[row];
                row += 1;
            }
            let col = domain.nth_set_in_row(row, idx - before);
            picked.push([row, col.expect("row count agrees with the row")]);
        }
        for &[r, c] in &picked {
            let (r0, r1) = (r.saturating_sub(radius), (r + radius + 1).min(h));
            let (c0, c1) = (c.saturating_sub(radius), (c + radius + 1).min(w));
            for y in r0..r1 {
                domain.set_range(y, c0, c1, false);
            }
        }
        out.extend(picked);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn count_rule() {
        assert_eq!(pseudo_spot_count(3000, 5.0), 15000);
        assert_eq!(pseudo_spot_count(300, 5.0), 2500); // round(0.3) = 0 → 0.5
        assert_eq!(pseudo_spot_count(2500, 5.0), 10000); // round half to even: 2
        assert_eq!(pseudo_spot_count(20000, 5.0), 40000);
    }

    #[test]
    fn inside_domain_spaced_across_rounds_and_reproducible() {
        let mut m = Mask::new(200, 300);
        for r in 20..180 {
            for c in 10..290 {
                m.set(r, c, true);
            }
        }
        let run = |seed| create_pseudo_spots(m.clone(), 5, 400, 10, &mut rand::rngs::StdRng::seed_from_u64(seed));
        let a = run(1);
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
        assert!(a.len() <= 400 && a.len() > 100);
        assert!(a.iter().all(|&[r, c]| m.get(r, c)));
        // a point from a later round never falls in an earlier round's square
        let per = 40;
        for (i, p) in a.iter().enumerate() {
            for q in &a[..(i / per) * per] {
                assert!(p[0].abs_diff(q[0]) > 5 || p[1].abs_diff(q[1]) > 5, "{p:?} within ±5 of {q:?}");
            }
        }
    }
}
