//! The front page and the book against the code: every TOML example in `README.md` and
//! `docs/*.md` is a config both binaries start with, `docs/configuration.md` documents exactly
//! the keys the config loader accepts (with the right types and defaults), every relative link
//! and anchor in the Markdown resolves, every page of `docs/` is linked from the front page, and
//! `--help` points at the reference. Generic over `docs/*.md`: a new page is covered by being
//! there.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use shared::config::{
    BackendId, BackendsSettings, BinaryDefaults, ConfigError, FragmentKind, LoadOptions, Scope,
    Settings,
};

use crate::helpers::*;

fn root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `docs/*.md`, sorted.
fn docs_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    pages
}

/// The front page and the book: README.md and `docs/*.md`.
fn book() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    files.extend(docs_pages());
    files
}

/// A path relative to the repository root, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// One fenced code block: its info string (`toml`, `toml fragment`, `sh`), its text (dedented
/// by the fence's own indentation, as inside a list item) and the line it starts on.
struct Fence {
    info: String,
    text: String,
    line: usize,
}

fn fences(markdown: &str) -> Vec<Fence> {
    let mut out = Vec::new();
    let mut open: Option<(usize, Fence)> = None;
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let fence = Fence {
                        info: info.trim().to_owned(),
                        text: String::new(),
                        line: n + 1,
                    };
                    open = Some((indent, fence));
                }
            }
            Some((fence_indent, mut fence)) => {
                if trimmed.starts_with("```") && trimmed.trim_end() == "```" {
                    out.push(fence);
                } else {
                    let cut = line
                        .char_indices()
                        .take_while(|(i, c)| *i < fence_indent && *c == ' ')
                        .count();
                    fence.text.push_str(&line[cut..]);
                    fence.text.push('\n');
                    open = Some((fence_indent, fence));
                }
            }
        }
    }
    assert!(open.is_none(), "a code block is never closed");
    out
}

/// Loads `text` as the `--config` file of a binary with `defaults`, through the real loader
/// (defaults < file, then validation), with no environment.
fn load(text: &str, defaults: &BinaryDefaults) -> Result<Settings, ConfigError> {
    let path = std::env::temp_dir().join(format!("bff-docs-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    let opts = LoadOptions {
        file: Some(path.clone()),
        listen: None,
        env: Vec::new(),
    };
    let loaded = Settings::load(defaults, &opts);
    std::fs::remove_file(&path).unwrap();
    loaded
}

fn binaries() -> [(&'static str, BinaryDefaults); 2] {
    [
        ("bff-web", bff_web::defaults()),
        ("bff-mobile", bff_mobile::defaults()),
    ]
}

/// At most this many examples may be marked ```` ```toml fragment ````: a fragment is shown
/// without what it needs around it, so it is only parsed, not loaded.
const MAX_FRAGMENTS: usize = 3;

#[test]
fn every_toml_example_in_the_readme_and_the_docs_is_a_config_both_binaries_start_with() {
    let mut loaded = 0;
    let mut fragments = Vec::new();
    for file in book() {
        for fence in fences(&read(&file)) {
            let mut words = fence.info.split_whitespace();
            if words.next() != Some("toml") {
                continue;
            }
            let at = format!("{}:{}", shown(&file), fence.line);
            match words.collect::<Vec<_>>()[..] {
                [] => {}
                ["fragment"] => {
                    fragments.push(at);
                    continue;
                }
                ref other => panic!("{at}: unknown marks on a toml example: {other:?}"),
            }
            for (name, defaults) in binaries() {
                if let Err(e) = load(&fence.text, &defaults) {
                    panic!(
                        "{at}: this example does not start {name}: {e}\n{}",
                        fence.text
                    );
                }
            }
            loaded += 1;
        }
    }
    assert!(loaded >= 8, "found only {loaded} TOML examples");
    assert!(
        fragments.len() <= MAX_FRAGMENTS,
        "{} examples are marked `toml fragment` (at most {MAX_FRAGMENTS}): {fragments:?}",
        fragments.len()
    );
}

/// The stacked-policies example of docs/edge.md is a valid config and means what the page says.
#[test]
fn the_rate_limit_example_means_what_the_edge_page_says() {
    let page = read(&root().join("docs/edge.md"));
    let from = page
        .find("Per IP for everybody, and per signed-in user")
        .expect("the stacked-policies example in docs/edge.md");
    let example = fences(&page[from..])
        .into_iter()
        .find(|f| f.info == "toml")
        .unwrap();
    let s = load(&example.text, &bff_web::defaults()).unwrap();
    let r = &s.rate_limits;
    assert_eq!(r.store, "redis://redis.internal:6379");
    assert_eq!(r.redis_timeout, Duration::from_millis(50));
    assert_eq!(r.key_prefix, "bff:rl:");
    let names: Vec<&str> = r.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["per-ip", "per-user", "user-cost", "writes"]);
    assert_eq!(r.policies[0].scope, Scope::All);
    assert_eq!(r.policies[1].effective_burst(), 20);
    assert!(!r.policies[1].needs_operation());
    assert!(r.policies[2].needs_operation() && r.policies[3].needs_operation());
}

// ---------------------------------------------------------------------------------------------
// The configuration reference against the loader.
// ---------------------------------------------------------------------------------------------

/// The key no config struct has: probing with it makes serde list the fields it expected.
const PROBE: &str = "__probe__";

/// Maps of tables, whose keys are the operator's choice, and the placeholder the reference
/// writes for such a key.
const MAP_PLACEHOLDERS: &[(&str, &str)] = &[("backends", "<name>")];

/// Tables that are values in their own right (any key of a fixed value type), documented as one
/// key.
const FREE_FORM_TABLES: &[&str] = &["auth.mutation_scopes", "auth.subscription_scopes"];

/// A TOML document that sets `path` (keys, and `[]` for one element of an array) to `value`,
/// written as one line of inline tables and arrays.
fn toml_at(path: &[String], value: &str) -> String {
    let (first, rest) = path.split_first().unwrap();
    let mut v = value.to_owned();
    for seg in rest.iter().rev() {
        v = if seg == "[]" {
            format!("[{v}]")
        } else {
            format!("{{ {seg} = {v} }}")
        };
    }
    format!("{first} = {v}\n")
}

/// The fields serde expected where it met [`PROBE`] at `path`, if it refused it as an unknown
/// field of a struct.
fn fields_at(path: &[String]) -> Option<Vec<String>> {
    let text = toml_at(path, "0");
    let message = match load(&text, &bff_web::defaults()) {
        Ok(_) => return None,
        Err(e) => e.to_string(),
    };
    let after = &message[message.find(&format!("unknown field `{PROBE}`"))?..];
    let listed = after.split_once(',').map_or("", |(_, l)| l);
    Some(
        listed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

fn with(path: &[String], more: &[&str]) -> Vec<String> {
    let mut p = path.to_vec();
    p.extend(more.iter().map(|s| (*s).to_owned()));
    p
}

/// Every key the loader accepts, as the reference writes it (`routes[].prefix`,
/// `backends.<name>.url`, `cache.<kind>.ttl`), found by asking the loader itself: a struct
/// with `deny_unknown_fields` refuses [`PROBE`] naming all its fields, whether or not they
/// serialize; an array of tables or a map of tables is found by probing one element. What
/// refuses none of the probes is a leaf.
fn accepted_keys() -> BTreeSet<String> {
    fn walk(concrete: &[String], shown: &str, out: &mut BTreeSet<String>) {
        let child = |f: &str| {
            if shown.is_empty() {
                f.to_owned()
            } else {
                format!("{shown}.{f}")
            }
        };
        if let Some(fields) = fields_at(&with(concrete, &[PROBE])) {
            for f in fields {
                walk(&with(concrete, &[&f]), &child(&f), out);
            }
        } else if !concrete.is_empty()
            && let Some(fields) = fields_at(&with(concrete, &["[]", PROBE]))
        {
            for f in fields {
                walk(&with(concrete, &["[]", &f]), &format!("{shown}[].{f}"), out);
            }
        } else if !concrete.is_empty()
            && let Some(fields) = fields_at(&with(concrete, &[PROBE, PROBE]))
        {
            let (_, placeholder) = MAP_PLACEHOLDERS
                .iter()
                .find(|(map, _)| *map == shown)
                .unwrap_or_else(|| panic!("`{shown}` is a map of tables: give it a placeholder"));
            for f in fields {
                walk(
                    &with(concrete, &[PROBE, &f]),
                    &format!("{shown}.{placeholder}.{f}"),
                    out,
                );
            }
        } else {
            out.insert(shown.to_owned());
        }
    }
    let mut keys = BTreeSet::new();
    walk(&[], "", &mut keys);
    // The fragment kinds are fields of `cache`, one table each of the same shape; so would be
    // the backends, were they fields rather than a map.
    let kinds: Vec<&str> = FragmentKind::ALL.iter().map(|k| k.name()).collect();
    let backends: Vec<&str> = BackendId::ALL.iter().map(|b| b.name()).collect();
    keys.into_iter()
        .map(|k| {
            let segs: Vec<&str> = k.split('.').collect();
            match segs[..] {
                ["cache", kind, ref rest @ ..] if kinds.contains(&kind) && !rest.is_empty() => {
                    format!("cache.<kind>.{}", rest.join("."))
                }
                ["backends", name, ref rest @ ..]
                    if backends.contains(&name) && !rest.is_empty() =>
                {
                    format!("backends.<name>.{}", rest.join("."))
                }
                _ => k,
            }
        })
        .collect()
}

/// A documented key as a path into the serialized settings, with a placeholder replaced by one
/// real name; `None` inside an array (array elements have no defaults to compare).
fn concrete(key: &str) -> Option<Vec<String>> {
    if key.contains("[]") {
        return None;
    }
    Some(
        key.split('.')
            .map(|s| match s {
                "<name>" => BackendId::Profile.name().to_owned(),
                "<kind>" => FragmentKind::Title.name().to_owned(),
                s => s.to_owned(),
            })
            .collect(),
    )
}

fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, seg| v.get(seg.as_str()))
}

/// One row of a reference table.
struct Documented {
    kind: String,
    default: String,
    line: usize,
}

/// The rows of `docs/configuration.md`'s tables whose header starts with `key`: one key per
/// row, in backticks, then its type, default and meaning.
fn documented_keys() -> BTreeMap<String, Documented> {
    let page = read(&root().join("docs/configuration.md"));
    let mut keys = BTreeMap::new();
    let mut in_reference = false;
    for (n, line) in page.lines().enumerate() {
        let Some(row) = line.strip_prefix('|') else {
            in_reference = false;
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").map(str::trim).collect();
        if cells[0] == "key" {
            assert_eq!(
                cells[..3],
                ["key", "type", "default"],
                "line {}: a reference table's columns are key, type, default, meaning",
                n + 1
            );
            in_reference = true;
            continue;
        }
        if !in_reference || cells[0].starts_with("---") {
            continue;
        }
        let key = cells[0]
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .filter(|k| !k.contains('`'))
            .unwrap_or_else(|| panic!("line {}: one key in backticks per row", n + 1));
        let documented = Documented {
            kind: cells[1].to_owned(),
            default: cells[2].to_owned(),
            line: n + 1,
        };
        assert!(
            keys.insert(key.to_owned(), documented).is_none(),
            "`{key}` is documented twice"
        );
    }
    keys
}

#[test]
fn the_configuration_reference_documents_exactly_the_keys_the_loader_accepts() {
    let accepted = accepted_keys();
    let documented = documented_keys();
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    let extra: Vec<&String> = documented
        .keys()
        .filter(|k| !accepted.contains(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/configuration.md is out of step with the code.\n\
         Accepted but not documented: {missing:#?}\n\
         Documented but not accepted: {extra:#?}"
    );
    assert!(accepted.len() > 150, "only {} keys found", accepted.len());

    // The probes must see at least what the defaults serialize (a cross-check of the walk).
    let web = serde_json::to_value(Settings::defaults(&bff_web::defaults())).unwrap();
    let mut unseen = Vec::new();
    fn leaves(
        v: &Value,
        path: &mut Vec<String>,
        accepted: &BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        let key = normalized(path);
        if accepted.contains(&key) {
            return;
        }
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    path.push(k.clone());
                    leaves(v, path, accepted, out);
                    path.pop();
                }
            }
            // An array of tables (`routes`): its elements' keys were found.
            Value::Array(_) if accepted.iter().any(|k| k.starts_with(&format!("{key}[]."))) => {}
            _ => out.push(key),
        }
    }
    leaves(&web, &mut Vec::new(), &accepted, &mut unseen);
    assert!(
        unseen.is_empty(),
        "serialized but not found by the probes: {unseen:?}"
    );

    // A key that is a table yet refused no probe takes any key: right for a free-form map,
    // a hole in the walk for a struct that forgot `deny_unknown_fields`.
    for key in &accepted {
        let is_table = concrete(key)
            .and_then(|path| value_at(&web, &path).map(Value::is_object))
            .unwrap_or(false);
        assert!(
            !is_table || FREE_FORM_TABLES.contains(&key.as_str()),
            "`{key}` is a table whose unknown keys are not refused (deny_unknown_fields?)"
        );
    }
}

/// A path of the serialized defaults as the reference writes it.
fn normalized(path: &[String]) -> String {
    let kinds: Vec<&str> = FragmentKind::ALL.iter().map(|k| k.name()).collect();
    path.iter()
        .enumerate()
        .map(|(i, seg)| match (i, path[0].as_str()) {
            (1, "backends") => "<name>",
            (1, "cache") if kinds.contains(&seg.as_str()) => "<kind>",
            _ => seg.as_str(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The code spans of a table cell.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

#[test]
fn the_configuration_reference_states_each_keys_type_and_default_as_the_code_has_them() {
    let documented = documented_keys();
    let mut defaults_checked = 0;
    for (name, binary) in binaries() {
        let defaults = serde_json::to_value(Settings::defaults(&binary)).unwrap();
        for (key, doc) in &documented {
            let Some(path) = concrete(key) else { continue };
            let Some(default) = value_at(&defaults, &path).filter(|v| !v.is_null()) else {
                continue;
            };
            let at = format!("docs/configuration.md:{} `{key}`", doc.line);
            let type_fits = match doc.kind.as_str() {
                "integer" => default.is_u64() || default.is_i64(),
                "float" => default.is_number(),
                "bool" => default.is_boolean(),
                "string" | "duration" | "path" | "address" | "URL" | "secret" | "CIDR" => {
                    default.is_string()
                }
                "table" => default.is_object(),
                kind if kind.starts_with("list of ") => default.is_array(),
                kind => panic!("{at}: unknown type `{kind}`"),
            };
            assert!(
                type_fits,
                "{at}: documented as {} but the default is {default}",
                doc.kind
            );

            // The documented default, when it is one TOML value (or one per binary), loaded as
            // the key's value, must give the settings the defaults give.
            let spans = code_spans(&doc.default);
            let literal = match spans[..] {
                [one] => one,
                [web, mobile]
                    if doc.default.starts_with("web ") && doc.default.contains("mobile ") =>
                {
                    if name == "bff-web" { web } else { mobile }
                }
                _ => continue,
            };
            let text = toml_at(&path, literal);
            let loaded = load(&text, &binary)
                .unwrap_or_else(|e| panic!("{at}: the default `{literal}` does not load: {e}"));
            let loaded = serde_json::to_value(loaded).unwrap();
            assert_eq!(
                value_at(&loaded, &path),
                Some(default),
                "{at}: {name}'s default is not the documented `{literal}`"
            );
            defaults_checked += 1;
        }
    }
    assert!(
        defaults_checked > 200,
        "only {defaults_checked} defaults compared"
    );
}

// ---------------------------------------------------------------------------------------------
// Links and anchors.
// ---------------------------------------------------------------------------------------------

/// GitHub's anchor for a heading: lowercase, punctuation dropped (but `-` and `_`), each space
/// a hyphen.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The text of a Markdown file outside its fenced code blocks, line by line (code blocks
/// become empty lines, so line numbers stay right).
fn prose(markdown: &str) -> Vec<&str> {
    let mut fenced = false;
    markdown
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                ""
            } else if fenced {
                ""
            } else {
                l
            }
        })
        .collect()
}

/// The anchors of a Markdown file's headings, as GitHub makes them: a repeated heading gets
/// `-1`, `-2`, … in order.
fn anchors(markdown: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for line in prose(markdown) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let mut anchor = base.clone();
        while seen.contains_key(&anchor) {
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor.clone(), 0);
        out.push(anchor);
    }
    out
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    let md = "# A title\n## Targets\n```sh\n# not a heading\n```\n## Targets\n### Targets\n\
              ## TLS, client addresses, IP rules and CORS\n## `--help` (flags)\n#nope\n";
    assert_eq!(
        anchors(md),
        [
            "a-title",
            "targets",
            "targets-1",
            "targets-2",
            "tls-client-addresses-ip-rules-and-cors",
            "--help-flags"
        ]
    );
}

/// Every relative link target (`[text](target)`, images too) of a Markdown file, with its line.
fn links(markdown: &str) -> Vec<(usize, String)> {
    let text = prose(markdown).join("\n");
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        let line = text[..text.len() - rest.len() + at].lines().count();
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = &rest[..end];
        if !(target.contains("://") || target.starts_with("mailto:") || target.contains(' ')) {
            out.push((line.max(1), target.to_owned()));
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_in_the_readme_the_benchmarks_and_the_docs_resolves() {
    let mut files = book();
    files.push(root().join("BENCHMARKS.md"));
    let mut checked = BTreeMap::new();
    let mut broken = Vec::new();
    for file in &files {
        let text = read(file);
        let own = anchors(&text);
        let dir = file.parent().unwrap();
        let found = links(&text);
        for (line, target) in &found {
            let at = format!("{}:{line}", shown(file));
            let (path, frag) = target.split_once('#').unwrap_or((target, ""));
            let (file_anchors, name) = if path.is_empty() {
                (own.clone(), shown(file))
            } else {
                let linked = dir.join(path);
                let linked = linked.canonicalize().unwrap_or(linked);
                if !linked.exists() {
                    broken.push(format!("{at}: {path} does not exist"));
                    continue;
                }
                if frag.is_empty() || !path.ends_with(".md") {
                    continue;
                }
                (anchors(&read(&linked)), shown(&linked))
            };
            if !frag.is_empty() && !file_anchors.iter().any(|a| a == frag) {
                broken.push(format!("{at}: {name} has no heading #{frag}"));
            }
        }
        checked.insert(shown(file), found.len());
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked["README.md"] >= 12, "{checked:?}");
    assert!(
        checked.values().sum::<usize>() >= 50,
        "found only {checked:?} relative links"
    );
}

#[test]
fn every_page_of_the_book_is_linked_from_the_front_page() {
    let readme = read(&root().join("README.md"));
    let linked: BTreeSet<String> = links(&readme)
        .into_iter()
        .map(|(_, t)| t.split('#').next().unwrap_or_default().to_owned())
        .collect();
    let unlinked: Vec<String> = docs_pages()
        .iter()
        .map(|p| shown(p))
        .filter(|p| !linked.contains(p))
        .collect();
    assert!(
        unlinked.is_empty(),
        "README.md links to none of {unlinked:?}"
    );
    assert!(docs_pages().len() >= 12);
}

#[test]
fn help_names_the_default_addresses_and_the_configuration_reference() {
    for surface in [web(), mobile()] {
        let help = shared::cli::command(&surface).render_help().to_string();
        let listen = (surface.defaults)().listen.to_string();
        assert!(help.contains(&listen), "{}: {help}", surface.name);
        assert!(help.contains("docs/configuration.md"), "{help}");
        let fixtures = BackendsSettings::local_fixtures();
        for b in BackendId::ALL {
            let url = &fixtures.get(b).url;
            let origin = url.trim_start_matches("http://").split('/').next().unwrap();
            assert!(
                help.contains(origin),
                "{}: {origin} missing: {help}",
                surface.name
            );
        }
    }
}
