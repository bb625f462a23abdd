//! Which shard owns a namespace: rendezvous (highest-random-weight) hashing
//! of the namespace name over the shard ids, with xxHash64. Adding or
//! removing one of N shards moves only the namespaces whose winner changed,
//! about 1/N of them. The weights are part of the on-the-wire contract
//! between releases: the golden test below pins them.

use twox_hash::XxHash64;

/// Seed of every weight. Changing it moves every namespace.
const SEED: u64 = 0x5052_4953_4d00_0001; // "PRISM\0" v1

/// The weight of `shard` for `namespace`.
pub fn weight(namespace: &str, shard: &str) -> u64 {
    let mut hasher = XxHash64::with_seed(SEED);
    std::hash::Hasher::write(&mut hasher, namespace.as_bytes());
    // A byte no name can hold separates the two, so ("a","bc") and
    // ("ab","c") hash differently.
    std::hash::Hasher::write(&mut hasher, &[0xff]);
    std::hash::Hasher::write(&mut hasher, shard.as_bytes());
    std::hash::Hasher::finish(&hasher)
}

/// The shard with the highest weight for `namespace`; ties (never seen in
/// practice) go to the smaller id. `None` when there is no shard.
pub fn rendezvous<'a>(namespace: &str, shards: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    shards.into_iter().map(|s| (weight(namespace, s), std::cmp::Reverse(s))).max().map(|(_, s)| s.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden assignments: if this test fails, a change has moved live
    /// namespaces to other shards. Do not update the expectations unless
    /// that is intended and a migration is planned.
    #[test]
    fn golden_assignments() {
        let shards = ["shard-0", "shard-1", "shard-2", "shard-3"];
        let got: Vec<_> = ["acme/profiles", "acme/sessions", "globex/events", "initech/tps-reports", "a/b"]
            .iter()
            .map(|ns| rendezvous(ns, shards).expect("non-empty"))
            .collect();
        assert_eq!(got, GOLDEN);
        assert_eq!(weight("acme/profiles", "shard-0"), GOLDEN_WEIGHT);
    }

    const GOLDEN: [&str; 5] = ["shard-3", "shard-0", "shard-1", "shard-3", "shard-2"];
    const GOLDEN_WEIGHT: u64 = 6628934051194955691;

    #[test]
    fn empty_shard_list_assigns_nothing() {
        assert_eq!(rendezvous("acme/x", []), None);
    }

    #[test]
    fn adding_a_shard_moves_about_one_in_n_plus_one() {
        let names: Vec<String> = (0..10_000).map(|i| format!("t{}/ns-{i}", i % 97)).collect();
        let four = ["s0", "s1", "s2", "s3"];
        let five = ["s0", "s1", "s2", "s3", "s4"];
        let moved = names.iter().filter(|n| rendezvous(n, four) != rendezvous(n, five)).count();
        // Every moved namespace must have moved to the new shard.
        assert!(names.iter().all(|n| rendezvous(n, four) == rendezvous(n, five) || rendezvous(n, five) == Some("s4")));
        let fraction = moved as f64 / names.len() as f64;
        assert!((0.17..0.23).contains(&fraction), "moved {fraction}");
    }
}
