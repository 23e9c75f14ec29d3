//! containerd's filter language (github.com/containerd/containerd/filters), as `ctr snapshots ls`
//! and containerd's List requests use it:
//!
//! ```text
//! filter    := selector ("," selector)*          every selector must match
//! selector  := fieldpath [operator value]       no operator: the field is present
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z_][A-Za-z0-9_]*
//! operator  := "==" | "!=" | "~="              ~= is a regular expression match
//! value     := quoted | [^\s,|]+
//! quoted    := "..." (with \ escapes) | '...' | `...`
//! ```
//!
//! A List request carries several filters; a snapshot is listed when any of them matches (a
//! `|` inside one string also separates alternatives).

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Present,
    Equal,
    NotEqual,
    Matches,
}

#[derive(Clone, Debug)]
pub struct Selector {
    pub path: Vec<String>,
    pub op: Op,
    pub value: String,
    re: Option<regex_lite::Regex>,
}

/// Alternatives (any) of conjunctions (all) of selectors.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub any: Vec<Vec<Selector>>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest filter string accepted (containerd's own are short; this bounds the work).
const MAX_FILTER: usize = 64 << 10;

impl Filter {
    /// Parse the filters of one request; no filters (or only empty ones) match everything.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filter, ParseError> {
        let mut any = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if f.trim().is_empty() {
                continue;
            }
            if f.len() > MAX_FILTER {
                return Err(ParseError(format!(
                    "filter is {} bytes long; at most {MAX_FILTER}",
                    f.len()
                )));
            }
            let mut p = Parser {
                s: f.as_bytes(),
                i: 0,
                text: f,
            };
            any.extend(p.filter()?);
        }
        Ok(Filter { any })
    }

    /// Does the object whose fields `field` returns match? `field` returns None for a field
    /// the object does not have.
    pub fn matches(&self, field: impl Fn(&[String]) -> Option<String>) -> bool {
        self.any.is_empty()
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|s| s.matches(&field)))
    }
}

impl Selector {
    fn matches(&self, field: &impl Fn(&[String]) -> Option<String>) -> bool {
        let v = field(&self.path);
        match self.op {
            Op::Present => v.is_some(),
            Op::Equal => v.as_deref() == Some(self.value.as_str()),
            Op::NotEqual => v.as_deref() != Some(self.value.as_str()),
            Op::Matches => match (&self.re, v) {
                (Some(re), Some(v)) => re.is_match(&v),
                _ => false,
            },
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> ParseError {
        ParseError(format!("filter {:?}: {what} at byte {}", self.text, self.i))
    }

    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn filter(&mut self) -> Result<Vec<Vec<Selector>>, ParseError> {
        let mut any = vec![vec![self.selector()?]];
        loop {
            match self.peek() {
                None => return Ok(any),
                Some(b',') => {
                    self.i += 1;
                    let s = self.selector()?;
                    any.last_mut().expect("one conjunction").push(s);
                }
                Some(b'|') => {
                    self.i += 1;
                    any.push(vec![self.selector()?]);
                }
                Some(_) => return Err(self.err("expected ',' or '|'")),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, ParseError> {
        let mut path = vec![self.field()?];
        while self.peek() == Some(b'.') {
            self.i += 1;
            path.push(self.field()?);
        }
        let op = match (self.peek(), self.s.get(self.i + 1)) {
            (Some(b'='), Some(b'=')) => Op::Equal,
            (Some(b'!'), Some(b'=')) => Op::NotEqual,
            (Some(b'~'), Some(b'=')) => Op::Matches,
            (None | Some(b',') | Some(b'|'), _) => {
                return Ok(Selector {
                    path,
                    op: Op::Present,
                    value: String::new(),
                    re: None,
                })
            }
            _ => return Err(self.err("expected an operator (==, != or ~=)")),
        };
        self.i += 2;
        let value = self.value()?;
        let re = match op {
            Op::Matches => Some(
                regex_lite::RegexBuilder::new(&value)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| self.err(&format!("bad regular expression {value:?}: {e}")))?,
            ),
            _ => None,
        };
        Ok(Selector {
            path,
            op,
            value,
            re,
        })
    }

    fn field(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some(b'"' | b'\'' | b'`') => self.quoted(),
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
                {
                    self.i += 1;
                }
                Ok(self.text[start..self.i].to_string())
            }
            _ => Err(self.err("expected a field name")),
        }
    }

    fn value(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some(b'"' | b'\'' | b'`') => self.quoted(),
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && !self.s[self.i].is_ascii_whitespace()
                    && self.s[self.i] != b','
                    && self.s[self.i] != b'|'
                {
                    self.i += 1;
                }
                if start == self.i {
                    return Err(self.err("expected a value"));
                }
                Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
            }
            None => Err(self.err("expected a value")),
        }
    }

    fn quoted(&mut self) -> Result<String, ParseError> {
        let q = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            if c == q {
                return String::from_utf8(out).map_err(|_| self.err("quoted text is not UTF-8"));
            }
            if c == b'\\' && q == b'"' {
                let Some(&e) = self.s.get(self.i) else { break };
                self.i += 1;
                out.push(match e {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'0' => 0,
                    other => other,
                });
            } else {
                out.push(c);
            }
        }
        Err(self.err("unterminated quoted text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn obj(
        name: &str,
        kind: &str,
        labels: &[(&str, &str)],
    ) -> impl Fn(&[String]) -> Option<String> {
        let name = name.to_string();
        let kind = kind.to_string();
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |p: &[String]| match p.first().map(String::as_str) {
            Some("name") if p.len() == 1 => Some(name.clone()),
            Some("kind") if p.len() == 1 => Some(kind.clone()),
            Some("labels") if p.len() > 1 => labels.get(&p[1..].join(".")).cloned(),
            _ => None,
        }
    }

    #[test]
    fn selectors() {
        let a = obj("default/1/a", "active", &[("containerd.io/gc.root", "x")]);
        let m = |f: &str| Filter::parse_all(&[f]).expect(f).matches(&a);
        assert!(m("kind==active"));
        assert!(!m("kind==committed"));
        assert!(m("kind!=committed"));
        assert!(m(r#"name=="default/1/a""#));
        assert!(m(r#"labels."containerd.io/gc.root""#));
        assert!(m(r#"labels."containerd.io/gc.root"==x"#));
        assert!(!m("labels.other"));
        assert!(m("name~=^default/"));
        assert!(!m("name~=^other/"));
        assert!(m("kind==active,name~=a$"));
        assert!(!m("kind==active,name~=b$"));
        assert!(m("kind==view|name~=a$"));
        assert!(Filter::parse_all::<&str>(&[]).unwrap().matches(&a));
        assert!(Filter::parse_all(&["kind==view", "kind==active"])
            .unwrap()
            .matches(&a));
    }

    #[test]
    fn errors() {
        for bad in [
            "==x",
            "kind=",
            "kind==",
            "kind=x",
            "kind==a b",
            "labels.\"unterminated",
            "name~=(",
            ",",
            "kind==a,",
        ] {
            assert!(
                Filter::parse_all(&[bad]).is_err(),
                "{bad:?} should not parse"
            );
        }
    }
}
