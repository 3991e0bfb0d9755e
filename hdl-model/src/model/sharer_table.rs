//! Reference model of `amf_sharer_table`: set-associative, set = low bits of the resource,
//! allocation into the lowest free way, a full set stores nothing.

/// One entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    resource: u64,
    sharers: u8,
    owner: u8,
}

/// Answer to a request: the entry as it was before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The resource had an entry.
    pub hit: bool,
    /// An update found the set full and stored nothing.
    pub full: bool,
    /// Sharers before the request.
    pub sharers: u8,
    /// Owner + 1 before the request (0: none).
    pub owner: u8,
}

/// The table.
#[derive(Clone, Debug)]
pub struct SharerTable {
    sets_log2: u32,
    ways: usize,
    entries: Vec<Option<Entry>>,
    occupancy: u32,
    full_fallbacks: u32,
}

impl SharerTable {
    /// An empty table of 2^sets_log2 sets of `ways` entries.
    pub fn new(sets_log2: u32, ways: usize) -> SharerTable {
        SharerTable {
            sets_log2,
            ways,
            entries: vec![None; (1usize << sets_log2) * ways],
            occupancy: 0,
            full_fallbacks: 0,
        }
    }

    fn set(&self, resource: u64) -> std::ops::Range<usize> {
        let s = (resource & ((1u64 << self.sets_log2) - 1)) as usize;
        s * self.ways..(s + 1) * self.ways
    }

    fn find(&self, resource: u64) -> Option<usize> {
        self.set(resource).find(|&i| self.entries[i].is_some_and(|e| e.resource == resource))
    }

    fn response(&self, at: Option<usize>) -> Response {
        match at.and_then(|i| self.entries[i]) {
            Some(e) => Response { hit: true, full: false, sharers: e.sharers, owner: e.owner },
            None => Response { hit: false, full: false, sharers: 0, owner: 0 },
        }
    }

    /// Looks a resource up.
    pub fn lookup(&self, resource: u64) -> Response {
        self.response(self.find(resource))
    }

    /// Stores sharers and owner for a resource; no sharers and no owner frees its entry.
    pub fn update(&mut self, resource: u64, sharers: u8, owner: u8) -> Response {
        let at = self.find(resource);
        let mut r = self.response(at);
        let release = sharers == 0 && owner == 0;
        let entry = Entry { resource, sharers, owner };
        match at {
            Some(i) if release => {
                self.entries[i] = None;
                self.occupancy -= 1;
            }
            Some(i) => self.entries[i] = Some(entry),
            None if release => {}
            None => match self.set(resource).find(|&i| self.entries[i].is_none()) {
                Some(i) => {
                    self.entries[i] = Some(entry);
                    self.occupancy += 1;
                }
                None => {
                    r.full = true;
                    self.full_fallbacks += 1;
                }
            },
        }
        r
    }

    /// Empties the table (counters of fallbacks stay).
    pub fn clear(&mut self) {
        self.entries.iter_mut().for_each(|e| *e = None);
        self.occupancy = 0;
    }

    /// Valid entries.
    pub fn occupancy(&self) -> u32 {
        self.occupancy
    }

    /// Updates that found their set full.
    pub fn full_fallbacks(&self) -> u32 {
        self.full_fallbacks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_hit_full_release() {
        let mut t = SharerTable::new(1, 2);
        assert!(!t.update(0, 1, 0).hit);
        assert!(!t.update(2, 2, 0).hit);
        let r = t.update(4, 4, 0);
        assert!(r.full, "set 0 holds two ways");
        assert_eq!(t.lookup(2), Response { hit: true, full: false, sharers: 2, owner: 0 });
        t.update(0, 0, 0);
        assert_eq!(t.occupancy(), 1);
        assert!(!t.update(4, 4, 3).full, "freed way reused");
        assert_eq!(t.lookup(4).owner, 3);
        assert_eq!(t.full_fallbacks(), 1);
    }
}
