//! ugc-nn
