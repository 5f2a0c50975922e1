//! A test that keeps the layout map in `lib.rs` true: the folder-level import graph of this crate
//! (which top-level module names which, outside comments and tests) has no cycle.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The top-level modules named in `src` (`crate::x…`, and the first segments inside
/// `use crate::{…}`), comments left out.
fn named(src: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // A use group: every path at depth 1 starts with a module name.
            let mut depth = 1;
            let mut start = true;
            let mut word = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => start = true,
                    c if start && (c.is_ascii_alphanumeric() || c == '_') => word.push(c),
                    _ => {
                        if !word.is_empty() {
                            out.insert(std::mem::take(&mut word));
                            start = false;
                        }
                    }
                }
            }
        } else {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(word);
        }
    }
    out.retain(|m| modules.contains(m));
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_top_level_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<String> = std::fs::read_dir(&src)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let name = name.strip_suffix(".rs").map_or(name.clone(), str::to_owned);
            (name != "lib" && name != "layering").then_some(name)
        })
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut all = Vec::new();
    files(&src, &mut all);
    for path in all {
        let rel = path.strip_prefix(&src).unwrap_or(&path);
        let Some(top) = rel.components().next().map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned()
        }) else {
            continue;
        };
        if !modules.contains(&top) || path.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // Unit tests at the end of a file may reach anywhere.
        let text = text
            .find("#[cfg(test)]\nmod tests")
            .map_or(text.as_str(), |at| &text[..at]);
        let mut names = named(text, &modules);
        names.remove(&top);
        edges.entry(top).or_default().extend(names);
    }
    // A cycle exists iff some module reaches itself.
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(&String, Vec<&String>)> = vec![(start, vec![start])];
        while let Some((m, path)) = stack.pop() {
            for next in edges.get(m).into_iter().flatten() {
                assert!(
                    next != start,
                    "import cycle between modules: {} -> {next}",
                    path.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" -> ")
                );
                if seen.insert(next) {
                    let mut p = path.clone();
                    p.push(next);
                    stack.push((next, p));
                }
            }
        }
    }
    assert!(edges.len() > 10, "found the modules: {edges:?}");
}
