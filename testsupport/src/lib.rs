//! Test support for every tapbus crate's tests (never linked into a binary).
//!
//! * [`testdata`]: the dnstap captures the repository carries (`testdata/dnstap`), read
//!   through one path helper so a fresh clone tests itself.

pub mod testdata;
