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
        let mut node = self;
        let mut pos = self.pos;
        for segment in split_path(path) {
            match segment {
                Segment::Key(key) => match node.get(key) {
                    Some(entry) => {
                        pos = entry.key_pos;
                        node = &entry.value;
                    }
                    None => break,
                },
                Segment::Index(i) => match &node.kind {
                    NodeKind::Seq(items) if i < items.len() => {
                        node = &items[i];
                        pos = node.pos;
                    }
                    _ => break,
                },
            }
        }
        pos
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

/// Reads YAML text into a tree. A syntax error stops the reading (nothing after it can be
/// trusted); duplicate keys are collected and the first occurrence kept.
pub fn parse(text: &str) -> Result<(Node, Vec<SyntaxIssue>), SyntaxIssue> {
    let mut reader = Reader {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        issues: Vec::new(),
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

struct Reader<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: HashMap<usize, Node>,
    issues: Vec<SyntaxIssue>,
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

    fn node(&mut self, event: Event<'a>, span: Span, path: &str) -> Result<Node, SyntaxIssue> {
        let pos = Pos::from_span(&span);
        let (node, anchor) = match event {
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
                return self.anchors.get(&id).cloned().ok_or(SyntaxIssue {
                    pos,
                    path: path.to_string(),
                    message: "alias to an unknown anchor".into(),
                });
            }
            other => {
                return Err(SyntaxIssue {
                    pos,
                    path: path.to_string(),
                    message: format!("unexpected YAML event {other:?}"),
                });
            }
        };
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }

    fn map(&mut self, pos: Pos, path: &str) -> Result<Node, SyntaxIssue> {
        let mut entries: Vec<Entry> = Vec::new();
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
            let (event, span) = self.next()?;
            let value = self.node(event, span, &child)?;
            if let Some(first) = entries.iter().find(|e| e.key == key) {
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

    #[test]
    fn aliases_resolve_to_the_anchored_node() {
        let (root, _) = parse("a: &x {k: 1}\nb: *x\n").unwrap();
        assert!(matches!(
            root.get("b").unwrap().value.kind,
            NodeKind::Map(_)
        ));
    }
}
