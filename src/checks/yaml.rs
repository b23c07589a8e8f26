//! The jobs file as a YAML tree that remembers where every key and value stands.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A line and column in the jobs file, both counted from 1 as editors show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_span(span: &Span) -> Self {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    /// `plain` scalars are the only ones YAML resolves to null, booleans and numbers;
    /// a quoted `"5"` stays a string.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// A problem found while reading the YAML itself, before any key is interpreted.
#[derive(Debug, Clone)]
pub struct SyntaxIssue {
    pub pos: Pos,
    pub path: String,
    pub message: String,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, plain: true }
            if value.is_empty() || value == "~" || value == "null" || value == "Null" || value == "NULL")
    }

    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Scalar { .. } if self.is_null() => "null".to_string(),
            NodeKind::Scalar { value, plain: true } => format!("`{value}`"),
            NodeKind::Scalar { value, .. } => format!("string \"{value}\""),
            NodeKind::Seq(_) => "a list".to_string(),
            NodeKind::Map(_) => "a mapping".to_string(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// Where a dotted key path (`jobs.backup.keep.daily`, `alerts.email.to[1]`) stands in the
    /// file: the key itself when present, else its nearest ancestor that is.
    pub fn locate(&self, path: &str) -> Pos {
        self.walk(path).0
    }

    /// The value at a dotted key path, if the path is in the file.
    pub fn find(&self, path: &str) -> Option<&Node> {
        match self.walk(path) {
            (_, node, true) => Some(node),
            _ => None,
        }
    }

    /// How far `path` leads: the position and value of the last segment found, and whether
    /// every segment was.
    fn walk(&self, path: &str) -> (Pos, &Node, bool) {
        let mut node = self;
        let mut pos = self.pos;
        for segment in split_path(path) {
            match segment {
                Segment::Key(key) => match node.get(key) {
                    Some(entry) => {
                        pos = entry.key_pos;
                        node = &entry.value;
                    }
                    None => return (pos, node, false),
                },
                Segment::Index(i) => match &node.kind {
                    NodeKind::Seq(items) if i < items.len() => {
                        node = &items[i];
                        pos = node.pos;
                    }
                    _ => return (pos, node, false),
                },
            }
        }
        (pos, node, true)
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        for index in rest.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

/// The most values (scalars, lists, mappings) a jobs file may hold once its aliases are
/// expanded. A real file holds a few hundred; the limit stops a "billion laughs" file, whose
/// few lines of nested aliases expand to billions of copies, long before memory runs out.
pub const MAX_VALUES: usize = 100_000;
/// The most text the values of a jobs file may hold once its aliases are expanded.
pub const MAX_TEXT: usize = 4 << 20;
/// The deepest nesting of lists and mappings; a real file nests 6 levels. Deeper input would
/// only cost stack in the readers that walk the tree.
pub const MAX_DEPTH: usize = 64;

/// Reads YAML text into a tree. A syntax error stops the reading (nothing after it can be
/// trusted); duplicate keys are collected and the first occurrence kept.
///
/// Aliases are expanded by copying the anchored value, so the tree is bounded while it is
/// read: at most [`MAX_VALUES`] values, [`MAX_TEXT`] bytes of text and [`MAX_DEPTH`] levels,
/// counting every copy. Going over stops the reading with an error at the value (or alias)
/// that went over.
pub fn parse(text: &str) -> Result<(Node, Vec<SyntaxIssue>), SyntaxIssue> {
    let mut reader = Reader {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        issues: Vec::new(),
        values: 0,
        text: 0,
        depth: 0,
        deepest: 0,
    };
    let root = loop {
        let (event, span) = reader.next()?;
        match event {
            Event::StreamStart | Event::DocumentStart(_) => continue,
            Event::StreamEnd | Event::DocumentEnd => {
                break Node {
                    pos: Pos::from_span(&span),
                    kind: NodeKind::Map(Vec::new()),
                };
            }
            event => break reader.node(event, span, "")?,
        }
    };
    loop {
        match reader.next()?.0 {
            Event::DocumentEnd => continue,
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                return Err(SyntaxIssue {
                    pos: root.pos,
                    path: String::new(),
                    message: "the file holds more than one YAML document; accepted: exactly one"
                        .into(),
                });
            }
            _ => {}
        }
    }
    Ok((root, reader.issues))
}

/// Points a syntax error caused by a tab in a line's indentation at the tab itself, with a
/// message that says so: the parser's own message names neither the tab nor its column.
pub fn blame_tabs(text: &str, issue: SyntaxIssue) -> SyntaxIssue {
    if !issue.message.starts_with("YAML syntax error") {
        return issue;
    }
    let tab_in_indent = |line: &str| {
        let indent = &line[..line.len() - line.trim_start_matches([' ', '\t']).len()];
        indent.find('\t')
    };
    let lines: Vec<&str> = text.lines().take(issue.pos.line).collect();
    let on_error_line = lines
        .last()
        .and_then(|l| tab_in_indent(l))
        .map(|col| (lines.len(), col));
    // The parser may trip over the tab later than its own line (at the next key); its message
    // then still names tabs.
    let earlier = || {
        issue
            .message
            .contains("tab")
            .then(|| {
                lines
                    .iter()
                    .enumerate()
                    .rev()
                    .find_map(|(i, l)| tab_in_indent(l).map(|col| (i + 1, col)))
            })
            .flatten()
    };
    match on_error_line.or_else(earlier) {
        Some((line, col)) => SyntaxIssue {
            pos: Pos {
                line,
                column: col + 1,
            },
            path: issue.path,
            message: "a tab is used for indentation here; accepted: spaces only (YAML does not allow tabs in indentation)".into(),
        },
        None => issue,
    }
}

struct Reader<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    /// Each anchored value with what one copy of it costs.
    anchors: HashMap<usize, (Node, Cost)>,
    issues: Vec<SyntaxIssue>,
    /// Values and bytes of text in the tree so far, every alias copy included.
    values: usize,
    text: usize,
    /// How many lists and mappings enclose the value being read.
    depth: usize,
    /// The deepest level reached within the value being read, alias copies included.
    deepest: usize,
}

/// What a value adds to the tree: its values and bytes of text, nested ones included, and
/// how many levels of lists and mappings it nests.
#[derive(Debug, Clone, Copy)]
struct Cost {
    values: usize,
    text: usize,
    height: usize,
}

fn too_deep(pos: Pos, path: &str) -> SyntaxIssue {
    SyntaxIssue {
        pos,
        path: path.to_string(),
        message: format!(
            "lists and mappings are nested more than {MAX_DEPTH} levels deep here, aliases included; accepted: up to {MAX_DEPTH} levels (a jobs file needs 6)"
        ),
    }
}

fn too_big(pos: Pos, path: &str, what: &str) -> SyntaxIssue {
    SyntaxIssue {
        pos,
        path: path.to_string(),
        message: format!(
            "{what} makes the file hold more than {MAX_VALUES} values or {} MiB of text once its aliases are expanded; accepted: up to {MAX_VALUES} values and {} MiB, aliases included (a jobs file needs a few hundred)",
            MAX_TEXT >> 20,
            MAX_TEXT >> 20
        ),
    }
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), SyntaxIssue> {
        match self.parser.next_event() {
            Some(Ok(pair)) => Ok(pair),
            Some(Err(e)) => Err(SyntaxIssue {
                pos: Pos {
                    line: e.marker().line(),
                    column: e.marker().col() + 1,
                },
                path: String::new(),
                message: format!("YAML syntax error: {}", e.info()),
            }),
            None => Err(SyntaxIssue {
                pos: Pos::default(),
                path: String::new(),
                message: "YAML ended unexpectedly".into(),
            }),
        }
    }

    /// Adds `cost` to the tree's size, or says where the file went over the limits.
    fn count(&mut self, cost: Cost, pos: Pos, path: &str, what: &str) -> Result<(), SyntaxIssue> {
        self.values = self.values.saturating_add(cost.values);
        self.text = self.text.saturating_add(cost.text);
        if self.values > MAX_VALUES || self.text > MAX_TEXT {
            return Err(too_big(pos, path, what));
        }
        Ok(())
    }

    fn node(&mut self, event: Event<'a>, span: Span, path: &str) -> Result<Node, SyntaxIssue> {
        let pos = Pos::from_span(&span);
        let before = (self.values, self.text);
        if let Event::Scalar(value, ..) = &event {
            let cost = Cost {
                values: 1,
                text: value.len(),
                height: 0,
            };
            self.count(cost, pos, path, "this value")?;
        }
        let container = matches!(event, Event::SequenceStart(..) | Event::MappingStart(..));
        if container {
            let cost = Cost {
                values: 1,
                text: 0,
                height: 1,
            };
            self.count(cost, pos, path, "this value")?;
            if self.depth >= MAX_DEPTH {
                return Err(too_deep(pos, path));
            }
        }
        let outer = std::mem::replace(&mut self.deepest, self.depth);
        if container {
            self.depth += 1;
            self.deepest = self.depth;
        }
        let built = self.build(event, pos, path);
        if container {
            self.depth -= 1;
        }
        let height = self.deepest - self.depth;
        self.deepest = self.deepest.max(outer);
        let (node, anchor) = built?;
        if anchor > 0 {
            let cost = Cost {
                values: self.values - before.0,
                text: self.text - before.1,
                height,
            };
            self.anchors.insert(anchor, (node.clone(), cost));
        }
        Ok(node)
    }

    /// The value that starts with `event`, and the anchor it defines (0 for none).
    fn build(
        &mut self,
        event: Event<'a>,
        pos: Pos,
        path: &str,
    ) -> Result<(Node, usize), SyntaxIssue> {
        Ok(match event {
            Event::Scalar(value, style, anchor, _tag) => (
                Node {
                    pos,
                    kind: NodeKind::Scalar {
                        value: value.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                },
                anchor,
            ),
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next()?;
                    if let Event::SequenceEnd = event {
                        break;
                    }
                    let child = format!("{path}[{}]", items.len());
                    items.push(self.node(event, span, &child)?);
                }
                (
                    Node {
                        pos,
                        kind: NodeKind::Seq(items),
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, _) => (self.map(pos, path)?, anchor),
            Event::Alias(id) => {
                let Some(cost) = self.anchors.get(&id).map(|(_, cost)| *cost) else {
                    return Err(SyntaxIssue {
                        pos,
                        path: path.to_string(),
                        message: "alias to an unknown anchor".into(),
                    });
                };
                // Counted before it is copied: the copy is what would exhaust memory, and its
                // nesting adds to where it stands.
                self.count(cost, pos, path, "this alias")?;
                if self.depth + cost.height > MAX_DEPTH {
                    return Err(too_deep(pos, path));
                }
                self.deepest = self.deepest.max(self.depth + cost.height);
                let node = self.anchors[&id].0.clone();
                // The copy keeps the anchor's positions; the alias is where it stands.
                (Node { pos, ..node }, 0)
            }
            other => {
                return Err(SyntaxIssue {
                    pos,
                    path: path.to_string(),
                    message: format!("unexpected YAML event {other:?}"),
                });
            }
        })
    }

    fn map(&mut self, pos: Pos, path: &str) -> Result<Node, SyntaxIssue> {
        let mut entries: Vec<Entry> = Vec::new();
        // Where each key stands in `entries`: duplicates are found in constant time, so a file
        // of 20,000 keys reads in linear time.
        let mut index: HashMap<String, usize> = HashMap::new();
        loop {
            let (event, span) = self.next()?;
            if let Event::MappingEnd = event {
                break;
            }
            let key_pos = Pos::from_span(&span);
            let key = match event {
                Event::Scalar(value, ..) => value.into_owned(),
                _ => {
                    return Err(SyntaxIssue {
                        pos: key_pos,
                        path: path.to_string(),
                        message: "a key must be a plain string; accepted: `name: value`".into(),
                    });
                }
            };
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            // Keys are copied with their mapping, so their text counts as a value's does.
            let cost = Cost {
                values: 0,
                text: key.len(),
                height: 0,
            };
            self.count(cost, key_pos, &child, "this key")?;
            let (event, span) = self.next()?;
            let value = self.node(event, span, &child)?;
            if let Some(first) = index.get(&key).map(|&i| &entries[i]) {
                self.issues.push(SyntaxIssue {
                    pos: key_pos,
                    path: child,
                    message: format!(
                        "duplicate key `{key}` (first defined at line {}); accepted: each key once",
                        first.key_pos.line
                    ),
                });
                continue;
            }
            index.insert(key.clone(), entries.len());
            entries.push(Entry {
                key,
                key_pos,
                value,
            });
        }
        Ok(Node {
            pos,
            kind: NodeKind::Map(entries),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_point_at_keys_and_values() {
        let (root, issues) = parse("a:\n  b: 1\n  c: [x, y]\n").unwrap();
        assert!(issues.is_empty());
        assert_eq!(root.locate("a.b"), Pos { line: 2, column: 3 });
        assert_eq!(
            root.locate("a.c[1]"),
            Pos {
                line: 3,
                column: 10
            }
        );
        assert_eq!(root.locate("a.missing"), Pos { line: 1, column: 1 });
    }

    #[test]
    fn duplicate_keys_are_reported_and_the_first_kept() {
        let (root, issues) = parse("jobs:\n  x: 1\n  x: 2\n").unwrap();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].pos, Pos { line: 3, column: 3 });
        assert!(issues[0].message.contains("first defined at line 2"));
        let NodeKind::Scalar { value, .. } =
            &root.get("jobs").unwrap().value.get("x").unwrap().value.kind
        else {
            panic!("scalar expected")
        };
        assert_eq!(value, "1");
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1);
        assert!(err.message.starts_with("YAML syntax error"));
    }

    /// (what, text, line of the error, phrase)
    const TOO_BIG: &[(&str, &str, usize, &str)] = &[
        (
            "billion laughs",
            "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
            5,
            "this alias makes the file hold more than 100000 values",
        ),
        (
            "nesting by aliases",
            "a: &a [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[x]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\nb: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
            2,
            "nested more than 64 levels deep here, aliases included",
        ),
    ];

    #[test]
    fn the_tree_is_bounded_while_it_is_read_aliases_included() {
        for (what, text, line, phrase) in TOO_BIG {
            let err = parse(text).expect_err(what);
            assert_eq!(err.pos.line, *line, "{what}: {err:?}");
            assert!(err.message.contains(phrase), "{what}: {}", err.message);
        }
        // Just inside the limits: 64 levels, and an alias copied many times.
        let deep = format!("a: {}x{}\n", "[".repeat(63), "]".repeat(63));
        assert!(parse(&deep).is_ok());
        let copies = format!("a: &a [1, 2, 3]\nb: [{}]\n", vec!["*a"; 1000].join(", "));
        assert!(parse(&copies).is_ok());
    }

    #[test]
    fn aliases_resolve_to_the_anchored_node() {
        let (root, _) = parse("a: &x {k: 1}\nb: *x\n").unwrap();
        assert!(matches!(
            root.get("b").unwrap().value.kind,
            NodeKind::Map(_)
        ));
    }
}
