//! Benchmarks live here; see README.md.
