//! A small pull parser for JSON records. It reads straight from the record's bytes with exact
//! positions for errors, keeps numbers as their text (so DECIMAL and BIGINT values are exact), and
//! allocates nothing for scalars: strings are either borrowed from the input or unescaped into a
//! caller's reusable buffer. Nested values become a [`Node`] tree.

use std::fmt;

/// Deepest nesting of arrays and objects accepted (as serde_json), so that hostile input cannot
/// overflow the stack.
pub(crate) const MAX_DEPTH: usize = 128;

/// A JSON syntax error at a byte offset of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub pos: usize,
    pub msg: &'static str,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.pos, self.msg)
    }
}

/// A parsed JSON value, for nested columns. Numbers keep their text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Number(Box<str>),
    Text(Box<str>),
    Array(Vec<Node>),
    Object(Vec<(Box<str>, Node)>),
}

/// A string token: `input[start..end]` between the quotes, already checked to be valid UTF-8 with
/// valid escapes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawStr {
    pub start: usize,
    pub end: usize,
    pub escaped: bool,
}

pub(crate) struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self { input, pos: 0 }
    }

    pub(crate) fn input(&self) -> &'a [u8] {
        self.input
    }

    pub(crate) fn error(&self, msg: &'static str) -> SyntaxError {
        SyntaxError { pos: self.pos, msg }
    }

    /// Skips whitespace and returns the next byte without consuming it.
    #[inline]
    pub(crate) fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.input.get(self.pos) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(b);
            }
            self.pos += 1;
        }
        None
    }

    #[inline]
    pub(crate) fn bump(&mut self) {
        self.pos += 1;
    }

    /// Checks that only whitespace is left.
    pub(crate) fn finish(&mut self) -> Result<(), SyntaxError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    /// Consumes `{` and reports whether the object is empty (consuming its `}`).
    pub(crate) fn begin_object(&mut self) -> Result<bool, SyntaxError> {
        self.bump();
        match self.peek() {
            Some(b'}') => {
                self.bump();
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err(self.error("EOF while parsing an object")),
        }
    }

    /// Reads a member name and its `:`.
    pub(crate) fn member_key(&mut self) -> Result<RawStr, SyntaxError> {
        match self.peek() {
            Some(b'"') => {}
            Some(_) => return Err(self.error("key must be a string")),
            None => return Err(self.error("EOF while parsing an object")),
        }
        let key = self.string()?;
        match self.peek() {
            Some(b':') => {
                self.bump();
                Ok(key)
            }
            Some(_) => Err(self.error("expected `:`")),
            None => Err(self.error("EOF while parsing an object")),
        }
    }

    /// After a member value: `true` if another member follows, `false` at the closing `}`.
    pub(crate) fn next_member(&mut self) -> Result<bool, SyntaxError> {
        match self.peek() {
            Some(b',') => {
                self.bump();
                match self.peek() {
                    Some(b'}') => Err(self.error("trailing comma")),
                    _ => Ok(true),
                }
            }
            Some(b'}') => {
                self.bump();
                Ok(false)
            }
            Some(_) => Err(self.error("expected `,` or `}`")),
            None => Err(self.error("EOF while parsing an object")),
        }
    }

    /// Reads a string token starting at its opening quote; checks escapes and UTF-8.
    pub(crate) fn string(&mut self) -> Result<RawStr, SyntaxError> {
        self.bump();
        let start = self.pos;
        let mut escaped = false;
        loop {
            let rest = self.input.get(self.pos..).unwrap_or_default();
            let run = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            let Some(run) = run else {
                self.pos = self.input.len();
                return Err(self.error("EOF while parsing a string"));
            };
            self.pos += run;
            match rest[run] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.bump();
                    match self.input.get(self.pos) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.bump(),
                        Some(b'u') => {
                            self.bump();
                            let hex = self.input.get(self.pos..self.pos + 4);
                            match hex {
                                Some(h) if h.iter().all(u8::is_ascii_hexdigit) => self.pos += 4,
                                Some(_) => return Err(self.error("invalid escape")),
                                None => {
                                    self.pos = self.input.len();
                                    return Err(self.error("EOF while parsing a string"));
                                }
                            }
                        }
                        Some(_) => return Err(self.error("invalid escape")),
                        None => return Err(self.error("EOF while parsing a string")),
                    }
                }
                _ => {
                    return Err(self.error(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ));
                }
            }
        }
        let end = self.pos;
        self.bump();
        if let Err(e) = std::str::from_utf8(&self.input[start..end]) {
            return Err(SyntaxError {
                pos: start + e.valid_up_to(),
                msg: "invalid UTF-8 in string",
            });
        }
        Ok(RawStr {
            start,
            end,
            escaped,
        })
    }

    /// Appends the content of a string token to `out`, unescaped.
    pub(crate) fn unescape_into(&self, s: RawStr, out: &mut Vec<u8>) -> Result<(), SyntaxError> {
        let raw = &self.input[s.start..s.end];
        if !s.escaped {
            out.extend_from_slice(raw);
            return Ok(());
        }
        let mut i = 0;
        while i < raw.len() {
            let Some(next) = raw[i..].iter().position(|&b| b == b'\\') else {
                out.extend_from_slice(&raw[i..]);
                break;
            };
            out.extend_from_slice(&raw[i..i + next]);
            i += next + 1;
            let at = s.start + i;
            let err = |msg| SyntaxError { pos: at, msg };
            let c = raw.get(i).copied().ok_or_else(|| err("invalid escape"))?;
            i += 1;
            let simple = match c {
                b'"' => b'"',
                b'\\' => b'\\',
                b'/' => b'/',
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'u' => {
                    let hi = hex4(raw, i).ok_or_else(|| err("invalid escape"))?;
                    i += 4;
                    let code = if (0xD800..0xDC00).contains(&hi) {
                        if raw.get(i..i + 2) != Some(b"\\u") {
                            return Err(err("lone leading surrogate in hex escape"));
                        }
                        let lo = hex4(raw, i + 2).ok_or_else(|| err("invalid escape"))?;
                        if !(0xDC00..0xE000).contains(&lo) {
                            return Err(err("invalid unicode code point"));
                        }
                        i += 6;
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    } else {
                        hi
                    };
                    let ch =
                        char::from_u32(code).ok_or_else(|| err("invalid unicode code point"))?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    continue;
                }
                _ => return Err(err("invalid escape")),
            };
            out.push(simple);
        }
        Ok(())
    }

    /// Reads a number token, checking the JSON grammar, and returns its text.
    pub(crate) fn number(&mut self) -> Result<&'a str, SyntaxError> {
        let input = self.input;
        let start = self.pos;
        let digits = |p: &mut Self| {
            let from = p.pos;
            while input.get(p.pos).is_some_and(u8::is_ascii_digit) {
                p.pos += 1;
            }
            p.pos - from
        };
        if input.get(self.pos) == Some(&b'-') {
            self.bump();
        }
        match input.get(self.pos) {
            Some(b'0') => self.bump(),
            Some(b'1'..=b'9') => {
                digits(self);
            }
            Some(_) => return Err(self.error("invalid number")),
            None => return Err(self.error("EOF while parsing a value")),
        }
        if input.get(self.pos) == Some(&b'.') {
            self.bump();
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if matches!(input.get(self.pos), Some(b'e' | b'E')) {
            self.bump();
            if matches!(input.get(self.pos), Some(b'+' | b'-')) {
                self.bump();
            }
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        std::str::from_utf8(&input[start..self.pos]).map_err(|_| self.error("invalid number"))
    }

    /// Reads `true`, `false` or `null` (whichever `lit` is).
    pub(crate) fn literal(&mut self, lit: &'static [u8]) -> Result<(), SyntaxError> {
        let rest = self.input.get(self.pos..).unwrap_or_default();
        if rest.starts_with(lit) {
            self.pos += lit.len();
            Ok(())
        } else if lit.starts_with(rest) {
            self.pos = self.input.len();
            Err(self.error("EOF while parsing a value"))
        } else {
            Err(self.error("expected value"))
        }
    }

    /// Skips one value of any type, checking its syntax.
    pub(crate) fn skip_value(&mut self, depth: usize) -> Result<(), SyntaxError> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'[') => {
                let depth = self.descend(depth)?;
                if self.begin_array()? {
                    return Ok(());
                }
                loop {
                    self.skip_value(depth)?;
                    if !self.next_element()? {
                        return Ok(());
                    }
                }
            }
            Some(b'{') => {
                let depth = self.descend(depth)?;
                if self.begin_object()? {
                    return Ok(());
                }
                loop {
                    self.member_key()?;
                    self.skip_value(depth)?;
                    if !self.next_member()? {
                        return Ok(());
                    }
                }
            }
            Some(_) => Err(self.error("expected value")),
            None => Err(self.error("EOF while parsing a value")),
        }
    }

    fn descend(&self, depth: usize) -> Result<usize, SyntaxError> {
        if depth >= MAX_DEPTH {
            Err(self.error("recursion limit exceeded"))
        } else {
            Ok(depth + 1)
        }
    }

    fn begin_array(&mut self) -> Result<bool, SyntaxError> {
        self.bump();
        match self.peek() {
            Some(b']') => {
                self.bump();
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err(self.error("EOF while parsing a list")),
        }
    }

    fn next_element(&mut self) -> Result<bool, SyntaxError> {
        match self.peek() {
            Some(b',') => {
                self.bump();
                match self.peek() {
                    Some(b']') => Err(self.error("trailing comma")),
                    _ => Ok(true),
                }
            }
            Some(b']') => {
                self.bump();
                Ok(false)
            }
            Some(_) => Err(self.error("expected `,` or `]`")),
            None => Err(self.error("EOF while parsing a list")),
        }
    }

    fn owned_string(&mut self) -> Result<Box<str>, SyntaxError> {
        let s = self.string()?;
        let mut out = Vec::with_capacity(s.end - s.start);
        self.unescape_into(s, &mut out)?;
        String::from_utf8(out)
            .map(String::into_boxed_str)
            .map_err(|_| SyntaxError {
                pos: s.start,
                msg: "invalid UTF-8 in string",
            })
    }

    /// Parses one value of any type into a tree.
    pub(crate) fn node(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        match self.peek() {
            Some(b'"') => self.owned_string().map(Node::Text),
            Some(b'-' | b'0'..=b'9') => self.number().map(|n| Node::Number(n.into())),
            Some(b't') => self.literal(b"true").map(|()| Node::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|()| Node::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|()| Node::Null),
            Some(b'[') => {
                let depth = self.descend(depth)?;
                let mut items = Vec::new();
                if !self.begin_array()? {
                    loop {
                        items.push(self.node(depth)?);
                        if !self.next_element()? {
                            break;
                        }
                    }
                }
                Ok(Node::Array(items))
            }
            Some(b'{') => {
                let depth = self.descend(depth)?;
                let mut members = Vec::new();
                if !self.begin_object()? {
                    loop {
                        match self.peek() {
                            Some(b'"') => {}
                            Some(_) => return Err(self.error("key must be a string")),
                            None => return Err(self.error("EOF while parsing an object")),
                        }
                        let key = self.owned_string()?;
                        match self.peek() {
                            Some(b':') => self.bump(),
                            Some(_) => return Err(self.error("expected `:`")),
                            None => return Err(self.error("EOF while parsing an object")),
                        }
                        members.push((key, self.node(depth)?));
                        if !self.next_member()? {
                            break;
                        }
                    }
                }
                Ok(Node::Object(members))
            }
            Some(_) => Err(self.error("expected value")),
            None => Err(self.error("EOF while parsing a value")),
        }
    }
}

fn hex4(raw: &[u8], at: usize) -> Option<u32> {
    let h = raw.get(at..at + 4)?;
    let s = std::str::from_utf8(h).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// Bytes that must be escaped inside a JSON string.
#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends `s` as a quoted JSON string.
pub(crate) fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Appends a node as JSON text (used to read an ARRAY or STRUCT into a STRING column).
pub(crate) fn write_node(out: &mut Vec<u8>, node: &Node) {
    match node {
        Node::Null => out.extend_from_slice(b"null"),
        Node::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Node::Number(n) => out.extend_from_slice(n.as_bytes()),
        Node::Text(s) => write_string(out, s),
        Node::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_node(out, item);
            }
            out.push(b']');
        }
        Node::Object(members) => {
            out.push(b'{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, k);
                out.push(b':');
                write_node(out, v);
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> Result<Node, SyntaxError> {
        let mut p = Parser::new(s.as_bytes());
        let n = p.node(0)?;
        p.finish()?;
        Ok(n)
    }

    #[test]
    fn parses_values() {
        assert_eq!(node(" 1.5e3 "), Ok(Node::Number("1.5e3".into())));
        assert_eq!(
            node(r#""a\"b\u00e9\ud83d\ude00""#),
            Ok(Node::Text("a\"bé😀".into()))
        );
        assert_eq!(
            node(r#"{"a":[1,null,true],"b":{}}"#),
            Ok(Node::Object(vec![
                (
                    "a".into(),
                    Node::Array(vec![Node::Number("1".into()), Node::Null, Node::Bool(true)])
                ),
                ("b".into(), Node::Object(vec![])),
            ]))
        );
    }

    #[test]
    fn reports_positions() {
        let e = node(r#"{"a": 1"#).unwrap_err();
        assert_eq!(
            e,
            SyntaxError {
                pos: 7,
                msg: "EOF while parsing an object"
            }
        );
        assert_eq!(node("[1,]").unwrap_err().msg, "trailing comma");
        assert_eq!(node("01").unwrap_err().msg, "trailing characters");
        assert_eq!(node("1.").unwrap_err().msg, "invalid number");
        assert_eq!(node("-").unwrap_err().msg, "EOF while parsing a value");
        assert_eq!(node("tru").unwrap_err().msg, "EOF while parsing a value");
        assert_eq!(node("nul1").unwrap_err().msg, "expected value");
        assert_eq!(
            node("\"a\u{1}\"").unwrap_err().msg,
            "control character (\\u0000-\\u001F) found while parsing a string"
        );
        assert_eq!(
            node(r#""\ud800""#).unwrap_err().msg,
            "lone leading surrogate in hex escape"
        );
        assert_eq!(node(r#""\x""#).unwrap_err().msg, "invalid escape");
        let mut p = Parser::new(b"\"\xff\"");
        assert_eq!(p.node(0).unwrap_err().msg, "invalid UTF-8 in string");
    }

    #[test]
    fn depth_is_limited() {
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(node(&deep).unwrap_err().msg, "recursion limit exceeded");
        let mut p = Parser::new(deep.as_bytes());
        assert_eq!(p.skip_value(0).unwrap_err().msg, "recursion limit exceeded");
    }

    #[test]
    fn skip_checks_syntax() {
        let mut p = Parser::new(br#"{"a":[1,{"b":"c"}],"d":-0.5e-3} "#);
        p.skip_value(0).unwrap();
        p.finish().unwrap();
        let mut p = Parser::new(br#"{"a" 1}"#);
        assert_eq!(
            p.skip_value(0).unwrap_err(),
            SyntaxError {
                pos: 5,
                msg: "expected `:`"
            }
        );
    }

    #[test]
    fn writes_escaped_strings() {
        let mut out = Vec::new();
        write_string(&mut out, "a\"\\\n\u{1}é");
        assert_eq!(std::str::from_utf8(&out).unwrap(), r#""a\"\\\n\u0001é""#);
        let mut p = Parser::new(&out);
        assert_eq!(p.node(0).unwrap(), Node::Text("a\"\\\n\u{1}é".into()));
    }
}
