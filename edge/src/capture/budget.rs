//! The disk budget: which captures to evict so that a new one fits.
//!
//! The host acknowledges "everything up to N", so the acknowledged captures are always
//! the oldest ones. "Acknowledged first, then the oldest" therefore always evicts a
//! prefix of the log, which is what lets the log record an eviction as a single number
//! (the first live sequence number) and stay crash-safe.

/// Limits on what the capture folder may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Most bytes of images plus log.
    pub max_bytes: u64,
    /// Most captures kept.
    pub max_count: usize,
}

/// One stored capture as the budget sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number.
    pub seq: u64,
    /// Bytes it takes on disk (image plus its share of the log).
    pub bytes: u64,
}

/// The oldest captures to remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Eviction {
    /// How many of the oldest captures go.
    pub count: usize,
    /// How many of those the host had not acknowledged (lost for good).
    pub unacked: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// What is about to be added: bytes and number of captures (zero of both just applies
/// the budget, e.g. after it shrank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Incoming {
    /// Bytes to add.
    pub bytes: u64,
    /// Captures to add.
    pub count: usize,
}

/// Plans room for what is `incoming`.
///
/// `entries` are oldest first; `used` is the folder's current total; captures with
/// `seq <= acked` are on the host already. When even an empty folder cannot hold the
/// new capture, everything is evicted and the caller must refuse the capture.
pub fn plan(
    entries: &[Entry],
    used: u64,
    incoming: Incoming,
    acked: u64,
    budget: Budget,
) -> Eviction {
    let mut ev = Eviction::default();
    let mut count = entries.len();
    let mut bytes = used;
    for e in entries {
        let fits = count + incoming.count <= budget.max_count
            && bytes + incoming.bytes <= budget.max_bytes;
        if fits {
            break;
        }
        count -= 1;
        bytes = bytes.saturating_sub(e.bytes);
        ev.count += 1;
        ev.bytes += e.bytes;
        if e.seq > acked {
            ev.unacked += 1;
        }
    }
    ev
}

/// Plans freeing at least `want` bytes from acknowledged captures only (used when the
/// disk itself runs low: unacknowledged captures are not given up for free space).
pub fn plan_acked(entries: &[Entry], want: u64, acked: u64) -> Eviction {
    let mut ev = Eviction::default();
    for e in entries.iter().take_while(|e| e.seq <= acked) {
        if ev.bytes >= want {
            break;
        }
        ev.count += 1;
        ev.bytes += e.bytes;
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: u64) -> Incoming {
        Incoming { bytes, count: 1 }
    }

    fn entries(n: u64, each: u64) -> Vec<Entry> {
        (1..=n).map(|seq| Entry { seq, bytes: each }).collect()
    }

    #[test]
    fn nothing_goes_while_there_is_room() {
        let e = entries(5, 100);
        let b = Budget { max_bytes: 1000, max_count: 10 };
        assert_eq!(plan(&e, 500, one(100), 0, b), Eviction::default());
    }

    #[test]
    fn the_count_limit_evicts_the_oldest_one() {
        let e = entries(10, 100);
        let b = Budget { max_bytes: 1 << 30, max_count: 10 };
        let ev = plan(&e, 1000, one(100), 3, b);
        assert_eq!(ev, Eviction { count: 1, unacked: 0, bytes: 100 });
    }

    #[test]
    fn the_byte_limit_evicts_until_the_new_one_fits_and_counts_unacked_losses() {
        let e = entries(10, 100);
        let b = Budget { max_bytes: 1000, max_count: 100 };
        // 1000 used + 350 incoming: 350 must go, i.e. four 100-byte captures.
        let ev = plan(&e, 1000, one(350), 2, b);
        assert_eq!(ev, Eviction { count: 4, unacked: 2, bytes: 400 });
    }

    #[test]
    fn a_capture_bigger_than_the_budget_evicts_everything() {
        let e = entries(3, 100);
        let b = Budget { max_bytes: 1000, max_count: 100 };
        assert_eq!(plan(&e, 300, one(5000), 0, b).count, 3);
    }

    #[test]
    fn applying_a_budget_without_a_new_capture_keeps_a_full_folder() {
        let e = entries(10, 100);
        let b = Budget { max_bytes: 1000, max_count: 10 };
        assert_eq!(plan(&e, 1000, Incoming::default(), 0, b), Eviction::default());
        let smaller = Budget { max_bytes: 1000, max_count: 7 };
        assert_eq!(plan(&e, 1000, Incoming::default(), 0, smaller).count, 3);
    }

    #[test]
    fn low_disk_frees_only_acknowledged_captures() {
        let e = entries(10, 100);
        assert_eq!(plan_acked(&e, 250, 6), Eviction { count: 3, unacked: 0, bytes: 300 });
        assert_eq!(plan_acked(&e, 5000, 2).count, 2);
        assert_eq!(plan_acked(&e, 5000, 0).count, 0);
    }
}
