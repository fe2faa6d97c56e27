//! ugc-metrics
