//! Up-front validation: every file is decoded and checked (geometry, label ids) before any
//! training starts, so bad data fails in the first minute rather than after hours.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::classes::ClassTable;
use crate::dataset::{ExtraInput, Sample, SampleFiles};
use crate::error::{DataError, FileProblem, Result};
use crate::image_io::{IdMap, decode_ids, decode_rgb, read};

fn problem(e: DataError) -> FileProblem {
    match e {
        DataError::BadFile(p) => p,
        DataError::Io { path, source } => FileProblem {
            path,
            reason: source.to_string(),
        },
        other => FileProblem {
            path: "?".into(),
            reason: other.to_string(),
        },
    }
}

fn bad(path: &Path, reason: String) -> FileProblem {
    FileProblem {
        path: path.to_path_buf(),
        reason,
    }
}

/// Checks every value of a label map (or, with `instances`, an instance map whose values
/// are `id` or `id * 1000 + k`) is a class of the table.
pub fn check_ids(path: &Path, map: &IdMap, classes: &ClassTable, instances: bool) -> Result<()> {
    let known = classes.known_ids();
    let mut seen = vec![false; 65536];
    for &v in &map.data {
        seen[v as usize] = true;
    }
    let bad_ids: Vec<u16> = (0..=u16::MAX)
        .filter(|&v| seen[v as usize])
        .filter(|&v| {
            let id = if instances && v >= 1000 { v / 1000 } else { v };
            !known.get(id as usize).copied().unwrap_or(false)
        })
        .collect();
    if bad_ids.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = bad_ids.iter().take(8).map(u16::to_string).collect();
    Err(DataError::bad(
        path,
        format!(
            "{} id(s) outside the class table `{}`: {}{}",
            if instances { "instance" } else { "label" },
            classes.name,
            shown.join(", "),
            if bad_ids.len() > 8 { ", ..." } else { "" }
        ),
    ))
}

fn same_size(path: &Path, got: (u32, u32), want: (u32, u32), of: &Path) -> Result<(), FileProblem> {
    if got == want {
        Ok(())
    } else {
        Err(bad(
            path,
            format!(
                "size {}x{} differs from {}x{} of {}",
                got.0,
                got.1,
                want.0,
                want.1,
                of.display()
            ),
        ))
    }
}

fn check_semantic_inputs(
    label_ids: &Path,
    instance_ids: Option<&Path>,
    color: Option<&Path>,
    classes: &ClassTable,
    want: Option<(u32, u32, &Path)>,
) -> Result<(), FileProblem> {
    let labels = decode_ids(label_ids, &read(label_ids).map_err(problem)?).map_err(problem)?;
    let size = (labels.width, labels.height);
    if let Some((w, h, of)) = want {
        same_size(label_ids, size, (w, h), of)?;
    }
    check_ids(label_ids, &labels, classes, false).map_err(problem)?;
    if let Some(p) = instance_ids {
        let inst = decode_ids(p, &read(p).map_err(problem)?).map_err(problem)?;
        same_size(p, (inst.width, inst.height), size, label_ids)?;
        check_ids(p, &inst, classes, true).map_err(problem)?;
    }
    if let Some(p) = color {
        let c = decode_rgb(p, &read(p).map_err(problem)?).map_err(problem)?;
        same_size(p, c.dimensions(), size, label_ids)?;
    }
    Ok(())
}

/// Decodes and checks one paired example.
pub fn validate_sample(s: &Sample, classes: Option<&ClassTable>) -> Result<(), FileProblem> {
    match &s.files {
        SampleFiles::Aligned { file } => {
            let im = decode_rgb(file, &read(file).map_err(problem)?).map_err(problem)?;
            if im.width() < 2 || im.width() % 2 != 0 {
                return Err(bad(
                    file,
                    format!(
                        "aligned A|B image has odd width {} (two equal halves expected)",
                        im.width()
                    ),
                ));
            }
            Ok(())
        }
        SampleFiles::Semantic {
            photo,
            label_ids,
            instance_ids,
            color,
        } => {
            let classes = classes.ok_or_else(|| bad(label_ids, "no class table".into()))?;
            let im = decode_rgb(photo, &read(photo).map_err(problem)?).map_err(problem)?;
            check_semantic_inputs(
                label_ids,
                instance_ids.as_deref(),
                color.as_deref(),
                classes,
                Some((im.width(), im.height(), photo)),
            )
        }
    }
}

/// Decodes and checks one extra input.
pub fn validate_extra(e: &ExtraInput, classes: Option<&ClassTable>) -> Result<(), FileProblem> {
    match e {
        ExtraInput::Rgb { path, .. } => {
            decode_rgb(path, &read(path).map_err(problem)?).map_err(problem)?;
            Ok(())
        }
        ExtraInput::Semantic {
            label_ids,
            instance_ids,
            ..
        } => {
            let classes = classes.ok_or_else(|| bad(label_ids, "no class table".into()))?;
            check_semantic_inputs(label_ids, instance_ids.as_deref(), None, classes, None)
        }
    }
}

/// Maps `f` over `items` on `threads` scoped threads, keeping order.
pub fn par_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, items.len().max(1));
    let mut parts: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            break out;
                        }
                        out.push((i, f(&items[i])));
                    }
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("validation worker panicked"))
            .collect()
    });
    let mut all: Vec<(usize, R)> = parts.drain(..).flatten().collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// Worker threads for CPU-bound data work: all cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
