//! Every repository path the deploy files name exists: a comment or a manifest that points at
//! a file that is not there (the Containerfile once named deploy/kubernetes/daemonset.yaml)
//! sends its reader nowhere.
use std::path::{Path, PathBuf};

use super::root;

/// The repository paths `text` names: words that start with one of its top folders.
fn named_paths(text: &str) -> Vec<String> {
    let path = regex::Regex::new(
        r"(?:^|[^\w/.-])((?:deploy|docs|scripts|xtask|crashwatch(?:-common|-ebpf)?/(?:src|tests))/[\w./-]*)",
    )
    .unwrap();
    path.captures_iter(text)
        .map(|c| c[1].trim_end_matches(['.', ',', ':', ';']).to_string())
        .collect()
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// `file: path` for each path `text` names that does not exist.
fn missing(file: &Path, text: &str) -> Vec<String> {
    named_paths(text)
        .into_iter()
        .filter(|p| !root().join(p).exists())
        .map(|p| format!("{}: {p}", file.display()))
        .collect()
}

#[test]
fn the_deploy_files_name_only_files_that_exist() {
    let mut checked = 0;
    let mut broken = Vec::new();
    for f in files(&root().join("deploy")) {
        let text = std::fs::read_to_string(&f).unwrap();
        checked += named_paths(&text).len();
        broken.extend(missing(f.strip_prefix(root()).unwrap(), &text));
    }
    assert!(broken.is_empty(), "named but absent: {broken:#?}");
    assert!(checked > 10, "only {checked} paths found");
    // Negative control.
    assert_eq!(
        missing(
            Path::new("x"),
            "# see deploy/kubernetes/daemonset.yaml. (deploy/config.toml)"
        ),
        ["x: deploy/kubernetes/daemonset.yaml"]
    );
}
