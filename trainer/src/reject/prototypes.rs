//! Prototypes of a class: spherical k-means of its unit-length feature vectors, so a class
//! whose images look several ways (a "photo" class of cups, cats and rockets) is described
//! by several directions instead of one mean between them.
//!
//! Written here rather than taken from a clustering crate: a few dozen lines for at most a
//! few hundred vectors per class, where `linfa` would bring its own ndarray stack.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Refinement rounds; the assignments of a few hundred vectors settle well before.
const ROUNDS: usize = 25;

/// Up to `k` unit-length prototypes of `vectors` (each unit length): k-means++ seeding,
/// then rounds of assigning each vector to its most similar prototype (cosine) and
/// moving each prototype to its members' normalized sum. Seeded: the same input gives the
/// same prototypes. With `k` or fewer vectors, the vectors themselves.
pub fn spherical_kmeans(vectors: &[Vec<f32>], k: usize, seed: u64) -> Vec<Vec<f32>> {
    if vectors.len() <= k {
        return vectors.to_vec();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centres = vec![vectors[rng.random_range(0..vectors.len())].clone()];
    while centres.len() < k {
        // k-means++: the next centre far (in cosine) from those chosen, with
        // probability proportional to the squared distance 2 - 2 cos.
        let far: Vec<f64> = vectors
            .iter()
            .map(|v| (2.0 - 2.0 * nearest(v, &centres).1 as f64).max(0.0).powi(2))
            .collect();
        let total: f64 = far.iter().sum();
        if total <= 0.0 {
            break; // every vector is already a centre
        }
        let mut at = rng.random_range(0.0..total);
        let next = far.iter().position(|&d| {
            at -= d;
            at < 0.0
        });
        centres.push(vectors[next.unwrap_or(vectors.len() - 1)].clone());
    }
    for _ in 0..ROUNDS {
        let mut sums = vec![vec![0f64; vectors[0].len()]; centres.len()];
        for v in vectors {
            let (c, _) = nearest(v, &centres);
            for (s, x) in sums[c].iter_mut().zip(v) {
                *s += *x as f64;
            }
        }
        for (centre, sum) in centres.iter_mut().zip(sums) {
            if let Some(moved) = super::unit(&sum) {
                *centre = moved;
            }
        }
    }
    centres
}

/// The index of the centre most similar to `v`, and that similarity (dot product).
fn nearest(v: &[f32], centres: &[Vec<f32>]) -> (usize, f32) {
    centres
        .iter()
        .map(|c| c.iter().zip(v).map(|(a, b)| a * b).sum::<f32>())
        .enumerate()
        .fold(
            (0, f32::MIN),
            |best, (i, s)| if s > best.1 { (i, s) } else { best },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn finds_the_directions_of_two_groups() {
        // Two tight groups around x and y.
        let mut vectors = Vec::new();
        for i in 0..20 {
            let e = i as f32 * 0.01;
            vectors.push(unit(&[1.0, e, 0.0]));
            vectors.push(unit(&[e, 1.0, 0.0]));
        }
        let mut p = spherical_kmeans(&vectors, 2, 7);
        p.sort_by(|a, b| b[0].total_cmp(&a[0]));
        assert!(p[0][0] > 0.99 && p[1][1] > 0.99, "{p:?}");
        assert_eq!(p, {
            let mut q = spherical_kmeans(&vectors, 2, 7);
            q.sort_by(|a, b| b[0].total_cmp(&a[0]));
            q
        });
    }

    #[test]
    fn few_vectors_are_their_own_prototypes() {
        let v = vec![unit(&[1.0, 2.0]), unit(&[3.0, -1.0])];
        assert_eq!(spherical_kmeans(&v, 8, 0), v);
    }
}
