//! `cargo xtask layers`: keeps crashwatch's imports going one way. The crate's top folders are
//! layers in a declared order ([`LAYERS`], bottom first); a file may import (`crate::…`
//! paths, in `use` items and in code) from its own layer or one below, never above. The
//! pipeline's stages ([`STAGES`]) are peers: one stage never reaches into another, only into
//! the model below them all. Test code counts too: a test that needs an upper layer lives up
//! there.
//!
//! Written here rather than taken from a crate: the tools that check module layering
//! (cargo-modules, cargo-deny) see crates, not folders, or need rustc's own output. This reads
//! source text: comments are stripped, then every `crate::a::b` path and every path at the
//! top of a `crate::{…}` group is taken; `super::` stays inside its folder by construction.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The crate's layers, bottom first.
pub const LAYERS: &[&str] = &[
    "util", "model", "read", "kernel", "pipeline", "outputs", "web", "hub", "agent", "commands",
];
/// The pipeline's stages, in the order data passes them (peers to this check).
pub const STAGES: &[&str] = &[
    "capture",
    "assemble",
    "symbolize",
    "enrich",
    "redact",
    "cluster",
];

/// An import that breaks the order.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub file: String,
    pub import: String,
    pub why: &'static str,
}

/// Runs the check on `tree` (crashwatch/src by default) and says what it found.
pub fn run(tree: Option<PathBuf>) -> Result<()> {
    let tree = tree.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("crashwatch")
            .join("src")
    });
    let (files, imports, bad) = check(&tree)?;
    for v in &bad {
        eprintln!("layers: {}: imports {} ({})", v.file, v.import, v.why);
    }
    if !bad.is_empty() {
        bail!(
            "{} imports break the layers ({}; stages {} are peers)",
            bad.len(),
            LAYERS.join(" < "),
            STAGES.join(", ")
        );
    }
    println!("layers: {files} files, {imports} imports, all downward");
    Ok(())
}

/// (files read, imports seen, violations) for the tree at `root`.
pub fn check(root: &Path) -> Result<(usize, usize, Vec<Violation>)> {
    let mut files = BTreeMap::new();
    collect(root, root, &mut files)?;
    let (mut seen, mut bad) = (0, Vec::new());
    for (rel, text) in &files {
        let Some((layer, stage)) = place(rel) else {
            continue;
        };
        for (first, second) in paths(&strip_comments(text)) {
            seen += 1;
            let Some(to) = LAYERS.iter().position(|l| *l == first) else {
                continue;
            };
            let import = format!("crate::{first}::{}", second.as_deref().unwrap_or("…"));
            if to > layer {
                bad.push(Violation {
                    file: rel.clone(),
                    import,
                    why: "an upper layer",
                });
            } else if to == layer && LAYERS[to] == "pipeline" {
                let other = second.as_deref().unwrap_or("");
                if stage.is_some_and(|s| s != other) && STAGES.contains(&other) {
                    bad.push(Violation {
                        file: rel.clone(),
                        import,
                        why: "another stage's insides",
                    });
                }
            }
        }
    }
    Ok((files.len(), seen, bad))
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries {
        let path = e?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|x| x == "rs") {
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            out.insert(rel, text);
        }
    }
    Ok(())
}

/// A file's layer (index in [`LAYERS`]) and, in the pipeline, its stage; None for the crate
/// root (`main.rs`), which declares the layers.
fn place(rel: &str) -> Option<(usize, Option<&str>)> {
    let mut parts = rel.split('/');
    let top = parts.next()?.trim_end_matches(".rs");
    let layer = LAYERS.iter().position(|l| *l == top)?;
    let stage = (top == "pipeline")
        .then(|| parts.next().map(|s| s.trim_end_matches(".rs")))
        .flatten()
        .filter(|s| *s != "mod");
    Some((layer, stage))
}

/// The text with `//` and `/* */` comments blanked (string literals kept as they are: a
/// `crate::` in a string is rare and would only make the check stricter).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Every `crate::` path's first two segments: `crate::a::b…`, and each path at the top of a
/// `crate::{…}` group (nested groups one level down: `crate::{a::{b, c}}`).
fn paths(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = closing(group);
            for item in split_top(&group[..end]) {
                out.extend(item_paths(item));
            }
            rest = &group[end..];
        } else {
            out.extend(item_paths(rest).into_iter().take(1));
        }
    }
    out
}

/// The first two segments of a path item (`a::b::c`, `a::{b, c}`, `a`), each group member
/// giving one.
fn item_paths(item: &str) -> Vec<(String, Option<String>)> {
    let item = item.trim_start();
    let first: String = item
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if first.is_empty() {
        return Vec::new();
    }
    let after = item[first.len()..].trim_start();
    let Some(after) = after.strip_prefix("::") else {
        return vec![(first, None)];
    };
    let after = after.trim_start();
    if let Some(group) = after.strip_prefix('{') {
        let end = closing(group);
        return split_top(&group[..end])
            .into_iter()
            .map(|m| (first.clone(), Some(ident(m)).filter(|s| !s.is_empty())))
            .collect();
    }
    vec![(first, Some(ident(after)).filter(|s| !s.is_empty()))]
}

fn ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Where the group opened just before `s` closes (or the end).
fn closing(s: &str) -> usize {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    s.len()
}

/// A group's items, split at its top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests;
