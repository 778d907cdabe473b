//! Certificates made in the test: a CA and certificates it signs, written as PEM files
//! (one implementation, `silo_tls::testing`, shared with silo-tls's own tests).

pub use silo_tls::testing::{Issued, TestCa};
