//! Naming a node on the command line: a node id, or a stage with one node; unknown names
//! get "did you mean". Shared by the verbs that take a stage or node name (`logs`, `path`,
//! `run`'s targets).

use std::path::Path;

use ugc_engine::graph::Dag;
use ugc_engine::spec::suggest::suggest;

use super::CliError;

/// The single node `name` names: a node id, or a stage with one node. Unknown names get
/// the closest names of the pipeline; a stage of several nodes lists them.
pub fn one_node(dag: &Dag, name: &str, pipeline: &Path) -> Result<String, CliError> {
    let found = dag.find(name);
    match found.as_slice() {
        [one] => Ok(dag.node(*one).id.clone()),
        [] => {
            let mut names: Vec<String> = dag
                .nodes()
                .flat_map(|(_, n)| [n.id.clone(), n.stage.clone()])
                .collect();
            names.sort();
            names.dedup();
            let close = did_you_mean(name, &names);
            let hint = if close.is_empty() {
                format!("its stages and nodes: {}", names.join(", "))
            } else {
                format!("did you mean {}?", close.join(" or "))
            };
            Err(CliError::usage(format!(
                "no stage or node `{name}` in {}; {hint}",
                pipeline.display()
            )))
        }
        many => {
            let ids: Vec<&str> = many.iter().map(|i| dag.node(*i).id.as_str()).collect();
            Err(CliError::usage(format!(
                "stage `{name}` has {} nodes; name one: {}",
                ids.len(),
                ids.join(", ")
            )))
        }
    }
}

/// The names close to `name`, closest first, in backticks: the engine's rule
/// (`ugc_engine::spec::suggest`), so every verb and the pipeline's own errors suggest alike.
pub fn did_you_mean(name: &str, names: &[String]) -> Vec<String> {
    suggest(name, names)
        .into_iter()
        .map(|n| format!("`{n}`"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_closest_first() {
        let names: Vec<String> = ["supernet", "search", "distill", "split"]
            .map(String::from)
            .to_vec();
        assert_eq!(did_you_mean("supernt", &names), ["`supernet`"]);
        assert_eq!(did_you_mean("splt", &names), ["`split`"]);
        assert!(did_you_mean("zzzzzz", &names).is_empty());
        // A swap of neighbours is one edit.
        assert_eq!(did_you_mean("sreach", &names), ["`search`"]);
    }
}
