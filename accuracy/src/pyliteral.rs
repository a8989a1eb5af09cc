//! Python list-of-strings literals, as MMMU stores its `options` column (`str(list)`; the
//! official code reads it back with `eval`).
//!
//! [`parse_str_list`] is a strict reader for exactly that shape: `[`, string literals separated by
//! commas (optional trailing comma), `]`, with whitespace anywhere between tokens. String literals
//! follow Python 3: single, double or triple quotes, optional `r`/`u` prefix, adjacent literals
//! concatenated, and the escapes `\\ \' \" \a \b \f \n \r \t \v \ooo \xhh \uXXXX \UXXXXXXXX` and
//! backslash-newline. Unknown escapes such as `\d` are kept literally, as Python does. Anything
//! else (numbers, `None`, comments, `\N{…}`, byte strings, surrogates) is a [`LiteralError`].
//!
//! [`repr_str_list`] writes a list the way Python's `str(list)` does, for the sample set.

/// Why a string is not a Python list of string literals. `offset` is a character offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {offset}: {message}")]
pub struct LiteralError {
    pub offset: usize,
    pub message: String,
}

struct Cursor {
    chars: Vec<char>,
    pos: usize,
}

impl Cursor {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, LiteralError> {
        Err(LiteralError {
            offset: self.pos,
            message: message.into(),
        })
    }
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn peek_at(&self, k: usize) -> Option<char> {
        self.chars.get(self.pos + k).copied()
    }
    fn skip_ws(&mut self) {
        // Inside brackets Python allows any whitespace, including newlines and
        // backslash-newline continuations.
        loop {
            match self.peek() {
                Some(' ' | '\t' | '\n' | '\r' | '\x0c') => self.pos += 1,
                Some('\\') if self.peek_at(1) == Some('\n') => self.pos += 2,
                _ => return,
            }
        }
    }
}

/// Parses a Python list literal whose elements are all string literals.
pub fn parse_str_list(src: &str) -> Result<Vec<String>, LiteralError> {
    let mut c = Cursor {
        chars: src.chars().collect(),
        pos: 0,
    };
    c.skip_ws();
    if c.peek() != Some('[') {
        return c.err("expected `[`");
    }
    c.pos += 1;
    let mut items = Vec::new();
    loop {
        c.skip_ws();
        match c.peek() {
            Some(']') => {
                c.pos += 1;
                break;
            }
            None => return c.err("unterminated list"),
            _ => {}
        }
        items.push(parse_string_group(&mut c)?);
        c.skip_ws();
        match c.peek() {
            Some(',') => c.pos += 1,
            Some(']') => {
                c.pos += 1;
                break;
            }
            None => return c.err("unterminated list"),
            Some(ch) => return c.err(format!("expected `,` or `]`, found {ch:?}")),
        }
    }
    c.skip_ws();
    if c.pos != c.chars.len() {
        return c.err("trailing characters after `]`");
    }
    Ok(items)
}

/// One or more adjacent string literals (`'a' "b"` == `'ab'`).
fn parse_string_group(c: &mut Cursor) -> Result<String, LiteralError> {
    let mut out = parse_string(c)?;
    loop {
        let save = c.pos;
        c.skip_ws();
        if starts_string(c) {
            out.push_str(&parse_string(c)?);
        } else {
            c.pos = save;
            return Ok(out);
        }
    }
}

fn prefix_len(c: &Cursor) -> Option<(usize, bool)> {
    // Returns (prefix length, raw) when a string literal starts here.
    let is_quote = |ch: Option<char>| matches!(ch, Some('\'' | '"'));
    match c.peek() {
        Some('\'' | '"') => Some((0, false)),
        Some('r' | 'R') if is_quote(c.peek_at(1)) => Some((1, true)),
        Some('u' | 'U') if is_quote(c.peek_at(1)) => Some((1, false)),
        _ => None,
    }
}

fn starts_string(c: &Cursor) -> bool {
    prefix_len(c).is_some()
}

fn parse_string(c: &mut Cursor) -> Result<String, LiteralError> {
    let Some((plen, raw)) = prefix_len(c) else {
        return match c.peek() {
            Some(ch) if ch == 'b' || ch == 'B' || ch == 'f' || ch == 'F' => {
                c.err("only plain, r and u string literals are allowed")
            }
            Some(ch) => c.err(format!("expected a string literal, found {ch:?}")),
            None => c.err("expected a string literal"),
        };
    };
    c.pos += plen;
    let quote = c.peek().unwrap_or('\'');
    let triple = c.peek_at(1) == Some(quote) && c.peek_at(2) == Some(quote);
    c.pos += if triple { 3 } else { 1 };
    let mut out = String::new();
    loop {
        let Some(ch) = c.peek() else {
            return c.err("unterminated string literal");
        };
        if ch == quote {
            if !triple {
                c.pos += 1;
                return Ok(out);
            }
            if c.peek_at(1) == Some(quote) && c.peek_at(2) == Some(quote) {
                c.pos += 3;
                return Ok(out);
            }
            out.push(ch);
            c.pos += 1;
            continue;
        }
        if (ch == '\n' || ch == '\r') && !triple {
            return c.err("newline inside a single-quoted string literal");
        }
        if ch != '\\' {
            out.push(ch);
            c.pos += 1;
            continue;
        }
        // Backslash.
        let Some(next) = c.peek_at(1) else {
            return c.err("unterminated string literal");
        };
        if raw {
            // In raw strings a backslash escapes nothing but still keeps the next character
            // (including a quote) inside the literal.
            out.push('\\');
            out.push(next);
            c.pos += 2;
            continue;
        }
        let escaped = match next {
            '\n' => {
                c.pos += 2;
                continue;
            }
            '\\' => '\\',
            '\'' => '\'',
            '"' => '"',
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\x0b',
            '0'..='7' => {
                let mut value = 0u32;
                let mut n = 0;
                while n < 3 {
                    match c.peek_at(1 + n) {
                        Some(d @ '0'..='7') => {
                            value = value * 8 + d.to_digit(8).unwrap_or(0);
                            n += 1;
                        }
                        _ => break,
                    }
                }
                let Some(ch) = char::from_u32(value) else {
                    return c.err("invalid octal escape");
                };
                out.push(ch);
                c.pos += 1 + n;
                continue;
            }
            'x' | 'u' | 'U' => {
                let width = match next {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let mut value = 0u32;
                for k in 0..width {
                    match c.peek_at(2 + k).and_then(|d| d.to_digit(16)) {
                        Some(d) => value = value.wrapping_mul(16).wrapping_add(d),
                        None => return c.err(format!("truncated \\{next} escape")),
                    }
                }
                let Some(ch) = char::from_u32(value) else {
                    return c.err(format!(
                        "\\{next} escape {value:#x} is not a Unicode scalar value"
                    ));
                };
                out.push(ch);
                c.pos += 2 + width;
                continue;
            }
            'N' => return c.err("\\N{...} escapes are not supported"),
            other => {
                // Python keeps unknown escapes verbatim (with a warning).
                out.push('\\');
                out.push(other);
                c.pos += 2;
                continue;
            }
        };
        out.push(escaped);
        c.pos += 2;
    }
}

/// Python's `repr(str)`.
pub fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str(list_of_str)`: `['a', "it's"]`.
pub fn repr_str_list(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| repr_str(s)).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> Vec<String> {
        parse_str_list(src).unwrap_or_else(|e| panic!("{src:?}: {e}"))
    }

    #[test]
    fn plain_lists() {
        assert_eq!(ok("[]"), Vec::<String>::new());
        assert_eq!(ok(" [ ] "), Vec::<String>::new());
        assert_eq!(ok("['$6', '$7', '$8', '$9']"), ["$6", "$7", "$8", "$9"]);
        assert_eq!(ok("[\"It's\", 'say \"hi\"']"), ["It's", "say \"hi\""]);
        assert_eq!(ok("['a',\n 'b',]"), ["a", "b"]);
        assert_eq!(ok("['<image 1>', '<image 2>']"), ["<image 1>", "<image 2>"]);
        assert_eq!(ok("['a' \"b\"]"), ["ab"]);
        assert_eq!(ok("['''x'y''', \"\"\"z\"\"\"]"), ["x'y", "z"]);
    }

    #[test]
    fn escapes() {
        assert_eq!(
            ok(r"['a\'b', 'c\\d', 'e\nf', '\x41\u00e9\U0001F600', '\101\0']"),
            ["a'b", "c\\d", "e\nf", "A\u{e9}\u{1F600}", "A\0"]
        );
        // Unknown escapes stay as written; raw strings keep backslashes.
        assert_eq!(ok(r"['\d+', r'\n\'']"), ["\\d+", "\\n\\'"]);
        assert_eq!(ok("['°C', u'µ']"), ["°C", "µ"]);
    }

    #[test]
    fn rejects_non_string_lists() {
        for bad in [
            "",
            "['a'",
            "['a' 'b",
            "[1, 2]",
            "['a', None]",
            "['a'] x",
            "('a', 'b')",
            "[b'a']",
            "[f'a']",
            "['\\N{BULLET}']",
            "['\\ud800']",
            "['a\nb']",
            "['a',, 'b']",
            "['\\x4']",
        ] {
            assert!(parse_str_list(bad).is_err(), "{bad:?} must be rejected");
        }
        let e = parse_str_list("['a', 3]").unwrap_err();
        assert_eq!(e.offset, 6);
    }

    #[test]
    fn repr_round_trips() {
        let items: Vec<String> = [
            "plain",
            "It's",
            "both ' and \"",
            "back\\slash",
            "new\nline",
            "°",
        ]
        .map(String::from)
        .into();
        let s = repr_str_list(&items);
        assert_eq!(
            s,
            r#"['plain', "It's", 'both \' and "', 'back\\slash', 'new\nline', '°']"#
        );
        assert_eq!(parse_str_list(&s).unwrap(), items);
    }
}
