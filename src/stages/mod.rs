//! The built-in stage kinds, as the head plans with them: their schemas and cross-field
//! checks come from `ugc-kinds` (one folder per kind, libtorch-free); the worker
//! (`ugc-pipe-worker`) adds their code.

pub use ugc_kinds::{Kind, schema_registry};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_holds_schemas_only() {
        let reg = schema_registry();
        assert_eq!(reg.names().count(), Kind::ALL.len());
        // The head never runs a stage itself.
        assert!(reg.get("command").is_none());
        assert!(reg.check("distill").is_some());
    }
}
