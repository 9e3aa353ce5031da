//! The diesel stores.
