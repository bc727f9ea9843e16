//! The integration tests' harness is the library's `goat::testing` (the
//! `testing` feature, enabled by the package's dev-dependency on itself), so
//! that the benchmarks and `goat dev` share its launcher and its idea of a
//! leader; this module only re-exports it under the name the tests use.
#![allow(unused_imports)]

pub use goat::testing::*;
