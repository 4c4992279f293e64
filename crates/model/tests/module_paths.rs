//! `modules.json` cannot point braid outside the model directory: an absolute module path, a `..`
//! component, or a symbolic link that resolves outside are refused by `ModelDir::open` with
//! `ModulePathOutsideModelDir`. Each case is set up so that the old code would have opened the
//! directory and read the outside `config.json`.

mod common;

use braid_model::{ModelDir, ModelError};
use common::*;

/// A tiny model directory whose Pooling module path is `pooling`, plus an outside directory
/// holding a valid Pooling config.
fn setup(name: &str) -> (TempDir, TempDir) {
    let dir = TempDir::new(name);
    write_tiny_model(&dir);
    let outside = TempDir::new(&format!("{name}-outside"));
    outside.write(
        "config.json",
        format!(
            r#"{{"word_embedding_dimension": {TINY_HIDDEN}, "pooling_mode_mean_tokens": true}}"#
        ),
    );
    (dir, outside)
}

fn with_pooling_path(dir: &TempDir, pooling: &str) {
    dir.write(
        "modules.json",
        format!(
            r#"[{{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}},
               {{"idx": 1, "name": "1", "path": {pooling:?}, "type": "sentence_transformers.models.Pooling"}}]"#
        ),
    );
}

fn assert_refused(dir: &TempDir, want_value: &str, why: &str) {
    match ModelDir::open(dir.path()) {
        Err(err @ ModelError::ModulePathOutsideModelDir { .. }) => {
            let message = err.to_string();
            assert!(
                message.contains(want_value) && message.contains(why),
                "{message}"
            );
            assert!(message.contains("modules.json"), "{message}");
        }
        other => panic!("pooling path {want_value}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_absolute_module_path_is_refused() {
    let (dir, outside) = setup("abs");
    let path = outside.path().to_str().unwrap().to_owned();
    with_pooling_path(&dir, &path);
    assert_refused(&dir, &path, "absolute");
}

#[test]
fn a_parent_dir_module_path_is_refused() {
    let (dir, outside) = setup("dotdot");
    let name = outside.path().file_name().unwrap().to_str().unwrap();
    let path = format!("../{name}");
    with_pooling_path(&dir, &path);
    assert_refused(&dir, &path, "`..`");
}

#[cfg(unix)]
#[test]
fn a_symlink_leading_outside_is_refused_and_one_inside_is_not() {
    let (dir, outside) = setup("symlink");
    with_pooling_path(&dir, "linked");
    std::os::unix::fs::symlink(outside.path(), dir.join("linked")).unwrap();
    assert_refused(&dir, "linked", "symbolic link");

    // A link to a directory inside the model directory is fine.
    let (dir, _outside) = setup("symlink-inside");
    with_pooling_path(&dir, "linked");
    std::os::unix::fs::symlink(dir.join("1_Pooling"), dir.join("linked")).unwrap();
    ModelDir::open(dir.path()).unwrap().load_spec().unwrap();

    // So is a model directory that is itself reached through a link.
    let (dir, _outside) = setup("linked-root");
    let link = TempDir::new("linked-root-link");
    std::os::unix::fs::symlink(dir.path(), link.join("model")).unwrap();
    ModelDir::open(link.join("model"))
        .unwrap()
        .load_spec()
        .unwrap();
}
