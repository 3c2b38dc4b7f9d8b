//! Criterion benches for Trellis; see `benches/README.md` for the tables and
//! the commands that produce them. This library is empty on purpose: the
//! benches live in `benches/benches/*.rs`.
