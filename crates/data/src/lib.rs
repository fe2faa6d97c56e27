//! ugc-data
