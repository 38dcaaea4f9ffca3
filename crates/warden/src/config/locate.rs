//! Finds the line a key path stands on, so errors found after parsing can still point at it.

use toml::de::{DeTable, DeValue};

pub fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `path` is dotted (`services.llama.models[1]`); returns the line of the deepest part found.
pub fn line_of_path(text: &str, path: &str) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    let mut parts = split_path(path).into_iter().peekable();
    while let Some(part) = parts.next() {
        let (key, value) = table.iter().find(|(k, _)| k.get_ref() == part)?;
        found = Some(key.span().start);
        let mut value = value;
        // Follow any `[n]` indices that come right after this key.
        while let Some(idx) = parts.peek().and_then(|p| p.parse::<usize>().ok()) {
            parts.next();
            match value.get_ref() {
                DeValue::Array(items) => match items.get(idx) {
                    Some(item) => {
                        found = Some(item.span().start);
                        value = item;
                    }
                    None => break,
                },
                _ => break,
            }
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found.map(|offset| line_of_offset(text, offset))
}

/// `a.b[2].c` → ["a", "b", "2", "c"].
fn split_path(path: &str) -> Vec<&str> {
    path.split(['.', '[', ']']).filter(|p| !p.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_indices() {
        let text =
            "[server]\nlisten = \"x\"\n\n[services.a]\nkind = \"process\"\nmodels = [\n  \"m1\",\n  \"m2\",\n]\n";
        assert_eq!(line_of_path(text, "server.listen"), Some(2));
        assert_eq!(line_of_path(text, "services.a.kind"), Some(5));
        assert_eq!(line_of_path(text, "services.a.models[1]"), Some(8));
        assert_eq!(line_of_path(text, "nothing"), None);
    }
}
