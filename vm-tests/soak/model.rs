//! The soak's model: its randomness, what a volume, image or key may hold, and the counts.

use super::*;

// ---- randomness -------------------------------------------------------------------------------

pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub(crate) fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

// ---- the model --------------------------------------------------------------------------------

/// What a volume may hold.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Content {
    /// PATTERN_LEN bytes of `pattern(seed)` then zeros; None: all zeros.
    Raw(Option<u64>),
    /// An ext4 whose TRACKED files are exactly these; `runnable`: it holds busybox (from an image
    /// or an OCI layout), so `rcx-dm run` can run in it.
    Fs { files: BTreeMap<String, String>, runnable: bool },
}

impl Content {
    pub(crate) fn is_fs(&self) -> bool {
        matches!(self, Content::Fs { .. })
    }
    pub(crate) fn runnable(&self) -> bool {
        matches!(self, Content::Fs { runnable: true, .. })
    }
    pub(crate) fn files(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Content::Fs { files, .. } => Some(files),
            _ => None,
        }
    }
}

/// Alternatives: the content is one of these (more than one after an operation in doubt).
pub(crate) type Alts = Vec<Content>;

pub(crate) fn union(a: &Alts, b: &Alts) -> Alts {
    let mut s: BTreeSet<Content> = a.iter().cloned().collect();
    s.extend(b.iter().cloned());
    s.into_iter().collect()
}

#[derive(Clone, Debug)]
pub(crate) struct Vol {
    /// Its id, once a listing showed it.
    pub(crate) id: Option<u32>,
    pub(crate) size: u64,
    pub(crate) alts: Alts,
    /// A populate of it was interrupted: a `populate-<id>` scratch may be left (the next
    /// populate of this volume removes it).
    pub(crate) scratch_may_remain: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Img {
    pub(crate) alts: Alts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Active,
    View,
    Committed,
}

#[derive(Clone, Debug)]
pub(crate) struct Key {
    pub(crate) kind: KeyKind,
    pub(crate) parent: String,
    /// Possible values of the file soak-key (None: absent).
    pub(crate) alts: Vec<Option<String>>,
}

// ---- statistics and violations ----------------------------------------------------------------

#[derive(Default, Clone, Copy)]
pub(crate) struct OpCount {
    pub(crate) ok: u64,
    /// Killed (by chaos or an injected fault) or failed by an injected error: in doubt.
    pub(crate) doubt: u64,
    /// Failed when it should not have (each one is also a violation).
    pub(crate) failed: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) ops: BTreeMap<&'static str, OpCount>,
    pub(crate) kills: u64,
    pub(crate) serve_kills: u64,
    pub(crate) faults_armed: u64,
    pub(crate) faults_fired_kill: u64,
    pub(crate) faults_fired_error: u64,
    pub(crate) serve_faults_armed: u64,
    pub(crate) serve_fault_deaths: u64,
    pub(crate) serve_restarts: u64,
    pub(crate) recoveries: u64,
    pub(crate) verifications: u64,
    pub(crate) notes: Vec<String>,
}
