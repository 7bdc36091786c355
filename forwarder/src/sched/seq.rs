//! Weighted, interleaved sequences: the one building block of wrr (its cycle), sh (the
//! layout of its buckets) and mh (the turn order in which real servers fill the table).

/// Longest weighted sequence built for wrr and mh (entries are u16 indices, so 128 KiB).
/// Weights are first divided by their gcd; a cycle still longer than this is rescaled by
/// [`apportion`] to exactly this length, so each real server's share is kept to within
/// 1/65536 of the total (and a server with weight > 0 never drops to zero turns).
pub const MAX_CYCLE: usize = 1 << 16;

pub fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Shares of `weights` (one per server, any may be 0) reduced to the shortest cycle of at
/// most `cap` turns with the same proportions: divided by the gcd, and if still too long,
/// apportioned to `cap` turns.
pub fn cycle_counts(weights: &[u32], cap: usize) -> Vec<u32> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
    if g == 0 {
        return vec![0; weights.len()];
    }
    let reduced: Vec<u32> = weights
        .iter()
        .map(|&w| u32::try_from(u64::from(w) / g).expect("w / g <= w"))
        .collect();
    let sum: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
    if sum <= cap as u64 {
        return reduced;
    }
    let counts = apportion(&reduced, cap);
    let g = counts.iter().fold(0u64, |g, &c| gcd(g, u64::from(c)));
    counts
        .iter()
        .map(|&c| u32::try_from(u64::from(c) / g).expect("c / g <= c"))
        .collect()
}

/// Splits `total` units among servers in proportion to `weights` (largest remainder, ties
/// to the first server), then makes sure every server with weight > 0 gets at least one
/// unit, taken from the server with the most, as long as there are enough units.
pub fn apportion(weights: &[u32], total: usize) -> Vec<u32> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let mut counts = vec![0u32; weights.len()];
    if sum == 0 {
        return counts;
    }
    let total_u = total as u128;
    let mut given = 0usize;
    let mut rema: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let exact = u128::from(w) * total_u;
        counts[i] = u32::try_from(exact / sum).expect("a share of total fits u32");
        given += counts[i] as usize;
        rema.push((exact % sum, i));
    }
    // Largest remainder first; equal remainders keep server order.
    rema.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rema.iter().take(total - given) {
        counts[i] += 1;
    }
    let live = weights.iter().filter(|&&w| w > 0).count();
    if live <= total {
        for i in 0..weights.len() {
            if weights[i] > 0 && counts[i] == 0 {
                let richest = (0..counts.len())
                    .max_by_key(|&j| (counts[j], std::cmp::Reverse(j)))
                    .expect("weights is not empty");
                counts[richest] -= 1;
                counts[i] = 1;
            }
        }
    }
    counts
}

/// Smooth weighted round robin (the nginx algorithm): every turn each server's credit grows
/// by its count, the server with the most credit (first on ties) is chosen and pays the sum.
/// Over one cycle of `sum(counts)` turns each server appears exactly `counts[i]` times, and
/// the heavy servers are spread between the light ones instead of running in blocks as in
/// IPVS's gcd stepping (5,1,1 gives a a b a c a a, not a a a a a b c).
///
/// O(cycle × servers); callers bound the cycle with [`cycle_counts`] or [`apportion`].
pub fn smooth_sequence(counts: &[u32]) -> Vec<u16> {
    assert!(
        counts.len() <= usize::from(u16::MAX) + 1,
        "server index must fit a u16"
    );
    let total: i64 = counts.iter().map(|&c| i64::from(c)).sum();
    let mut credit = vec![0i64; counts.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = usize::MAX;
        for (i, &c) in counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            credit[i] += i64::from(c);
            if best == usize::MAX || credit[i] > credit[best] {
                best = i;
            }
        }
        credit[best] -= total;
        seq.push(u16::try_from(best).expect("checked above"));
    }
    seq
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occurrences(seq: &[u16], n: usize) -> Vec<u32> {
        let mut c = vec![0u32; n];
        for &s in seq {
            c[usize::from(s)] += 1;
        }
        c
    }

    #[test]
    fn smooth_sequence_interleaves() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[1, 0, 1]), vec![0, 2]);
        assert!(smooth_sequence(&[0, 0]).is_empty());
    }

    #[test]
    fn cycle_counts_divides_by_gcd() {
        assert_eq!(
            cycle_counts(&[100, 200, 0, 300], MAX_CYCLE),
            vec![1, 2, 0, 3]
        );
        assert_eq!(cycle_counts(&[0, 0], MAX_CYCLE), vec![0, 0]);
    }

    #[test]
    fn cycle_counts_caps_long_cycles() {
        let w = [u32::MAX, 1, u32::MAX - 1, 7];
        let c = cycle_counts(&w, MAX_CYCLE);
        let sum: u64 = c.iter().map(|&x| u64::from(x)).sum();
        assert!(sum <= MAX_CYCLE as u64);
        assert!(
            c.iter().all(|&x| x > 0),
            "no live server loses its turns: {c:?}"
        );
        assert!(c[0].abs_diff(c[2]) <= 1);
    }

    #[test]
    fn apportion_is_exact_and_proportional() {
        let c = apportion(&[1, 2, 3, 0], 4096);
        assert_eq!(c.iter().sum::<u32>(), 4096);
        assert_eq!(c, vec![683, 1365, 2048, 0]);
        let c = apportion(&[1_000_000, 1], 16);
        assert_eq!(c, vec![15, 1]);
        assert_eq!(occurrences(&smooth_sequence(&c), 2), c);
    }
}
