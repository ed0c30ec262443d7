//! Benchmarks live under `benches/` and `src/bin/`.
