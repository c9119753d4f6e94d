//! Every repository path the deploy files and the docs name exists: a comment, a manifest or
//! a page that points at a file that is not there (the Containerfile once named
//! deploy/kubernetes/daemonset.yaml) sends its reader nowhere. The README's and the docs'
//! links reach a file and, with `#`, a heading of it; the README stays a short page that
//! links every doc.
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

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_` left out, spaces
/// as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown page's headings (code blocks left out).
fn anchors(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.push(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// `page: link` for each relative link of the Markdown page `page` (relative to the
/// repository) whose file, or heading after `#`, is not there.
fn broken_links(page: &Path, text: &str) -> Vec<String> {
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut broken = Vec::new();
    for c in link.captures_iter(text) {
        let l = &c[1];
        if l.contains("://") || l.starts_with("mailto:") {
            continue;
        }
        let (file, heading) = l.split_once('#').unwrap_or((l, ""));
        let target = if file.is_empty() {
            root().join(page)
        } else {
            root().join(page).parent().unwrap().join(file)
        };
        let ok = match std::fs::read_to_string(&target) {
            _ if heading.is_empty() => target.exists(),
            Ok(t) => anchors(&t).iter().any(|a| a == heading),
            Err(_) => false,
        };
        if !ok {
            broken.push(format!("{}: {l}", page.display()));
        }
    }
    broken
}

#[test]
fn the_readme_and_the_docs_link_only_to_what_exists() {
    let mut pages = vec![root().join("README.md")];
    pages.extend(
        files(&root().join("docs"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let rel = page.strip_prefix(root()).unwrap();
        broken.extend(missing(rel, &text));
        broken.extend(broken_links(rel, &text));
    }
    assert!(broken.is_empty(), "named or linked but absent: {broken:#?}");
    // Negative control.
    assert_eq!(
        broken_links(
            Path::new("docs/usage.md"),
            "[a](install.md#requirements) [b](install.md#nowhere) [c](gone.md) \
             [d](#configuration) [e](https://example.com/x.md)"
        ),
        [
            "docs/usage.md: install.md#nowhere",
            "docs/usage.md: gone.md"
        ]
    );

    // The README: the two commands first, at most 120 lines, every doc linked.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let first_block: Vec<&str> = readme
        .split("```")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(first_block.len(), 2, "{first_block:?}");
    assert!(first_block[0].contains("crashwatch run") && first_block[1].contains("cargo test"));
    let lines = readme.lines().count();
    assert!(
        lines <= 120,
        "README.md has {lines} lines: move some to docs/"
    );
    for page in &pages[1..] {
        let name = page.strip_prefix(root()).unwrap().display().to_string();
        assert!(
            readme.contains(&format!("({name})")),
            "README.md does not link {name}"
        );
    }
}
