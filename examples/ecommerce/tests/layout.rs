//! The shape of `src/` (see ARCHITECTURE.md): every `crate::…` path in the
//! non-test code of `src/**/*.rs` is mapped to the part it names, and
//!
//! - the parts form no cycle (the graph is printed when they do);
//! - each part imports only the parts below it ([`ALLOWED`]):
//!   `tools → run → web → services → platform → api`;
//! - a service imports another service only through its `client` module;
//! - no file has more than [`MAX_LINES`] lines besides its unit tests: a
//!   longer file is split into a module folder along its concepts.
//!
//! `services/mod.rs` (what every service shares) is the part `services`,
//! which any service may import.
//!
//! Unit tests (`#[cfg(test)] mod …`) and comments are left out: a test may
//! reach further than the code it tests, and doc links do not compile into
//! dependencies. Paths through the crate root (`crate::Error`) are refused in
//! `src/`: they would hide the part they come from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The parts: top-level folders of `src/`, and one per service.
const TOP: [&str; 7] = [
    "api", "platform", "services", "web", "run", "tools", "rollout",
];

/// Which parts each part may import ("services" stands for every service).
/// `tools` drive the system from outside; `run` assembles it; `web` is the
/// storefront and console on top of the services; the services stand on
/// `platform` and `api`; `api` is the bottom.
const ALLOWED: [(&str, &[&str]); 7] = [
    ("api", &[]),
    ("platform", &["api"]),
    ("rollout", &["api", "platform"]),
    // The gateway routes orders traffic through rollout's CanaryRouter;
    // the console shows its state.
    ("services", &["api", "platform", "services", "rollout"]),
    ("web", &["api", "platform", "services", "rollout"]),
    ("run", &["api", "platform", "services", "web", "rollout"]),
    (
        "tools",
        &["api", "platform", "services", "web", "run", "rollout"],
    ),
];

/// Most lines in one file, its `#[cfg(test)]` modules left out.
const MAX_LINES: usize = 550;

/// The part a file (relative to `src/`) belongs to; `None` for the crate
/// root and the binary.
fn part_of_file(relative: &Path) -> Option<String> {
    let mut parts = relative.iter().map(|p| p.to_string_lossy().into_owned());
    let first = parts.next()?;
    if !TOP.contains(&first.as_str()) {
        return None;
    }
    if first == "services" {
        let service = parts.next()?;
        // services/mod.rs: what every service shares (`Started`).
        if service == "mod.rs" {
            return Some(first);
        }
        return Some(format!("services::{}", service.trim_end_matches(".rs")));
    }
    Some(first)
}

/// The source with comments, string literals and `#[cfg(test)]` modules
/// blanked out (same length, so line numbers stay), and how many lines the
/// test modules took.
fn code_only(text: &str) -> (String, usize) {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].bytes().take_while(|b| *b == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let start = i + 2 + hashes;
            let end = text[start..]
                .find(&close)
                .map_or(bytes.len(), |e| start + e + close.len());
            out.extend(
                text[i..end]
                    .bytes()
                    .map(|b| if b == b'\n' { b'\n' } else { b' ' }),
            );
            i = end;
        } else if bytes[i] == b'"' {
            out.push(b' ');
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                let skip = if bytes[i] == b'\\' { 2 } else { 1 };
                for _ in 0..skip.min(bytes.len() - i) {
                    out.push(if bytes[i] == b'\n' { b'\n' } else { b' ' });
                    i += 1;
                }
            }
            out.push(b' ');
            i += 1;
        } else if rest.starts_with("'{'") || rest.starts_with("'}'") || rest.starts_with("'\"'") {
            out.extend_from_slice(b"   ");
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let mut code = String::from_utf8(out).expect("ascii blanks keep utf-8");
    let mut test_lines = 0;
    // Blank every `#[cfg(test)]` module: from the attribute to its closing
    // brace (braces in strings and comments are gone already).
    while let Some(at) = code.find("#[cfg(test)]") {
        let after = &code[at..];
        let Some(open) = after.find('{') else { break };
        let is_mod = after[..open].contains("mod ");
        let mut depth = 0;
        let mut end = at + open;
        for (offset, c) in code[at + open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = at + open + offset + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        if !is_mod {
            // A test-only item other than a module: blank the attribute only.
            end = at + "#[cfg(test)]".len();
        }
        if is_mod {
            test_lines += code[at..end].matches('\n').count() + 1;
        }
        let blank: String = code[at..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        code.replace_range(at..end, &blank);
    }
    (code, test_lines)
}

/// Every path a `crate::…` use-tree in `code` names, expanded
/// (`crate::services::{catalog, orders::http}` gives two).
fn crate_paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        // `pub(crate)` and `$crate::` are not paths into this crate.
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == '(') {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        let mut trees = Vec::new();
        parse_tree(&code[from..], Vec::new(), &mut trees);
        found.extend(trees.into_iter().map(|t| (line, t)));
    }
    found
}

/// Parses `a::b::{c, d::e}` at the start of `text` into `paths`; returns
/// how many bytes it read.
fn parse_tree(text: &str, prefix: Vec<String>, paths: &mut Vec<Vec<String>>) -> usize {
    let mut rest = text.trim_start();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                return text.len() - after.len();
            }
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
                continue;
            }
            let used = parse_tree(rest, prefix.clone(), paths);
            if used == 0 {
                return text.len() - rest.len();
            }
            rest = &rest[used..];
        }
    }
    let ident: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        if !prefix.is_empty() {
            paths.push(prefix);
        }
        return 0;
    }
    rest = &rest[ident.len()..];
    let mut path = prefix;
    path.push(ident);
    if let Some(next) = rest.strip_prefix("::") {
        let used = parse_tree(next, path, paths);
        text.len() - next.len() + used
    } else {
        paths.push(path);
        text.len() - rest.len()
    }
}

/// The part a `crate::` path names, and for a service the module under it.
fn part_of_path(path: &[String]) -> Option<(String, Option<String>)> {
    let first = path.first()?;
    if first == "services" {
        let service = path.get(1)?;
        // An item of services/mod.rs (`Started`), not a service.
        if !service.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Some((first.clone(), None));
        }
        return Some((format!("services::{service}"), path.get(2).cloned()));
    }
    TOP.contains(&first.as_str()).then(|| (first.clone(), None))
}

fn layer(part: &str) -> &str {
    if part.starts_with("services::") {
        "services"
    } else {
        part
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// What is wrong with the tree at `src`; empty when nothing is.
fn check(src: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap().to_path_buf();
        let shown = relative.display().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        let (code, test_lines) = code_only(&text);
        let lines = text.lines().count() - test_lines;
        if lines > MAX_LINES {
            problems.push(format!(
                "{shown}: {lines} lines besides its tests (more than {MAX_LINES}; split it into a module folder)"
            ));
        }
        let Some(from) = part_of_file(&relative) else {
            continue;
        };
        for (line, path) in crate_paths(&code) {
            let Some((to, module)) = part_of_path(&path) else {
                problems.push(format!(
                    "{shown}:{line}: crate::{} goes through the crate root; name the part",
                    path.join("::")
                ));
                continue;
            };
            if to == from {
                continue;
            }
            let allowed = ALLOWED
                .iter()
                .find(|(p, _)| *p == layer(&from))
                .is_some_and(|(_, may)| may.contains(&layer(&to)));
            if !allowed {
                problems.push(format!(
                    "{shown}:{line}: {from} may not import {to} (crate::{})",
                    path.join("::")
                ));
            }
            if from.starts_with("services::")
                && to.starts_with("services::")
                && module.as_deref() != Some("client")
            {
                problems.push(format!(
                    "{shown}:{line}: {from} reaches into {to}'s internals (crate::{}); use its client",
                    path.join("::")
                ));
            }
            edges
                .entry(from.clone())
                .or_default()
                .entry(to)
                .or_insert_with(|| format!("{shown}:{line}"));
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        let shown: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} → {} ({})", w[0], w[1], edges[&w[0]][&w[1]]))
            .collect();
        problems.push(format!("import cycle between parts: {}", shown.join(", ")));
    }
    problems
}

/// A cycle in `edges` (its first node repeated at the end), if any.
fn find_cycle(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_parts_import_downwards_only() {
    let problems = check(&src());
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// A copy of `src/` with `edit` applied, checked.
fn check_edited(name: &str, edit: impl FnOnce(&Path)) -> Vec<String> {
    let copy = std::env::temp_dir().join(format!("ecommerce-layout-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    for file in rust_files(&src()) {
        let target = copy.join(file.strip_prefix(src()).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
    edit(&copy);
    let problems = check(&copy);
    std::fs::remove_dir_all(&copy).unwrap();
    problems
}

fn append(file: &Path, text: &str) {
    let mut old = std::fs::read_to_string(file).unwrap();
    old.push_str(text);
    std::fs::write(file, old).unwrap();
}

#[test]
fn an_injected_cycle_is_caught() {
    // platform → services::orders closes platform → … ← services.
    let problems = check_edited("cycle", |src| {
        append(
            &src.join("platform/db.rs"),
            "\nuse crate::services::orders::OrdersState;\n",
        )
    });
    assert!(
        problems.iter().any(|p| p.starts_with("import cycle")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("platform may not import services::orders")),
        "{problems:#?}"
    );
}

#[test]
fn a_service_reaching_into_another_is_caught_but_not_through_its_client() {
    let problems = check_edited("service", |src| {
        append(
            &src.join("services/shipping/mod.rs"),
            "\nuse crate::services::{orders::summary::SummaryRow, inventory::client::Line};\n",
        )
    });
    let into: Vec<_> = problems
        .iter()
        .filter(|p| p.contains("internals"))
        .collect();
    assert_eq!(into.len(), 1, "{problems:#?}");
    assert!(into[0].contains("services::orders"), "{into:?}");
}

#[test]
fn test_modules_comments_and_strings_do_not_count() {
    let problems = check_edited("tests", |src| {
        append(
            &src.join("api/mod.rs"),
            "\n// crate::run::local\n#[cfg(test)]\nmod more {\n    fn f() -> &'static str { \"}\" }\n    use crate::tools::client::ApiClient;\n}\nconst _S: &str = \"crate::tools\";\n",
        )
    });
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_long_file_is_caught() {
    let problems = check_edited("long", |src| {
        let body: String = (0..=MAX_LINES)
            .map(|i| format!("const C{i}: u8 = 0;\n"))
            .collect();
        append(&src.join("web/traffic.rs"), &body)
    });
    assert!(
        problems.iter().any(|p| p.starts_with("web/traffic.rs")),
        "{problems:#?}"
    );
}
