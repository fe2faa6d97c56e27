//! Stage kinds that measure and ship models.
