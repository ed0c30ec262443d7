//! The randomness seam. Cores take `&mut impl RngCore` or own a [`SimRng`];
//! tests seed it, drivers seed it from the OS.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// The generator cores own: deterministic for a given seed.
pub type SimRng = StdRng;

/// A generator from a seed (tests, simulations).
pub fn seeded(seed: u64) -> SimRng {
    StdRng::seed_from_u64(seed)
}

/// A generator seeded from the operating system (drivers).
pub fn from_os() -> SimRng {
    StdRng::from_os_rng()
}
