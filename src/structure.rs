//! The structure read of the source tree: which file imports which, its circles and its floors.
//!
//! A circle of imports means no file in it can be read, tested or changed without all the
//! others, and a new engine or kind added to one of them drags the rest along. The test below
//! reads `src/**/*.rs` as text (test code left out: a test may reach anywhere), builds the graph
//! of file imports (`use crate::…`, `crate::…::` paths, `super::`, `self::`, a parent's paths
//! into its child modules, the binaries' `caretaker::…`) and fails on any circle between files
//! or between top-level modules, printing it. Run it with `--nocapture` for the figures:
//! `cargo test --lib structure -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

/// One source file: its path below `src/`, its module path and its code without comments,
/// literals and test items.
struct File {
    name: String,
    module: Vec<String>,
    code: String,
}

/// The import graph: files, and for each file the files it imports.
pub struct Graph {
    pub files: Vec<String>,
    pub edges: BTreeMap<String, BTreeSet<String>>,
}

fn read_tree(src: &Path) -> Vec<File> {
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let name = path
                    .strip_prefix(src)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let text = fs::read_to_string(&path).unwrap();
                files.push(File {
                    module: module_path(&name),
                    code: strip_tests(&strip_literals(&text)),
                    name,
                });
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

/// The module path of a file below `src/`: `lib.rs` is the crate root, `a/mod.rs` and `a.rs`
/// are `a`; a binary (`main.rs`, `bin/*.rs`) is a root of its own, named by its file.
fn module_path(name: &str) -> Vec<String> {
    let stem = name.trim_end_matches(".rs");
    if stem == "lib" {
        return Vec::new();
    }
    if stem == "main" || stem.starts_with("bin/") {
        return vec![format!("<{stem}>")];
    }
    let mut parts: Vec<String> = stem.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code with comments, string and character literals blanked (newlines kept), so that a
/// path in a doc comment or a message is not read as an import.
fn strip_literals(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if (c == 'r' || (c == 'b' && next == Some('r')))
            && !b[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
            && {
                let mut j = i + if c == 'b' { 2 } else { 1 };
                while b.get(j) == Some(&'#') {
                    j += 1;
                }
                b.get(j) == Some(&'"')
            }
        {
            // A raw string: r#"…"#.
            let mut j = i + if c == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while b[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            while j < b.len() {
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                blank(&mut out, b[j]);
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal.
            i += 2;
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The code without its `#[cfg(test)]` items (test modules, test-only helpers).
fn strip_tests(code: &str) -> String {
    let mut out = code.to_string();
    let marker = "#[cfg(test)]";
    let mut from = 0;
    while let Some(at) = out[from..].find(marker).map(|p| p + from) {
        let bytes = out.as_bytes();
        let mut i = at + marker.len();
        let mut depth = 0usize;
        let mut end = bytes.len();
        while i < bytes.len() {
            match bytes[i] {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let blanked: String = out[at..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(at..end, &blanked);
        from = end;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A path a `use` brings in, and the name it is brought in as when renamed (`as name`).
type UsePath = (Vec<String>, Option<String>);

/// The paths of a `use` tree (`a::{b, c::{self, d as e}}`), each as its segments; a glob or
/// `self` stands for the module before it.
fn use_paths(tree: &str) -> Vec<UsePath> {
    fn parse(s: &[char], i: &mut usize, prefix: &[String], out: &mut Vec<UsePath>) {
        let mut path = prefix.to_vec();
        loop {
            while *i < s.len() && s[*i].is_whitespace() {
                *i += 1;
            }
            if *i >= s.len() {
                break;
            }
            if s[*i] == '{' {
                *i += 1;
                loop {
                    parse(s, i, &path, out);
                    while *i < s.len() && s[*i].is_whitespace() {
                        *i += 1;
                    }
                    if *i < s.len() && s[*i] == ',' {
                        *i += 1;
                        continue;
                    }
                    if *i < s.len() && s[*i] == '}' {
                        *i += 1;
                    }
                    return;
                }
            }
            if s[*i] == '*' {
                *i += 1;
                out.push((path, None));
                return;
            }
            let start = *i;
            while *i < s.len() && is_ident(s[*i]) {
                *i += 1;
            }
            let word: String = s[start..*i].iter().collect();
            if word.is_empty() {
                // `}` or `,`: the caller's.
                if !path.is_empty() && path.len() > prefix.len() {
                    out.push((path, None));
                }
                return;
            }
            if word != "self" {
                path.push(word);
            }
            while *i < s.len() && s[*i].is_whitespace() {
                *i += 1;
            }
            if s.get(*i) == Some(&':') && s.get(*i + 1) == Some(&':') {
                *i += 2;
                continue;
            }
            // `as alias` ends the path.
            let mut alias = None;
            if s[*i..].starts_with(&['a', 's']) {
                *i += 2;
                let from = *i;
                while *i < s.len() && (s[*i].is_whitespace() || is_ident(s[*i])) {
                    *i += 1;
                }
                alias = Some(s[from..*i].iter().collect::<String>().trim().to_string());
            }
            out.push((path, alias));
            return;
        }
    }
    let s: Vec<char> = tree.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    parse(&s, &mut i, &[], &mut out);
    out
}

/// A path read in a file: the inline modules (`mod name { … }`) it stands in, and its segments.
type Found = (Vec<String>, Vec<String>);

/// A `use` path: the name it brings in, whether it is re-exported (`pub use`, `pub(crate)
/// use`), and the path.
type Use = (String, bool, Found);

/// Every `a::b::c` path in the code outside `use` declarations, and every `use` path, each
/// with the inline modules it stands in.
fn paths(code: &str) -> (Vec<Found>, Vec<Use>) {
    let chars: Vec<char> = code.chars().collect();
    let mut inline = Vec::new();
    let mut uses = Vec::new();
    // The inline modules around the place read, each with the brace depth inside it.
    let mut mods: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut after_mod: Option<String> = None;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '{' => {
                depth += 1;
                if let Some(name) = after_mod.take() {
                    mods.push((name, depth));
                }
            }
            '}' => {
                if mods.last().is_some_and(|(_, d)| *d == depth) {
                    mods.pop();
                }
                depth = depth.saturating_sub(1);
            }
            ';' => after_mod = None,
            _ => {}
        }
        if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == '$')) {
            i += 1;
            continue;
        }
        let here: Vec<String> = mods.iter().map(|(m, _)| m.clone()).collect();
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        if word == "mod" {
            let s = chars[i..]
                .iter()
                .position(|c| !c.is_whitespace())
                .map_or(i, |p| p + i);
            let e = chars[s..]
                .iter()
                .position(|&c| !is_ident(c))
                .map_or(chars.len(), |p| p + s);
            after_mod = Some(chars[s..e].iter().collect());
            i = e;
            continue;
        }
        if word == "use" && chars.get(i).is_some_and(|c| c.is_whitespace()) {
            let end = chars[i..]
                .iter()
                .position(|&c| c == ';')
                .map_or(chars.len(), |p| p + i);
            let tree: String = chars[i..end].iter().collect();
            let before: String = chars[..start].iter().collect();
            let before = before.trim_end();
            let public = before.ends_with("pub")
                || before.ends_with(')')
                    && before
                        .rfind('(')
                        .is_some_and(|p| before[..p].trim_end().ends_with("pub"));
            for (path, alias) in use_paths(&tree) {
                if let Some(name) = alias.or_else(|| path.last().cloned()) {
                    uses.push((name, public, (here.clone(), path)));
                }
            }
            i = end;
            continue;
        }
        let mut path = vec![word];
        while chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            let s = i + 2;
            let mut e = s;
            while e < chars.len() && is_ident(chars[e]) {
                e += 1;
            }
            if e == s {
                break;
            }
            path.push(chars[s..e].iter().collect());
            i = e;
        }
        if path.len() > 1 {
            inline.push((here, path));
        }
    }
    (inline, uses)
}

/// The graph of `src/`.
pub fn graph(src: &Path) -> Graph {
    let files = read_tree(src);
    let by_module: HashMap<Vec<String>, String> = files
        .iter()
        .map(|f| (f.module.clone(), f.name.clone()))
        .collect();
    let read: Vec<(Vec<Found>, Vec<Use>)> = files.iter().map(|f| paths(&f.code)).collect();
    // What each file re-exports, by name: a path through a re-export leads to the file that
    // holds the item (`crate::config::values::Duration` to `checks/values.rs`), as it does for
    // the compiler.
    let mut reexports: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    for (file, (_, uses)) in files.iter().zip(&read) {
        for (name, public, (inner, path)) in uses {
            if *public
                && inner.is_empty()
                && let Some(abs) = absolute(file, inner, path, &by_module)
            {
                reexports
                    .entry(file.name.clone())
                    .or_default()
                    .insert(name.clone(), abs);
            }
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, (inline, uses)) in files.iter().zip(&read) {
        // Names a `use` brought in, so that `backup::snapshot::take` after `use
        // crate::backup` is read in full.
        let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
        let mut targets = Vec::new();
        for (name, _, (inner, path)) in uses {
            if let Some(abs) = absolute(file, inner, path, &by_module) {
                aliases.insert(name.clone(), abs.clone());
                targets.push(abs);
            }
        }
        for (inner, path) in inline {
            if let Some(abs) = absolute(file, inner, path, &by_module) {
                targets.push(abs);
            } else if let Some(base) = aliases.get(&path[0]) {
                let mut abs = base.clone();
                abs.extend(path[1..].iter().cloned());
                targets.push(abs);
            }
        }
        let entry = edges.entry(file.name.clone()).or_default();
        for abs in targets {
            if let Some(target) = owner(&abs, &by_module, &reexports, &file.name)
                && target != file.name
            {
                entry.insert(target);
            }
        }
    }
    Graph {
        files: files.into_iter().map(|f| f.name).collect(),
        edges,
    }
}

/// A path read in `file`, made absolute from the crate root; `None` when it leaves the crate
/// (std, a dependency) or names something local.
fn absolute(
    file: &File,
    inner: &[String],
    path: &[String],
    by_module: &HashMap<Vec<String>, String>,
) -> Option<Vec<String>> {
    let mut here: Vec<String> = if file.module.first().is_some_and(|m| m.starts_with('<')) {
        Vec::new()
    } else {
        file.module.clone()
    };
    here.extend(inner.iter().cloned());
    let first = path.first()?.as_str();
    let mut abs = match first {
        "crate" | "caretaker" => Vec::new(),
        "self" => here.clone(),
        "super" => {
            let mut m = here.clone();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                m.pop();
                rest = &rest[1..];
            }
            m.extend(rest.iter().cloned());
            return Some(m);
        }
        _ => {
            // A child module of this file's module.
            let mut child = here.clone();
            child.push(first.to_string());
            if by_module.contains_key(&child) {
                let mut m = here.clone();
                m.extend(path.iter().cloned());
                return Some(m);
            }
            return None;
        }
    };
    abs.extend(path[1..].iter().cloned());
    Some(abs)
}

/// The file that holds the item at an absolute path: its longest prefix that is a module,
/// or, when that module re-exports the next name, the file the re-export leads to. `from`
/// is the file reading the path: its own re-export of the item is an import, not a lead.
fn owner(
    abs: &[String],
    by_module: &HashMap<Vec<String>, String>,
    reexports: &HashMap<String, HashMap<String, Vec<String>>>,
    from: &str,
) -> Option<String> {
    let mut abs = abs.to_vec();
    // A chain of re-exports is followed a few steps at most: a re-export of itself ends it.
    for _ in 0..8 {
        let n = (0..=abs.len())
            .rev()
            .find(|&n| by_module.contains_key(&abs[..n]))?;
        let file = &by_module[&abs[..n]];
        let lead = (file != from)
            .then(|| abs.get(n))
            .flatten()
            .and_then(|name| reexports.get(file)?.get(name));
        match lead {
            Some(target) if *target != abs[..=n] => {
                let mut next = target.clone();
                next.extend(abs[n + 1..].iter().cloned());
                abs = next;
            }
            _ => return Some(file.clone()),
        }
    }
    let n = (0..=abs.len())
        .rev()
        .find(|&n| by_module.contains_key(&abs[..n]))?;
    Some(by_module[&abs[..n]].clone())
}

/// The strongly connected components of a graph (Tarjan), each sorted.
fn components(nodes: &[String], edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        let edges = t.edges;
        for w in edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[w].min(t.low[v]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.index[w].min(t.low[v]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut c = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                c.push(w.to_string());
                if w == v {
                    break;
                }
            }
            c.sort();
            t.out.push(c);
        }
    }
    let mut t = T {
        edges,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in nodes {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// One circle through a component, as `a -> b -> … -> a`.
fn circle(component: &[String], edges: &BTreeMap<String, BTreeSet<String>>) -> String {
    let inside: BTreeSet<&String> = component.iter().collect();
    let start = &component[0];
    // Breadth-first from the start back to it, inside the component.
    let mut prev: HashMap<&String, &String> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in edges.get(v).into_iter().flatten() {
            if !inside.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![v];
                let mut at = v;
                while at != start {
                    at = prev[at];
                    path.push(at);
                }
                path.reverse();
                path.push(start);
                return path
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" -> ");
            }
            if !prev.contains_key(w) {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    component.join(", ")
}

/// The floors of a graph: the longest import chain, counting each circle as one room.
fn floors(nodes: &[String], edges: &BTreeMap<String, BTreeSet<String>>) -> usize {
    let comps = components(nodes, edges);
    let of: HashMap<&str, usize> = comps
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.iter().map(move |n| (n.as_str(), i)))
        .collect();
    // Tarjan gives components in reverse topological order: a component's imports come first.
    let mut height = vec![1usize; comps.len()];
    for (i, c) in comps.iter().enumerate() {
        for v in c {
            for w in edges.get(v).into_iter().flatten() {
                let j = of[w.as_str()];
                if j != i {
                    height[i] = height[i].max(height[j] + 1);
                }
            }
        }
    }
    height.into_iter().max().unwrap_or(0)
}

/// The top-level module of a file: `jobs/backup/mod.rs` is in `jobs`.
fn top(file: &str) -> String {
    let stem = file.trim_end_matches(".rs");
    if stem.starts_with("bin/") {
        return stem.to_string();
    }
    stem.split('/').next().unwrap().to_string()
}

/// The figures of a graph, and its circles, at one level (files or top-level modules).
pub struct Read {
    pub rooms: usize,
    pub floors: usize,
    pub circles: Vec<String>,
    /// The members of each circle's component: every room that is in some circle with it.
    pub components: Vec<Vec<String>>,
    pub in_circles: usize,
}

fn read(nodes: &[String], edges: &BTreeMap<String, BTreeSet<String>>) -> Read {
    let comps: Vec<Vec<String>> = components(nodes, edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    Read {
        rooms: nodes.len(),
        floors: floors(nodes, edges),
        in_circles: comps.iter().map(Vec::len).sum(),
        circles: comps.iter().map(|c| circle(c, edges)).collect(),
        components: comps,
    }
}

/// The read of the tree by files, and by top-level modules.
pub fn reads(src: &Path) -> (Read, Read) {
    let g = graph(src);
    let files = read(&g.files, &g.edges);
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &g.edges {
        let entry = modules.entry(top(from)).or_default();
        for to in tos {
            if top(to) != top(from) {
                entry.insert(top(to));
            }
        }
    }
    let names: Vec<String> = g
        .files
        .iter()
        .map(|f| top(f))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    (files, read(&names, &modules))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    /// No file and no top-level module imports, through any chain, one that imports it.
    #[test]
    fn no_import_circle() {
        let (files, modules) = reads(&src());
        println!(
            "files: {}, floors: {}, circles: {}, files in circles: {}",
            files.rooms,
            files.floors,
            files.circles.len(),
            files.in_circles
        );
        println!(
            "top-level modules: {}, floors: {}, circles: {}, modules in circles: {}",
            modules.rooms,
            modules.floors,
            modules.circles.len(),
            modules.in_circles
        );
        let mut problems = Vec::new();
        for (c, members) in files.circles.iter().zip(&files.components) {
            problems.push(format!(
                "files: {c}\n  ({} files in circles with each other: {})",
                members.len(),
                members.join(", ")
            ));
        }
        for (c, members) in modules.circles.iter().zip(&modules.components) {
            problems.push(format!("modules: {c}\n  ({})", members.join(", ")));
        }
        assert!(
            problems.is_empty(),
            "import circles (break them by moving what both sides need to the lower one):\n{}",
            problems.join("\n")
        );
    }

    /// The reader finds imports in every form the tree uses, and not in comments or strings.
    #[test]
    fn the_reader_sees_every_form_of_import() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        let write = |name: &str, text: &str| {
            let path = src.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
        write(
            "a/mod.rs",
            "mod x;\nmod y;\nuse crate::b::{self, Thing as T};\nfn f() { x::go(); }\n",
        );
        write("a/x.rs", "use super::super::c::*;\n// crate::b::nothing\n");
        write("a/y.rs", "fn g() { let s = \"crate::c::no\"; b::z(); }\n");
        write(
            "b.rs",
            "fn h() { crate::c::deep::f(); }\n#[cfg(test)]\nmod tests { use crate::a::x; }\n",
        );
        write("c/mod.rs", "pub mod deep;\n");
        write(
            "c/deep.rs",
            "use super::super::a;\nmod inner {\n    use super::f;\n}\n",
        );
        // A path through a re-export leads to the file that holds the item.
        write("d.rs", "pub use crate::c::deep::Thing;\n");
        write(
            "e.rs",
            "use crate::d::Thing;\nfn f() {\n    crate::d::Thing::new();\n}\n",
        );
        let g = graph(src);
        let to = |f: &str| -> Vec<&str> { g.edges[f].iter().map(String::as_str).collect() };
        assert_eq!(to("a/mod.rs"), ["a/x.rs", "b.rs"]);
        assert_eq!(to("a/x.rs"), ["c/mod.rs"]);
        assert!(to("a/y.rs").is_empty(), "{:?}", to("a/y.rs"));
        assert_eq!(to("b.rs"), ["c/deep.rs"]);
        assert_eq!(to("c/deep.rs"), ["a/mod.rs"]);
        assert_eq!(to("d.rs"), ["c/deep.rs"]);
        assert_eq!(to("e.rs"), ["c/deep.rs"]);
        let (files, modules) = reads(src);
        assert_eq!(files.circles, ["a/mod.rs -> b.rs -> c/deep.rs -> a/mod.rs"]);
        assert_eq!(modules.circles, ["a -> c -> a"]);
        assert_eq!((files.rooms, files.floors, files.in_circles), (9, 4, 3));
    }
}
