//! The `{{ name }}` template syntax of manifest values (component variables,
//! `allowed_outbound_hosts`), and Spin's rule for variable names.

use std::collections::BTreeMap;

/// `{{ name }}` templates with literal text around them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(format!("unclosed `{{{{` in {text:?}"));
            };
            let name = after[..end].trim();
            if !is_valid_name(name) {
                return Err(format!(
                    "`{{{{ {name} }}}}` does not name a variable (lowercase letters, digits, underscores)"
                ));
            }
            parts.push(Part::Var(name.to_string()));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("stray `}}}}` in {text:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    pub fn references(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            Part::Literal(_) => None,
        })
    }

    pub fn render(&self, values: &BTreeMap<String, String>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Var(v) => match values.get(v) {
                    Some(value) => out.push_str(value),
                    None => return Err(format!("variable `{v}` has no value")),
                },
            }
        }
        Ok(out)
    }
}

/// Spin's variable names: lowercase ASCII letters, digits and underscores,
/// starting with a letter.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = Template::parse("http://{{ host }}:{{port}}/x").unwrap();
        assert_eq!(t.references().collect::<Vec<_>>(), ["host", "port"]);
        let mut vals = BTreeMap::new();
        vals.insert("host".into(), "127.0.0.1".into());
        vals.insert("port".into(), "80".into());
        assert_eq!(t.render(&vals).unwrap(), "http://127.0.0.1:80/x");
        assert!(Template::parse("{{ oops").is_err());
        assert!(Template::parse("{{ Bad }}").is_err());
        assert!(Template::parse("plain").unwrap().is_literal());
    }
}
