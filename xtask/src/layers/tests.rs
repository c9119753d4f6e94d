//! The check on crashwatch's own tree, and on small trees with an import planted in them.
use super::*;

/// A scratch tree of `(path, text)` files under the system's temp dir.
fn tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("xtask-layers-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    root
}

const CLEAN: &[(&str, &str)] = &[
    (
        "main.rs",
        "mod model; mod pipeline; mod agent;\nfn main() { agent::run() }\n",
    ),
    ("model/mod.rs", "pub mod crash;\n"),
    ("model/crash.rs", "pub struct Crash;\n"),
    ("pipeline/mod.rs", "pub mod assemble;\npub mod symbolize;\n"),
    (
        "pipeline/assemble/mod.rs",
        "use crate::model::crash::Crash;\n",
    ),
    (
        "pipeline/symbolize/mod.rs",
        "use crate::{model::{crash::Crash}, util};\n// crate::agent in a comment\n",
    ),
    (
        "agent/mod.rs",
        "use crate::{model, pipeline::{assemble, symbolize}};\npub fn run() {}\n",
    ),
];

#[test]
fn crashwatch_itself_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crashwatch/src");
    let (files, imports, bad) = check(&root).unwrap();
    assert!(
        files > 100 && imports > 300,
        "{files} files, {imports} imports"
    );
    assert_eq!(bad, vec![]);
}

#[test]
fn a_clean_tree_passes() {
    let root = tree("clean", CLEAN);
    assert_eq!(check(&root).unwrap().2, vec![]);
}

#[test]
fn a_planted_upward_import_fails() {
    let mut files = CLEAN.to_vec();
    files.push((
        "model/report.rs",
        "use crate::{\n    model::crash::Crash,\n    pipeline::assemble::Assembler,\n};\n",
    ));
    let root = tree("up", &files);
    let bad = check(&root).unwrap().2;
    assert_eq!(
        bad,
        vec![Violation {
            file: "model/report.rs".into(),
            import: "crate::pipeline::assemble".into(),
            why: "an upper layer",
        }]
    );
    assert!(run(Some(root)).is_err());
}

#[test]
fn an_import_in_code_and_across_stages_fails() {
    let mut files = CLEAN.to_vec();
    files.push((
        "pipeline/symbolize/names.rs",
        "fn f() { let _ = crate::pipeline::assemble::Assembler::new(); crate::agent::run(); }\n",
    ));
    let root = tree("across", &files);
    let bad = check(&root).unwrap().2;
    let why: Vec<_> = bad.iter().map(|v| (v.import.as_str(), v.why)).collect();
    assert_eq!(
        why,
        vec![
            ("crate::pipeline::assemble", "another stage's insides"),
            ("crate::agent::run", "an upper layer"),
        ]
    );
}

#[test]
fn comments_and_longer_names_are_not_imports() {
    assert_eq!(
        paths(&strip_comments(
            "/* crate::agent */ // crate::web\nmy_crate::agent::x;\n"
        )),
        vec![]
    );
    assert_eq!(
        paths("use crate::{a::{b, c::d}, e};"),
        vec![
            ("a".into(), Some("b".into())),
            ("a".into(), Some("c".into())),
            ("e".into(), None)
        ]
    );
}
