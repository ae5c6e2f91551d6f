//! A forgiving JSON reader for LLM output.
//!
//! Accepts what models actually write: single-quoted strings (with stray
//! apostrophes inside), unquoted keys, trailing or missing commas, Python
//! literals (`True`, `False`, `None`), raw newlines in strings and unknown
//! escapes. It never panics and reports the byte offset where it gave up.

use serde_json::{Map, Number, Value};

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at byte {offset}")]
pub struct LenientJsonError {
    /// Byte offset in the input.
    pub offset: usize,
    /// What was expected.
    pub message: String,
}

/// Parse one value starting at `start` (leading whitespace is skipped).
/// Returns the value and the byte offset just past it.
pub fn parse_value_at(text: &str, start: usize) -> Result<(Value, usize), LenientJsonError> {
    let mut parser = Parser {
        src: text.as_bytes(),
        text,
        pos: start,
        depth: 0,
    };
    let value = parser.value()?;
    Ok((value, parser.pos))
}

/// Parse the first value in `text`, ignoring anything after it.
pub fn parse_first(text: &str) -> Result<Value, LenientJsonError> {
    parse_value_at(text, 0).map(|(value, _)| value)
}

/// Every top-level JSON object found in free text, in order. Stray closing
/// braces, prose and unparseable fragments between objects are skipped.
pub fn scan_objects(text: &str) -> Vec<Value> {
    let mut found = Vec::new();
    let mut pos = 0;
    while let Some(offset) = text[pos..].find('{') {
        let start = pos + offset;
        match parse_value_at(text, start) {
            Ok((value @ Value::Object(_), end)) => {
                found.push(value);
                pos = end;
            }
            _ => pos = start + 1,
        }
    }
    found
}

const MAX_DEPTH: usize = 128;

struct Parser<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error<T>(&self, message: impl Into<String>) -> Result<T, LenientJsonError> {
        Err(LenientJsonError {
            offset: self.pos,
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() {
                self.pos += 1;
            } else if self.src[self.pos..].starts_with(b"//") {
                while let Some(c) = self.peek() {
                    if c == b'\n' {
                        break;
                    }
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    fn value(&mut self) -> Result<Value, LenientJsonError> {
        self.skip_ws();
        match self.peek() {
            None => self.error("unexpected end of input"),
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(q @ (b'"' | b'\'')) => self.string(q).map(Value::String),
            Some(c) if c == b'-' || c == b'+' || c.is_ascii_digit() || c == b'.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                let word = self.identifier();
                Ok(match word.as_str() {
                    "true" | "True" => Value::Bool(true),
                    "false" | "False" => Value::Bool(false),
                    "null" | "None" | "undefined" => Value::Null,
                    _ => Value::String(word),
                })
            }
            Some(_) => self.error("expected a value"),
        }
    }

    fn nested(
        &mut self,
        parse: fn(&mut Self) -> Result<Value, LenientJsonError>,
    ) -> Result<Value, LenientJsonError> {
        if self.depth >= MAX_DEPTH {
            return self.error("nesting too deep");
        }
        self.depth += 1;
        let result = parse(self);
        self.depth -= 1;
        result
    }

    fn object(&mut self) -> Result<Value, LenientJsonError> {
        self.pos += 1; // '{'
        let mut map = Map::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => return self.error("unterminated object"),
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                Some(b',') => {
                    self.pos += 1;
                    continue;
                }
                _ => {}
            }
            let key = match self.peek() {
                Some(q @ (b'"' | b'\'')) => self.string(q)?,
                Some(c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' => self.identifier(),
                _ => return self.error("expected an object key"),
            };
            self.skip_ws();
            if self.peek() != Some(b':') {
                return self.error(format!("expected ':' after key {key:?}"));
            }
            self.pos += 1;
            let value = self.value()?;
            map.insert(key, value);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                // A missing comma between members: carry on if a key follows.
                Some(b'"' | b'\'') => {}
                None => return self.error("unterminated object"),
                Some(_) => return self.error("expected ',' or '}' in object"),
            }
        }
    }

    fn array(&mut self) -> Result<Value, LenientJsonError> {
        self.pos += 1; // '['
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => return self.error("unterminated array"),
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                Some(b',') => {
                    self.pos += 1;
                    continue;
                }
                // A stray '}' between elements (an extra closing brace).
                Some(b'}') => {
                    self.pos += 1;
                    continue;
                }
                _ => {}
            }
            items.push(self.value()?);
        }
    }

    fn identifier(&mut self) -> String {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'$' {
                self.pos += 1;
            } else {
                break;
            }
        }
        self.text[start..self.pos].to_string()
    }

    /// Whether a quote at `self.pos` closes a single-quoted string: it must be
    /// followed (after spaces) by a structural character or the end.
    fn closes_single_quoted(&self) -> bool {
        let rest = &self.src[self.pos + 1..];
        let next = rest
            .iter()
            .find(|c| !matches!(c, b' ' | b'\t' | b'\r' | b'\n'));
        matches!(next, None | Some(b',' | b'}' | b']' | b':'))
    }

    fn string(&mut self, quote: u8) -> Result<String, LenientJsonError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return self.error("unterminated string");
            };
            match c {
                b'\\' => {
                    self.pos += 1;
                    let Some(escaped) = self.peek() else {
                        return self.error("unterminated string");
                    };
                    self.pos += 1;
                    match escaped {
                        b'n' => out.push('\n'),
                        b't' => out.push('\t'),
                        b'r' => out.push('\r'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'u' => out.push(self.unicode_escape()?),
                        b'"' | b'\'' | b'\\' | b'/' => out.push(escaped as char),
                        _ => {
                            // Unknown escape: keep it as written.
                            out.push('\\');
                            self.pos -= 1;
                        }
                    }
                }
                c if c == quote && (quote == b'"' || self.closes_single_quoted()) => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => {
                    // Copy one whole UTF-8 character.
                    let rest = &self.text[self.pos..];
                    let ch = rest.chars().next().unwrap_or('\u{fffd}');
                    out.push(ch);
                    self.pos += ch.len_utf8().max(1);
                }
            }
        }
    }

    fn unicode_escape(&mut self) -> Result<char, LenientJsonError> {
        let hex = |p: &mut Self| -> Result<u32, LenientJsonError> {
            let digits = p
                .src
                .get(p.pos..p.pos + 4)
                .and_then(|d| std::str::from_utf8(d).ok());
            match digits.and_then(|d| u32::from_str_radix(d, 16).ok()) {
                Some(v) => {
                    p.pos += 4;
                    Ok(v)
                }
                None => p.error("bad \\u escape"),
            }
        };
        let first = hex(self)?;
        if (0xD800..0xDC00).contains(&first) && self.src[self.pos..].starts_with(b"\\u") {
            self.pos += 2;
            let second = hex(self)?;
            let combined =
                0x10000 + ((first - 0xD800) << 10) + (second.wrapping_sub(0xDC00) & 0x3ff);
            return Ok(char::from_u32(combined).unwrap_or('\u{fffd}'));
        }
        Ok(char::from_u32(first).unwrap_or('\u{fffd}'))
    }

    fn number(&mut self) -> Result<Value, LenientJsonError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E') {
                self.pos += 1;
            } else {
                break;
            }
        }
        let literal = self.text[start..self.pos].trim_start_matches('+');
        if let Ok(int) = literal.parse::<i64>() {
            return Ok(Value::Number(int.into()));
        }
        match literal.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(number) => Ok(Value::Number(number)),
            None => {
                self.pos = start;
                self.error(format!("bad number {literal:?}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_json_is_read_as_is() {
        let text = r#"{"a": [1, 2.5, -3e2, true, null, "x\"y\u00e9"], "b": {}}"#;
        assert_eq!(
            parse_first(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn single_quotes_and_apostrophes() {
        let v = parse_first("{'text': 'what's in it', 'id': 0}").unwrap();
        assert_eq!(v, json!({"text": "what's in it", "id": 0}));
    }

    #[test]
    fn unquoted_keys_trailing_commas_python_literals() {
        let v = parse_first("{task: 'x', dep: [-1,], ok: True, none: None,}").unwrap();
        assert_eq!(
            v,
            json!({"task": "x", "dep": [-1], "ok": true, "none": null})
        );
    }

    #[test]
    fn stray_closing_brace_in_array() {
        let v = parse_first(r#"[{"id": 0}}, {"id": 1}]"#).unwrap();
        assert_eq!(v, json!([{"id": 0}, {"id": 1}]));
    }

    #[test]
    fn missing_comma_between_members() {
        let v = parse_first(r#"{"a": 1 "b": 2}"#).unwrap();
        assert_eq!(v, json!({"a": 1, "b": 2}));
    }

    #[test]
    fn scans_objects_out_of_prose() {
        let text = "Sure! {\"id\": 0} then }} and {'id': 1} done {broken";
        assert_eq!(scan_objects(text), vec![json!({"id": 0}), json!({"id": 1})]);
    }

    #[test]
    fn errors_carry_offsets_and_never_panic() {
        for bad in [
            "",
            "{",
            "[1, 2",
            "{\"a\" 1}",
            "\"abc",
            "{\"a\": \"\\u12\"}",
            "-",
            "{'a': 'é",
        ] {
            assert!(parse_first(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(10_000);
        assert!(parse_first(&deep).is_err());
    }

    #[test]
    fn multibyte_text_survives() {
        let v = parse_first("{'t': '日本語 ✓', \"u\": \"ü\"}").unwrap();
        assert_eq!(v, json!({"t": "日本語 ✓", "u": "ü"}));
    }
}
