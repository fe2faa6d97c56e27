//! Every stage kind of ugc-pipe, each in one place: `src/<kind>/schema.yaml` (what the head
//! plans with: types, defaults, docs, allowed values, ranges, deps, external inputs,
//! `not_in_key`, version) and `src/<kind>/mod.rs` (the typed parameters the kind's code
//! reads, enums for enumerations, and the cross-field rules a schema cannot state).
//!
//! The two halves are tied by [`testing::drift`]: a test fails on any difference between
//! a schema and its typed parameters (a parameter on one side only, another type, other
//! allowed values, an optional value that is not optional in Rust). The list in
//! [`kinds!`] below is the only list of kinds: it drives the head's schemas
//! ([`schema_registry`]), the worker's dispatch (an exhaustive `match` on [`Kind`]), the
//! generated tests and the reference in `docs/stage-kinds.md` ([`reference_markdown`]).
//!
//! Free of libtorch on purpose: the head process plans with it, and so can a cluster's
//! login node. Adding a kind is written down in `docs/architecture.md`.

use serde::de::DeserializeOwned;
use serde_json::Value;
use ugc_engine::{KindRegistry, KindSchema, ParamCheck, ParamProblem};

pub mod arch;
pub mod common;
mod reference;
pub mod testing;

pub use reference::reference_markdown;

/// The typed parameters of one kind: what `StageContext::typed_params` gives its code.
///
/// Every value has passed the kind's schema when `check` runs (types, allowed values,
/// ranges, `at_most`), so `check` holds only the rules between several parameters.
pub trait KindParams: DeserializeOwned + schemars::JsonSchema {
    /// Cross-field problems of already schema-valid parameters: all of them, each naming
    /// the dotted parameter to point at.
    fn check(&self) -> Vec<ParamProblem> {
        Vec::new()
    }
}

/// Deserializes resolved parameters and runs the kind's cross-field check. A value the
/// schema admitted but the typed parameters refuse is drift (a bug the drift test
/// catches); it is still reported as a problem, never a panic.
pub fn check_params<P: KindParams>(params: &Value) -> Vec<ParamProblem> {
    match serde_json::from_value::<P>(params.clone()) {
        Ok(p) => p.check(),
        Err(e) => vec![ParamProblem::new(
            "",
            format!("the parameters do not fit the kind's typed parameters: {e}"),
        )],
    }
}

/// Declares the kinds: `Variant => module`, the module being `src/<module>/` and the
/// kind's name in pipelines being the module's name.
macro_rules! kinds {
    ($($variant:ident => $module:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// A built-in stage kind.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $($variant),*
        }

        impl Kind {
            /// Every built-in kind, in the order of the list.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];

            /// The kind's name as written in pipelines (`kind: distill`).
            pub fn name(self) -> &'static str {
                match self {
                    $(Kind::$variant => stringify!($module)),*
                }
            }

            /// The text of `src/<kind>/schema.yaml`.
            pub fn schema_yaml(self) -> &'static str {
                match self {
                    $(Kind::$variant => include_str!(concat!(stringify!($module), "/schema.yaml"))),*
                }
            }

            /// The kind's cross-field check, run by the planner on every node of it.
            pub fn check(self) -> ParamCheck {
                match self {
                    $(Kind::$variant => check_params::<$module::Params> as ParamCheck),*
                }
            }

            /// Differences between the schema and the typed parameters (empty: none).
            pub fn drift(self) -> Vec<String> {
                match self {
                    $(Kind::$variant => testing::drift::<$module::Params>(&self.schema())),*
                }
            }
        }
    };
}

// The one list of kinds. Adding a kind: a folder `src/<kind>/` with `schema.yaml` and
// `mod.rs`, one line here, and its code in the worker's `match` (docs/architecture.md).
kinds! {
    Command => command,
    Synth => synth,
    Split => split,
    Supernet => supernet,
    Search => search,
    Teachers => teachers,
    Adf => adf,
    Distill => distill,
    Train => train,
    Evaluator => evaluator,
    Evaluate => evaluate,
    Export => export,
    Report => report,
}

impl Kind {
    /// The kind of a name written in a pipeline.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// The parsed schema.
    ///
    /// # Panics
    /// If the embedded `schema.yaml` does not parse: a build bug, caught by the
    /// `every_schema_parses` test, never user input.
    pub fn schema(self) -> KindSchema {
        KindSchema::from_yaml(self.schema_yaml())
            .unwrap_or_else(|e| panic!("crates/kinds/src/{}/schema.yaml: {e}", self.name()))
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every built-in kind by its schema and check: enough to validate, plan and key a
/// pipeline (what the head holds; the worker adds the code).
pub fn schema_registry() -> KindRegistry {
    let mut reg = KindRegistry::new();
    for &kind in Kind::ALL {
        reg.register_schema(kind.schema());
        reg.register_check(kind.name(), kind.check());
    }
    reg
}

#[cfg(test)]
mod tests;
