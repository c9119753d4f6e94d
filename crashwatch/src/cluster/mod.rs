//! Cluster: which reports are the same bug. [`fingerprint`] computes the versioned value each
//! report carries (docs/fingerprint.md); the store that counts clusters comes after it.
pub mod fingerprint;
