//! Examples for embedders live under `examples/`.
