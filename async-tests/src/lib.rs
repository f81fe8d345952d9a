//! Nothing here: see `tests/` and `examples/`.
