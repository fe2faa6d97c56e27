//! The UGC method as stage kinds.
