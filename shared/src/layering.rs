//! Tests that keep the layout map in `lib.rs` true: no module of this crate (file by file, and
//! folder by folder) imports one that imports it back, and the ground (error codes, domain values,
//! the Redis connection, config, client profiles) imports nothing above it. Imports are read from
//! the source (`crate::`, `super::` and `self::` paths, `use` groups included), outside comments
//! and unit tests.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// A module: its path below the crate root (`["graphql", "service", "admit"]`; `[]` is `lib.rs`).
type Module = Vec<String>;

/// Every module of `src` with its file, `tests.rs` files and this one left out.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<Module, PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, src, out);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap_or(&p).with_extension("");
            let mut m: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if m.last().is_some_and(|l| l == "mod") || m == ["lib"] {
                m.pop();
            }
            if m.last().is_some_and(|l| l == "tests" || l == "layering") {
                continue;
            }
            out.insert(m, p);
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The code of a file without comments and without its unit tests (which may reach anywhere).
fn code(text: &str) -> String {
    let text = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |at| &text[..at]);
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths of a use tree at the start of `rest` (`a::b`, `a::{b, c::{d, e}}`), each as its
/// segments; a group's items are expanded recursively.
fn use_tree(rest: &str) -> Vec<Vec<String>> {
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == ' '))
        .unwrap_or(rest.len());
    let prefix: Vec<String> = rest[..end]
        .split("::")
        .map(|p| p.trim().to_owned())
        .take_while(|p| !p.is_empty() && !p.contains(' '))
        .collect();
    let tail = rest[..end].trim_end();
    if !(tail.is_empty() || tail.ends_with("::")) || !rest[end..].starts_with('{') {
        return vec![prefix];
    }
    // A group: split its items at depth 1 and expand each.
    let (mut depth, mut item, mut items) = (0, String::new(), Vec::new());
    for c in rest[end..].chars() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                items.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    items.push(item);
    let mut out = Vec::new();
    for item in items {
        for sub in use_tree(item.trim_start()) {
            let mut p = prefix.clone();
            p.extend(sub);
            out.push(p);
        }
    }
    out
}

/// The paths `src` names from `crate`, `super` or `self`, as (root, segments), use groups
/// expanded (`crate::a::{b, c::d}` names `a::b` and `a::c::d`).
fn named_paths(src: &str) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for root in ["crate", "super", "self"] {
        let pat = format!("{root}::");
        let mut at = 0;
        while let Some(found) = src[at..].find(&pat) {
            let start = at + found;
            at = start + pat.len();
            // A whole word only (`my_crate::` is not `crate::`).
            if src[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                continue;
            }
            out.extend(use_tree(&src[at..]).into_iter().map(|p| (root, p)));
        }
    }
    out
}

/// Module → the modules it names, resolved to the deepest module each path reaches; a module
/// naming its own descendants (declaring and re-exporting them) is not an edge.
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mods = modules(src);
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (me, file) in &mods {
        if me.is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap_or_default();
        // A folder's `mod.rs` is the module itself: `super` is its parent; a file's `super` is
        // its folder.
        let parent: Module = me[..me.len() - 1].to_vec();
        for (root, segs) in named_paths(&code(&text)) {
            let mut full = match root {
                "crate" => Vec::new(),
                "super" => parent.clone(),
                _ => me.clone(),
            };
            full.extend(segs);
            let Some(target) = (0..=full.len())
                .rev()
                .map(|n| full[..n].to_vec())
                .find(|m| mods.contains_key(m))
            else {
                continue;
            };
            if target.is_empty() || target.starts_with(me) {
                continue;
            }
            edges.entry(me.clone()).or_default().insert(target);
        }
    }
    edges
}

/// Fails with the path of the first cycle found.
fn assert_acyclic(edges: &BTreeMap<Module, BTreeSet<Module>>, what: &str) {
    let name = |m: &Module| m.join("::");
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(&Module, Vec<&Module>)> = vec![(start, vec![start])];
        while let Some((m, path)) = stack.pop() {
            for next in edges.get(m).into_iter().flatten() {
                assert!(
                    next != start,
                    "import cycle between {what}: {} -> {}",
                    path.iter()
                        .map(|m| name(m))
                        .collect::<Vec<_>>()
                        .join(" -> "),
                    name(next)
                );
                if seen.insert(next) {
                    let mut p = path.clone();
                    p.push(next);
                    stack.push((next, p));
                }
            }
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let edges = graph(&src());
    assert!(edges.len() > 40, "found the modules: {:?}", edges.keys());
    assert_acyclic(&edges, "modules");
}

#[test]
fn no_top_level_module_imports_one_that_imports_it_back() {
    let mut top: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, tos) in graph(&src()) {
        for to in tos {
            if from[0] != to[0] {
                top.entry(vec![from[0].clone()])
                    .or_default()
                    .insert(vec![to[0].clone()]);
            }
        }
    }
    assert!(top.len() > 10, "found the modules: {:?}", top.keys());
    assert_acyclic(&top, "top-level modules");
}

/// The ground: error codes, domain values and the Redis connection import nothing of this crate;
/// client profiles only domain values; config only those two.
#[test]
fn the_ground_imports_nothing_above_it() {
    let edges = graph(&src());
    let allowed: [(&str, &[&str]); 5] = [
        ("error", &[]),
        ("domain", &[]),
        ("redis_conn", &[]),
        ("profile", &["domain"]),
        ("config", &["profile", "domain"]),
    ];
    for (ground, may) in allowed {
        for (from, tos) in &edges {
            if from[0] != ground {
                continue;
            }
            for to in tos {
                assert!(
                    to[0] == ground || may.contains(&to[0].as_str()),
                    "{} imports {}: `{ground}` may import only {may:?}",
                    from.join("::"),
                    to.join("::")
                );
            }
        }
    }
}

/// The reader of imports itself: groups, `super` and whole words.
#[test]
fn imports_are_read_from_paths_and_groups() {
    let paths = named_paths(
        "use crate::{a::{b, c::{x, y}}, d};\nuse super::e::f;\nlet x = self::g::h();\nmy_crate::z;",
    );
    let got: Vec<String> = paths
        .iter()
        .map(|(r, p)| format!("{r}::{}", p.join("::")))
        .collect();
    assert_eq!(
        got,
        [
            "crate::a::b",
            "crate::a::c::x",
            "crate::a::c::y",
            "crate::d",
            "super::e::f",
            "self::g::h"
        ],
        "{paths:?}"
    );
}

/// The cycle check finds a cycle (through three modules) and names its path.
#[test]
#[should_panic(expected = "import cycle between modules: a -> b -> c -> a")]
fn a_cycle_is_found() {
    let m = |s: &str| vec![s.to_owned()];
    let edges = BTreeMap::from([
        (m("a"), BTreeSet::from([m("b")])),
        (m("b"), BTreeSet::from([m("c"), m("d")])),
        (m("c"), BTreeSet::from([m("a")])),
    ]);
    assert_acyclic(&edges, "modules");
}
