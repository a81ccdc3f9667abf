//! Finds where in a YAML file a JSON Pointer points, so that validation
//! issues (which carry pointers like `/sources/0/dataTyp`) can be reported
//! with a line and column.
//!
//! The file is read once more into a span-carrying tree (serde-saphyr's
//! `Spanned`), only when there is something to report.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} column {}", self.line, self.column)
    }
}

enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<Spanned<String>, Spanned<Node>>()? {
                    entries.push(entry);
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

fn position(location: &serde_saphyr::Location) -> Option<Position> {
    let (line, column) = (location.line(), location.column());
    (line > 0).then_some(Position { line, column })
}

/// The position of the value (or, for a map key, of the key) that `pointer`
/// names. When the pointer goes deeper than the file (a missing field), the
/// deepest existing node is returned. `None` when the text cannot be read.
pub fn locate(yaml: &str, pointer: &str) -> Option<Position> {
    let root: Spanned<Node> = serde_saphyr::from_str(yaml).ok()?;
    let mut best = position(&root.referenced);
    let mut node = &root.value;
    for raw in pointer.split('/').skip(1) {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        match node {
            Node::Map(entries) => {
                let Some((key, value)) = entries.iter().find(|(k, _)| k.value == segment) else {
                    break;
                };
                best = position(&key.referenced).or(best);
                node = &value.value;
            }
            Node::Seq(items) => {
                let Some(item) = segment.parse::<usize>().ok().and_then(|i| items.get(i)) else {
                    break;
                };
                best = position(&item.referenced).or(best);
                node = &item.value;
            }
            Node::Scalar => break,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "id: x\nsources:\n  - kind: mock\n    id: s\n    dataTyp:\n      type: counter\n  - {kind: http, id: h}\n";

    #[test]
    fn finds_keys_and_list_items() {
        assert_eq!(
            locate(TEXT, "/sources/0/dataTyp"),
            Some(Position { line: 5, column: 5 })
        );
        assert_eq!(locate(TEXT, "/id"), Some(Position { line: 1, column: 1 }));
        assert_eq!(locate(TEXT, "/sources/1/kind").map(|p| p.line), Some(7));
    }

    #[test]
    fn a_missing_field_points_at_its_parent() {
        assert_eq!(locate(TEXT, "/sources/1/port").map(|p| p.line), Some(7));
    }
}
