//! Time-ordered 128-bit ids, made by the client so that a retried request carries the ids it had
//! the first time and the ledger answers `exists` instead of applying it twice.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Makes ids that sort by creation time: the top 48 bits are milliseconds since the Unix epoch,
/// the low 80 bits random. Within one millisecond the random part counts up from its first value,
/// so ids from one generator strictly increase (ledger indexes stay append-friendly). Never
/// returns 0 or 2^128-1, which the ledger reserves.
#[derive(Debug)]
pub struct IdGenerator {
    last: Mutex<u128>,
}

const RANDOM_BITS: u32 = 80;
const RANDOM_MASK: u128 = (1 << RANDOM_BITS) - 1;

impl Default for IdGenerator {
    fn default() -> Self {
        IdGenerator::new()
    }
}

impl IdGenerator {
    /// A generator that has made no id yet.
    pub const fn new() -> IdGenerator {
        IdGenerator { last: Mutex::new(0) }
    }

    /// The next id: larger than every id this generator returned before.
    pub fn next_id(&self) -> u128 {
        let milliseconds = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis());
        let fresh = (milliseconds << RANDOM_BITS) | (fastrand::u128(..) & RANDOM_MASK);
        let mut last = self.last.lock().expect("the id lock is never poisoned");
        // A clock that stepped back, or a second id in the same millisecond, continues from the
        // last id rather than going backwards.
        let id = if fresh > *last { fresh } else { *last + 1 };
        assert!(id != u128::MAX, "id space exhausted");
        *last = id;
        id
    }
}

/// A time-ordered id from a process-wide generator (see [`IdGenerator`]).
pub fn new_id() -> u128 {
    static GENERATOR: IdGenerator = IdGenerator::new();
    GENERATOR.next_id()
}

/// The milliseconds since the Unix epoch when `id` was made, if it came from [`IdGenerator`].
pub fn id_milliseconds(id: u128) -> u64 {
    u64::try_from(id >> RANDOM_BITS).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_strictly_increase_and_carry_the_time() {
        let generator = IdGenerator::new();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
        let ids: Vec<u128> = (0..10_000).map(|_| generator.next_id()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
        for id in [ids[0], ids[9_999]] {
            let made = u128::from(id_milliseconds(id));
            assert!(before <= made && made <= after, "{made} outside {before}..={after}");
            assert_ne!(id, 0);
        }
    }

    #[test]
    fn ids_from_concurrent_threads_never_collide() {
        let ids: Vec<u128> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..4).map(|_| scope.spawn(|| (0..5_000).map(|_| new_id()).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|handle| handle.join().unwrap()).collect()
        });
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }
}
