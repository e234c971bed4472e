//! No import cycles between source files: a file that uses another (by a
//! `use crate::...`, `use super::...` or `use self::...` item, or a
//! `crate::...` path in its code) never leads back to itself. A cycle makes
//! two files one unit that can be read, tested and changed only together;
//! shared types go below their users instead (README, "Architecture").
//!
//! The check reads the source as text: a path is followed to the file of the
//! longest module prefix that exists (`crate::job::eventlog::EventLog` is
//! `src/job/eventlog.rs`, `crate::error::Error` is `src/error.rs`), unit
//! tests (from `#[cfg(test)]` on) are left out, and so are the `mod`
//! declarations that make the tree.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The module path of a source file: `src/job/mod.rs` is `job`,
/// `src/job/eventlog.rs` is `job::eventlog`, `src/main.rs` is the root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("a file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "main" | "lib")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read a source directory")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments, string literals and unit tests.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("//") {
            i += text[i..].find('\n').unwrap_or(text.len() - i);
        } else if text[i..].starts_with("/*") {
            i += text[i..].find("*/").map_or(text.len() - i, |e| e + 2);
        } else if bytes[i] == b'"' {
            // A string literal: skipped up to its closing quote.
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if bytes[i] == b'\'' && i + 2 < bytes.len() && bytes[i + 2] == b'\'' {
            // A character literal such as '"' (lifetimes go through).
            i += 3;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

/// Every path a file names from `crate`, `super` or `self`, as module
/// segments from the crate root (brace groups of `use` items expanded).
fn paths_in(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    // `use` items, whose brace groups may name several paths.
    for item in code.split(';') {
        // A `use` item runs to the `;`: the keyword is a word of its own.
        let Some(at) = item.match_indices("use ").map(|(i, _)| i).find(|&i| {
            i == 0 || {
                let c = item.as_bytes()[i - 1];
                !(c.is_ascii_alphanumeric() || c == b'_')
            }
        }) else {
            continue;
        };
        let tree: String = item[at + 4..]
            .replace(" as ", "@")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        for path in expand(&tree) {
            if let Some(abs) = absolute(&path, module) {
                paths.push(abs);
            }
        }
    }
    // `crate::a::b`, `super::a` and `self::a` anywhere in the code.
    for start in ["crate::", "super::", "self::"] {
        let mut rest = code;
        while let Some(at) = rest.find(start) {
            let boundary = at == 0 || {
                let c = rest.as_bytes()[at - 1];
                !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
            };
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if boundary {
                paths.extend(absolute(&tail[..end], module));
            }
            rest = &rest[at + end.max(1)..];
        }
    }
    paths
}

/// `a::{b,c::{d,e}}` to `a::b`, `a::c::d`, `a::c::e` (`self` in a group
/// names its prefix).
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        // `path as name`
        return vec![tree.split('@').next().unwrap_or(tree).to_string()];
    };
    let prefix = &tree[..open];
    let close = tree.rfind('}').unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            expand(p).into_iter().map(move |e| {
                if e == "self" {
                    prefix.trim_end_matches("::").to_string()
                } else {
                    format!("{prefix}{e}")
                }
            })
        })
        .collect()
}

/// A `use` path as segments from the crate root, or None when it does not
/// start in this crate.
fn absolute(path: &str, module: &[String]) -> Option<Vec<String>> {
    let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let (first, rest) = segments.split_first()?;
    // A file's `self` is its own module (a `mod.rs` file's too), `super`
    // the one above.
    let mut base: Vec<String> = module.to_vec();
    match *first {
        "crate" => base.clear(),
        "self" => {}
        "super" => {
            base.pop();
            let mut rest = rest;
            while rest.first() == Some(&"super") {
                base.pop();
                rest = &rest[1..];
            }
            return Some(
                base.into_iter()
                    .chain(rest.iter().map(|s| s.to_string()))
                    .collect(),
            );
        }
        _ => return None,
    }
    Some(
        base.into_iter()
            .chain(rest.iter().map(|s| s.to_string()))
            .collect(),
    )
}

/// The file a path leads to: that of its longest prefix that is a module.
fn file_of(modules: &BTreeMap<Vec<String>, PathBuf>, path: &[String]) -> Option<PathBuf> {
    (0..=path.len())
        .rev()
        .find_map(|n| modules.get(&path[..n]))
        .cloned()
}

/// Which files each file uses, for the crate whose root is `src`.
fn graph(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("read a source file");
        let module = module_of(src, file);
        let used: BTreeSet<PathBuf> = paths_in(&code_of(&text), &module)
            .iter()
            .filter_map(|p| file_of(&modules, p))
            .filter(|f| f != file)
            .collect();
        edges.insert(file.clone(), used);
    }
    edges
}

/// The cycles of the graph: each strongly connected component of more
/// than one file (Tarjan's algorithm), its files sorted.
fn cycles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        found: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a PathBuf) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        w.on_stack.insert(v);
        for u in w.edges.get(v).into_iter().flatten() {
            if !w.index.contains_key(u) {
                visit(w, u);
                let low = w.low[v].min(w.low[u]);
                w.low.insert(v, low);
            } else if w.on_stack.contains(u) {
                let low = w.low[v].min(w.index[u]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            while let Some(u) = w.stack.pop() {
                w.on_stack.remove(u);
                component.push(u.clone());
                if u == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                w.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v) {
            visit(&mut walk, v);
        }
    }
    walk.found
}

fn describe(src: &Path, found: &[Vec<PathBuf>]) -> String {
    found
        .iter()
        .map(|c| {
            let names: Vec<String> = c
                .iter()
                .map(|f| f.strip_prefix(src).unwrap_or(f).display().to_string())
                .collect();
            format!("  {}", names.join(" <-> "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each file of a cycle with the files of the cycle it uses.
fn uses_within(
    src: &Path,
    edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    found: &[Vec<PathBuf>],
) -> String {
    let name = |f: &PathBuf| f.strip_prefix(src).unwrap_or(f).display().to_string();
    let mut lines = Vec::new();
    for cycle in found {
        for file in cycle {
            let used: Vec<String> = edges[file]
                .iter()
                .filter(|u| cycle.contains(u))
                .map(name)
                .collect();
            lines.push(format!("  {} uses {}", name(file), used.join(", ")));
        }
    }
    lines.join("\n")
}

#[test]
fn no_source_file_leads_back_to_itself_through_its_imports() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    let found = cycles(&edges);
    assert!(
        found.is_empty(),
        "import cycles between source files (each line is one cycle's files; move what they share below them):\n{}\nwhere\n{}",
        describe(&src, &found),
        uses_within(&src, &edges, &found)
    );
}

#[test]
fn the_check_finds_a_planted_cycle_and_names_its_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("net")).unwrap();
    let write = |name: &str, text: &str| fs::write(src.join(name), text).unwrap();
    write("main.rs", "mod error;\nmod net;\nmod util;\nfn main() {}\n");
    write(
        "error.rs",
        "use crate::net::conn::Conn;\npub enum Error { A(Conn) }\n",
    );
    write("net/mod.rs", "pub mod conn;\npub mod listener;\n");
    write(
        "net/conn.rs",
        "use super::listener::{self, Listener};\n// use crate::util::x;\npub struct Conn;\n",
    );
    write(
        "net/listener.rs",
        "pub struct Listener;\nfn f() -> Result<(), crate::error::Error> { let _ = \"crate::util::x\"; Ok(()) }\n#[cfg(test)]\nmod tests { use crate::util::y; }\n",
    );
    write("util.rs", "use crate::{error, net::conn};\n");
    // A cycle made only by paths in code, without a `use`.
    write(
        "net/plain.rs",
        "fn f() -> super::tls::Tls { super::tls::Tls }\n",
    );
    write(
        "net/tls.rs",
        "pub struct Tls;\nfn g() { self::h(); super::plain::f(); }\nfn h() {}\n",
    );
    let found = cycles(&graph(&src));
    assert_eq!(
        describe(&src, &found),
        "  error.rs <-> net/conn.rs <-> net/listener.rs\n  net/plain.rs <-> net/tls.rs",
        "{found:?}"
    );
}
