//! The import rule of `src/` (docs/architecture.md, "Layers and the import
//! rule"), checked on the source text:
//!
//! 1. No cycle between modules: if module A names a path in module B
//!    (`use crate::…`, `use super::…`, or a path written out in the code), B
//!    names nothing in A, directly or through others. A module is a file
//!    (`src/a/b.rs` is `crate::a::b`, `src/a/mod.rs` is `crate::a`); a path
//!    belongs to the longest module it starts with. Unit tests (`#[cfg(test)]
//!    mod … { … }`) are left out: a test may reach anywhere.
//! 2. `src/control` is the pure core: it imports nothing of the crate outside
//!    `crate::control`, and no HTTP, network, file or process crate or module
//!    (axum, reqwest, hyper, bollard, sled, tokio::net, tokio::fs,
//!    tokio::process, std::fs, std::net, std::process).
//! 3. The router (`crate::manager::api`) is a leaf of nothing: it imports
//!    the handlers, and no module of `crate::manager` other than its root
//!    (`manager/mod.rs`, which serves it) names it.
//!
//! The scanner is deliberately simple: it strips comments and string
//! literals, then reads every `crate::`/`super::`/`self::` path, expanding
//! `{…}` groups.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path, as segments after `crate` (empty: the crate root).
type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file under `src` is.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The code of a file without comments, string and char literals, and
/// without its `#[cfg(test)] mod … { … }` blocks.
fn code_of(text: &str) -> String {
    let bytes: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < bytes.len() && bytes[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < bytes.len() && !(bytes[i] == '*' && bytes[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&bytes, i) {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while bytes.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if bytes.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= bytes.len() {
                    break;
                }
                if bytes[j] == '"' && (0..hashes).all(|h| bytes.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < bytes.len() && bytes[i] != '"' {
                if bytes[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && bytes.get(i + 2) == Some(&'\'') {
            out.push_str("' '");
            i += 3;
        } else if c == '\'' && next == Some('\\') {
            // '\n', '\'', '\u{…}'
            let mut j = i + 2;
            while j < bytes.len() && bytes[j] != '\'' {
                j += 1;
            }
            out.push_str("' '");
            i = j + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    strip_test_modules(&out)
}

fn prev_is_ident(bytes: &[char], i: usize) -> bool {
    i > 0 && (bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_')
}

fn strip_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_inline_mod = (trimmed.starts_with("mod ") || trimmed.starts_with("pub mod "))
            && trimmed.find('{').is_some_and(|b| trimmed.find(';').is_none_or(|s| b < s));
        if !is_inline_mod {
            rest = after;
            continue;
        }
        let open = after.find('{').expect("checked");
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, ch) in after[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Parses a path or use tree at `s[i..]`; pushes every full path (segments)
/// into `out`, each prefixed with `prefix`. Returns where it stopped.
fn parse_tree(s: &[char], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        while i < s.len() && s[i].is_whitespace() {
            i += 1;
        }
        if i < s.len() && s[i] == '{' {
            i += 1;
            loop {
                while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == '}' {
                    return i + 1;
                }
                // `x as y`: the rename is not a path.
                if s[i..].starts_with(&['a', 's']) && s.get(i + 2).is_some_and(|c| c.is_whitespace()) {
                    i += 2;
                    while i < s.len() && s[i].is_whitespace() {
                        i += 1;
                    }
                    while i < s.len() && is_ident(s[i]) {
                        i += 1;
                    }
                    continue;
                }
                let before = i;
                i = parse_tree(s, i, path.clone(), out);
                if i == before {
                    i += 1;
                }
            }
        }
        if i < s.len() && s[i] == '*' {
            out.push(path);
            return i + 1;
        }
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        if i == start {
            out.push(path);
            return i;
        }
        let segment: String = s[start..i].iter().collect();
        if segment != "self" {
            path.push(segment);
        }
        if s.get(i) == Some(&':') && s.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            out.push(path);
            return i;
        }
    }
}

/// Every `crate::`, `super::` and `self::` path in `code`, and every path
/// that starts with the name of one of `here`'s `children`, resolved to
/// absolute segments from the crate root, as written in module `here`.
fn paths_in(code: &str, here: &Module, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let s: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if !is_ident(s[i]) || (i > 0 && (is_ident(s[i - 1]) || s[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        let word: String = s[start..i].iter().collect();
        if s.get(i) != Some(&':') || s.get(i + 1) != Some(&':') {
            continue;
        }
        let child = children.contains(&word);
        if !matches!(word.as_str(), "crate" | "super" | "self") && !child {
            continue;
        }
        // Resolve the leading crate/super/self segments (or a child's name,
        // which a module may write without `self::`).
        let mut base: Module = if child {
            let mut m = here.clone();
            m.push(word.clone());
            m
        } else if word == "crate" {
            Vec::new()
        } else if word == "super" {
            let mut m = here.clone();
            m.pop();
            m
        } else {
            here.clone()
        };
        i += 2;
        loop {
            let rest: String = s[i..(i + 7).min(s.len())].iter().collect();
            if rest == "super::" {
                base.pop();
                i += 7;
            } else {
                break;
            }
        }
        let mut trees = Vec::new();
        i = parse_tree(&s, i, base, &mut trees);
        found.extend(trees);
    }
    found
}

/// The longest module `path` starts with.
fn owner(modules: &BTreeSet<Module>, path: &[String]) -> Module {
    (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p)).unwrap_or_default()
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        format!("crate::{}", m.join("::"))
    }
}

struct Source {
    modules: BTreeSet<Module>,
    /// What each module's code names: (module, the paths it names).
    paths: BTreeMap<Module, Vec<Vec<String>>>,
    /// The raw code (comments, strings and tests stripped) of each module.
    code: BTreeMap<Module, String>,
}

fn read_source() -> Source {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // The binary is its own crate: `crate::` there is not the library.
    files.retain(|f| f != &src.join("main.rs") && !f.starts_with(src.join("bin")));
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut paths = BTreeMap::new();
    let mut code_by = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        let children: BTreeSet<String> = modules
            .iter()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(&module))
            .map(|m| m[module.len()].clone())
            .collect();
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let code = code_of(&text);
        paths.insert(module.clone(), paths_in(&code, &module, &children));
        code_by.insert(module.clone(), code);
    }
    Source { modules, paths, code: code_by }
}

/// The module graph: an edge A → B for each path A names in B.
fn graph(source: &Source) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, paths) in &source.paths {
        let entry = edges.entry(from.clone()).or_default();
        for path in paths {
            let to = owner(&source.modules, path);
            if &to != from {
                entry.insert(to);
            }
        }
    }
    edges
}

/// One cycle through the graph, if any (depth-first search).
fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        at: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(at) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|m| m == at).expect("on the stack");
                let mut cycle = stack[from..].to_vec();
                cycle.push(at.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(at.clone(), Mark::Open);
        stack.push(at.clone());
        for next in edges.get(at).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(at.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for start in edges.keys() {
        if let Some(cycle) = visit(start, edges, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_import_cycle_between_modules_of_src() {
    let source = read_source();
    let edges = graph(&source);
    // Every cycle, one at a time: drop an edge of each found and look again,
    // so the failure lists them all.
    let mut remaining = edges.clone();
    let mut cycles = Vec::new();
    while let Some(cycle) = find_cycle(&remaining) {
        let (a, b) = (cycle[cycle.len() - 2].clone(), cycle[cycle.len() - 1].clone());
        remaining.get_mut(&a).expect("an edge").remove(&b);
        cycles.push(cycle.iter().map(name).collect::<Vec<_>>().join(" -> "));
    }
    assert!(cycles.is_empty(), "import cycles between modules of src/:\n  {}", cycles.join("\n  "));
}

#[test]
fn the_control_core_imports_no_io_and_nothing_above_it() {
    const FORBIDDEN: &[&str] = &[
        "axum",
        "reqwest",
        "hyper",
        "bollard",
        "sled",
        "tokio::net",
        "tokio::fs",
        "tokio::process",
        "std::fs",
        "std::net",
        "std::process",
    ];
    let source = read_source();
    let control: Module = vec!["control".to_string()];
    let mut wrong = Vec::new();
    for (module, code) in &source.code {
        if !module.starts_with(&control) {
            continue;
        }
        for path in &source.paths[module] {
            if !path.starts_with(&control) {
                wrong.push(format!("{} names crate::{}", name(module), path.join("::")));
            }
        }
        let chars: Vec<char> = code.chars().collect();
        for bad in FORBIDDEN {
            let mut from = 0;
            while let Some(at) = code[from..].find(bad) {
                let at = from + at;
                from = at + bad.len();
                let before = code[..at].chars().next_back();
                let after = chars.get(code[..from].chars().count()).copied();
                let starts = before.is_none_or(|c| !is_ident(c) && c != ':');
                let ends = after.is_none_or(|c| !is_ident(c));
                if starts && ends {
                    wrong.push(format!("{} names {bad}", name(module)));
                    break;
                }
            }
        }
    }
    assert!(wrong.is_empty(), "src/control must stay pure:\n  {}", wrong.join("\n  "));
}

#[test]
fn nothing_in_the_manager_imports_the_router() {
    let source = read_source();
    let manager: Module = vec!["manager".to_string()];
    let router: Module = vec!["manager".to_string(), "api".to_string()];
    let mut wrong = Vec::new();
    for (module, paths) in &source.paths {
        if !module.starts_with(&manager) || module == &manager || module == &router {
            continue;
        }
        for path in paths {
            if path.starts_with(&router) {
                wrong.push(format!("{} names crate::{}", name(module), path.join("::")));
            }
        }
    }
    assert!(wrong.is_empty(), "handlers must not import the router (src/manager/api.rs):\n  {}", wrong.join("\n  "));
}

#[test]
fn the_scanner_reads_use_trees_and_written_out_paths() {
    let here: Module = vec!["manager".into(), "nodes".into()];
    let children: BTreeSet<String> = ["kid".to_string()].into();
    let code = code_of(
        "use super::api::{consistent, forwarded as f, x::{self, Y}};\n\
         fn g() { kid::run(); other::run(); }\n\
         use crate::control::nodes::*; // crate::not::this\n\
         fn f() { super::error::ApiError::internal(\"crate::nor::this\"); }\n\
         #[cfg(test)]\nmod tests { use crate::tests::only; }\n",
    );
    let paths: BTreeSet<String> = paths_in(&code, &here, &children).iter().map(|p| p.join("::")).collect();
    let expected: BTreeSet<String> = [
        "manager::api::consistent",
        "manager::api::forwarded",
        "manager::api::x",
        "manager::api::x::Y",
        "control::nodes",
        "manager::error::ApiError::internal",
        "manager::nodes::kid::run",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(paths, expected);
    let modules: BTreeSet<Module> =
        [vec![], vec!["manager".into()], vec!["manager".into(), "api".into()]].into_iter().collect();
    assert_eq!(owner(&modules, &["manager".into(), "api".into(), "x".into()]), vec!["manager", "api"]);
    assert_eq!(owner(&modules, &["clock".into()]), Vec::<String>::new());
}
