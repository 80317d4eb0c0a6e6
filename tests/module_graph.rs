//! The library's import graph has no cycle: no file reaches, through `crate::`, `super::`
//! and `self::` paths, back to itself. The layers this keeps are in
//! `docs/architecture-layers.md`; the forbidden imports of the layers above the
//! components are checked beside `state` (`state::tests`).
//!
//! Cheap on purpose: a text scan of `src/`, no parser crate. The module tree is read from
//! the `mod` declarations from `lib.rs` down (test modules left out), each path is
//! resolved to the deepest module file it names (`crate::gif::derived::DerivedDir` →
//! `src/gif/derived.rs`, `crate::gun::GunClient` → `src/gun/mod.rs`), and the file-level
//! graph is searched for a cycle, which is printed whole when there is one. A parent
//! naming its own child by a relative path (`use derived::DerivedDir;` in `gif/mod.rs`)
//! is not an edge: a module owns its children.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from the crate root: `["gif", "derived"]`; the root is empty.
type ModPath = Vec<String>;

/// Every library module and its file, from the `mod` declarations under `lib.rs`.
fn modules(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut found = BTreeMap::new();
    let mut pending = vec![(ModPath::new(), src.join("lib.rs"))];
    while let Some((path, file)) = pending.pop() {
        let source =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let children_dir = if matches!(name, "lib.rs" | "mod.rs") {
            file.parent().expect("in a folder").to_path_buf()
        } else {
            file.with_extension("")
        };
        for child in declared_modules(&source) {
            let flat = children_dir.join(format!("{child}.rs"));
            let nested = children_dir.join(&child).join("mod.rs");
            let child_file = if flat.exists() { flat } else { nested };
            let mut child_path = path.clone();
            child_path.push(child);
            pending.push((child_path, child_file));
        }
        found.insert(path, file);
    }
    found
}

/// The `mod name;` declarations of a file, without test modules (`#[cfg(test)]` on the
/// line before) and inline modules (`mod tests { … }`).
fn declared_modules(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut previous = "";
    for line in source.lines().map(str::trim) {
        if line.is_empty() {
            continue;
        }
        let declaration = ["pub(crate) ", "pub(super) ", "pub ", ""]
            .iter()
            .find_map(|vis| line.strip_prefix(vis).and_then(|l| l.strip_prefix("mod ")));
        if let Some(rest) = declaration
            && let Some(name) = rest.strip_suffix(';')
            && previous != "#[cfg(test)]"
        {
            out.push(name.trim().to_owned());
        }
        previous = line;
    }
    out
}

/// The code of a file without its comments and its test module (the `#[cfg(test)]` that
/// starts a line, by this crate's convention at the end of the file).
fn code_of(source: &str) -> String {
    let source = source.split("\n#[cfg(test)]").next().unwrap_or_default();
    let mut code = String::new();
    for line in source.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        // A `//` after a quote may be inside a string (`"http://…"`): keep the line.
        let line = match (line.find("//"), line.find('"')) {
            (Some(comment), None) => &line[..comment],
            (Some(comment), Some(quote)) if comment < quote => &line[..comment],
            _ => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    code
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every module path `code` names through `crate::`, `super::` or `self::`, each
/// relative prefix made absolute from `module`, `use` groups (`crate::{a::b, c}`)
/// expanded. Item names stay on the end (`["gun", "GunClient"]`); [`resolve`] drops them.
fn named_paths(code: &str, module: &[String]) -> Vec<ModPath> {
    let mut out = Vec::new();
    for head in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(head) {
            let start = from + at;
            from = start + head.len();
            let before = code[..start].chars().next_back();
            if before.is_some_and(|c| is_ident(c) || c == ':') {
                continue;
            }
            let base: ModPath = match head {
                "crate::" => Vec::new(),
                "self::" => module.to_vec(),
                _ => module[..module.len().saturating_sub(1)].to_vec(),
            };
            expand(&code[from..], base, &mut out);
        }
    }
    out
}

/// Reads one path (`a::b::{c, d::e}`) at the start of `rest`, after `base`.
fn expand(rest: &str, mut base: ModPath, out: &mut Vec<ModPath>) {
    let mut rest = rest;
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            for part in split_group(group) {
                let part = part.trim();
                if part == "self" || part.is_empty() {
                    out.push(base.clone());
                } else {
                    expand(part, base.clone(), out);
                }
            }
            return;
        }
        let ident: String = rest.chars().take_while(|c| is_ident(*c)).collect();
        if ident.is_empty() {
            break;
        }
        rest = &rest[ident.len()..];
        if ident == "super" {
            base.pop();
        } else {
            base.push(ident);
        }
        match rest.strip_prefix("::") {
            Some(more) => rest = more,
            None => break,
        }
    }
    out.push(base);
}

/// The top-level comma-separated parts of a `{…}` group (`group` starts after its `{`).
fn split_group(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0usize, 0, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                parts.push(&group[start..i]);
                return parts;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&group[start..]);
    parts
}

/// The deepest module `path` names.
fn resolve<'a>(path: &[String], modules: &'a BTreeMap<ModPath, PathBuf>) -> Option<&'a ModPath> {
    (0..=path.len())
        .rev()
        .find_map(|len| modules.get_key_value(&path[..len]).map(|(key, _)| key))
}

/// The file-level import graph of the library, by module path.
fn graph(modules: &BTreeMap<ModPath, PathBuf>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    modules
        .iter()
        .map(|(module, file)| {
            let source = std::fs::read_to_string(file).expect("source is readable");
            let targets = named_paths(&code_of(&source), module)
                .iter()
                .filter_map(|path| resolve(path, modules))
                .filter(|target| *target != module)
                .cloned()
                .collect();
            (module.clone(), targets)
        })
        .collect()
}

/// One cycle of `graph`, as the modules along it (the first repeated at the end).
fn find_cycle(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Option<Vec<ModPath>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &ModPath,
        graph: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        marks: &mut BTreeMap<ModPath, Mark>,
        stack: &mut Vec<ModPath>,
    ) -> Option<Vec<ModPath>> {
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next) {
                Some(Mark::Open) => {
                    let from = stack.iter().position(|m| m == next).expect("on the stack");
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, marks, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if !marks.contains_key(node)
            && let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

fn shown(module: &[String]) -> String {
    if module.is_empty() {
        "lib".to_owned()
    } else {
        module.join("::")
    }
}

fn path(text: &str) -> ModPath {
    text.split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_library_has_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    assert!(
        modules.len() > 60,
        "the walk found the modules ({})",
        modules.len()
    );
    let graph = graph(&modules);
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    assert!(edges > 150, "the scan found the imports ({edges})");
    if let Some(cycle) = find_cycle(&graph) {
        let names: Vec<String> = cycle.iter().map(|m| shown(m)).collect();
        panic!(
            "import cycle of {} modules: {}\n(docs/architecture-layers.md says who may import whom)",
            cycle.len() - 1,
            names.join(" → ")
        );
    }
}

#[test]
fn http_is_pure_and_config_names_no_component_code() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let graph = graph(&modules);
    for (module, targets) in &graph {
        // `http/`: pure RFC decisions, it imports nothing else of the crate.
        if module.first().is_some_and(|m| m == "http") {
            for target in targets {
                assert_eq!(
                    target.first(),
                    Some(&"http".to_owned()),
                    "{} imports {}: http/ is pure",
                    shown(module),
                    shown(target)
                );
            }
        }
    }
    // `config` only flattens the groups: the settings modules and the leaves they use.
    for target in &graph[&path("config")] {
        let name = shown(target);
        let allowed = name.ends_with("settings")
            || ["secret", "error", "lib", "cli"].contains(&name.as_str())
            || matches!(
                name.as_str(),
                "access_log" | "auth" | "cors" | "fs_pool" | "admission_settings"
            );
        assert!(
            allowed,
            "config imports {name}: it only flattens settings groups"
        );
    }
}

#[test]
fn the_scan_reads_every_form_of_path_and_finds_a_planted_cycle() {
    let code = code_of(
        "use crate::{a::b, c::{d, e::F}};\nuse super::sibling::X;\nfn f() { self::child::g(); crate::h::i(); }\n// crate::in_a_comment\nlet s = \"http://x\"; super::super::top::Y;\n#[cfg(test)]\nmod tests { use crate::only_in_tests; }",
    );
    let found = named_paths(&code, &path("m::n"));
    let names: BTreeSet<String> = found.iter().map(|p| shown(p)).collect();
    let expected: BTreeSet<String> = [
        "a::b",
        "c::d",
        "c::e::F",
        "m::sibling::X",
        "m::n::child::g",
        "h::i",
        "top::Y",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(names, expected);
    assert_eq!(
        declared_modules(
            "pub mod a;\nmod b;\npub(crate) mod c;\n#[cfg(test)]\nmod tests;\nmod inline {\n}"
        ),
        ["a", "b", "c"]
    );

    let planted: BTreeMap<ModPath, BTreeSet<ModPath>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(from, to)| (path(from), to.into_iter().map(path).collect()))
    .collect();
    let cycle = find_cycle(&planted).expect("the planted cycle");
    let names: Vec<String> = cycle.iter().map(|m| shown(m)).collect();
    assert_eq!(names, ["a", "b", "c", "a"]);
    let mut acyclic = planted;
    acyclic.insert(path("c"), BTreeSet::new());
    assert_eq!(find_cycle(&acyclic), None);
}
