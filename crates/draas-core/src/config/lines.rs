//! Where a JSON Pointer lands in a YAML text, so that a problem the API
//! names by pointer (`/queries/0/query`) can be shown at its line: in the
//! CLI's editor, in the dashboard's editor, and in the API's own answers to
//! YAML bodies.

/// The 0-based line of a block-style YAML document that a JSON Pointer
/// names, as far as it can be followed (the deepest line found).
pub fn line_of(text: &str, pointer: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.chars().take_while(|c| *c == ' ').count();
    let (mut from, mut to, mut min_indent) = (0usize, lines.len(), 0usize);
    let mut found = None;
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        let mut hit = None;
        if let Ok(index) = segment.parse::<usize>() {
            // The index-th "- " item at the shallowest indent in range.
            let items: Vec<usize> = (from..to)
                .filter(|&i| {
                    let l = lines[i];
                    l.trim_start().starts_with("- ") || l.trim() == "-"
                })
                .collect();
            if let Some(&first) = items.first() {
                let depth = indent(lines[first]);
                let same: Vec<usize> = items
                    .into_iter()
                    .filter(|&i| indent(lines[i]) == depth)
                    .collect();
                if let Some(&line) = same.get(index) {
                    let end = same.get(index + 1).copied().unwrap_or(to);
                    hit = Some((line, line, end, depth + 2));
                }
            }
        } else {
            for i in from..to {
                let l = lines[i];
                let body = l.trim_start().trim_start_matches("- ");
                let at = l.len() - body.len();
                if at >= min_indent && (body.starts_with(&format!("{segment}:"))) {
                    let end = (i + 1..to)
                        .find(|&j| {
                            let next = lines[j];
                            let trimmed = next.trim_start();
                            // A block sequence may sit at its key's indent.
                            let item_of_key = indent(next) == at && trimmed.starts_with("- ");
                            !trimmed.is_empty()
                                && !trimmed.starts_with('#')
                                && indent(next) <= at
                                && !item_of_key
                        })
                        .unwrap_or(to);
                    hit = Some((i, i + 1, end, at + 1));
                    break;
                }
            }
        }
        match hit {
            Some((line, start, end, deeper)) => {
                found = Some(line);
                from = start;
                to = end;
                min_indent = deeper.saturating_sub(1);
            }
            None => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_find_their_lines() {
        let yaml = "host: 0.0.0.0\nport: 8080\nsources:\n- kind: mock\n  id: counter\nqueries:\n- id: values\n  query: MATCH\n  sources:\n  - sourceId: counter\n- id: second\n  query: X\n";
        assert_eq!(line_of(yaml, "/port"), Some(1));
        assert_eq!(line_of(yaml, "/sources/0/id"), Some(4));
        assert_eq!(line_of(yaml, "/queries/0/query"), Some(7));
        assert_eq!(line_of(yaml, "/queries/1/query"), Some(11));
        assert_eq!(line_of(yaml, "/queries/0/sources/0/sourceId"), Some(9));
        assert_eq!(line_of(yaml, "/queries/5"), Some(5));
        assert_eq!(line_of(yaml, "/nothing"), None);
    }

    #[test]
    fn indented_documents_and_nested_maps() {
        let yaml = "name: x\nconfiguration:\n  port: 9\n  queries:\n  - id: q\n    query: BAD\n";
        assert_eq!(line_of(yaml, "/configuration/port"), Some(2));
        assert_eq!(line_of(yaml, "/configuration/queries/0/query"), Some(5));
    }
}
