//! A small pull parser for JSON records. It reads straight from the record's bytes with exact
//! positions for errors, keeps numbers as their text (so DECIMAL and BIGINT values are exact), and
//! allocates nothing for scalars: strings are either borrowed from the input or unescaped into a
//! caller's reusable buffer. Nested values become a [`Node`] tree.
//!
//! The record is checked to be UTF-8 once, as a whole, when the parser is made; every string
//! and number is then a slice of that text, so no value is checked again. String contents are
//! scanned eight bytes at a time ([`first_special`]) for the bytes that end or escape them; the
//! writer tests sixteen at a time first ([`first_special_in_blocks`]).

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

/// A string token: `input[start..end]` between the quotes, with valid escapes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawStr {
    pub start: usize,
    pub end: usize,
    pub escaped: bool,
}

pub(crate) struct Parser<'a> {
    /// The record, checked to be UTF-8.
    text: &'a str,
    /// `text` as bytes.
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    /// A parser at the start of `input`; fails at the first byte that is not UTF-8.
    pub(crate) fn new(input: &'a [u8]) -> Result<Self, SyntaxError> {
        // simdutf8 checks a whole record faster than `std::str::from_utf8`; std's error says
        // where the first bad byte is.
        let text = simdutf8::basic::from_utf8(input).map_err(|_| SyntaxError {
            pos: std::str::from_utf8(input)
                .err()
                .map_or(0, |e| e.valid_up_to()),
            msg: "invalid UTF-8",
        })?;
        Ok(Self {
            text,
            input,
            pos: 0,
        })
    }

    /// The whole input, checked to be UTF-8.
    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// The content of a string token, escapes as written.
    #[inline]
    pub(crate) fn raw_text(&self, s: RawStr) -> &'a str {
        // Both ends are next to a quote, an ASCII byte, so they are character boundaries.
        self.text.get(s.start..s.end).unwrap_or_default()
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

    /// Reads a string token starting at its opening quote; checks its escapes.
    pub(crate) fn string(&mut self) -> Result<RawStr, SyntaxError> {
        self.bump();
        let start = self.pos;
        let mut escaped = false;
        loop {
            let rest = self.input.get(self.pos..).unwrap_or_default();
            let Some(run) = first_special(rest) else {
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
        Ok(RawStr {
            start,
            end,
            escaped,
        })
    }

    /// Appends the content of a string token to `out`, unescaped.
    pub(crate) fn unescape_into(&self, s: RawStr, out: &mut String) -> Result<(), SyntaxError> {
        let text = self.raw_text(s);
        if !s.escaped {
            out.push_str(text);
            return Ok(());
        }
        let raw = text.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            // Slices start after an escape and end at a backslash: character boundaries.
            let Some(next) = raw[i..].iter().position(|&b| b == b'\\') else {
                out.push_str(text.get(i..).unwrap_or_default());
                break;
            };
            out.push_str(text.get(i..i + next).unwrap_or_default());
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
                    out.push(ch);
                    continue;
                }
                _ => return Err(err("invalid escape")),
            };
            out.push(char::from(simple));
        }
        Ok(())
    }

    /// Reads a number token, checking the JSON grammar; returns its text and, when it is a short
    /// integer (at most 18 digits after an optional `-`, see `coerce::short_integer`), its value,
    /// read in the same pass over its digits.
    pub(crate) fn number_and_integer(&mut self) -> Result<(&'a str, Option<i64>), SyntaxError> {
        const MOST_DIGITS: usize = 18;
        let input = self.input;
        let start = self.pos;
        let first_digit = start + usize::from(input.get(start) == Some(&b'-'));
        let mut at = first_digit;
        let mut value: i64 = 0;
        if input.get(at) == Some(&b'0') {
            // A leading zero is the whole integer part.
            at += 1;
        } else {
            while let Some(&b) = input.get(at).filter(|b| b.is_ascii_digit()) {
                if at - first_digit == MOST_DIGITS {
                    break;
                }
                value = value * 10 + i64::from(b - b'0');
                at += 1;
            }
        }
        let after = input.get(at);
        let plain = at > first_digit
            && !matches!(after, Some(b'.' | b'e' | b'E'))
            && !(at - first_digit == MOST_DIGITS && after.is_some_and(u8::is_ascii_digit));
        if !plain {
            return self.number().map(|text| (text, None));
        }
        self.pos = at;
        // Digits and `-` are ASCII, so both ends are character boundaries.
        let text = self
            .text
            .get(start..at)
            .ok_or_else(|| self.error("invalid number"))?;
        Ok((text, Some(if first_digit > start { -value } else { value })))
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
        // A number is ASCII, so both ends are character boundaries.
        self.text
            .get(start..self.pos)
            .ok_or_else(|| self.error("invalid number"))
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
        let mut out = String::with_capacity(s.end - s.start);
        self.unescape_into(s, &mut out)?;
        Ok(out.into_boxed_str())
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

/// The value of the four hex digits at `raw[at..]`.
fn hex4(raw: &[u8], at: usize) -> Option<u32> {
    raw.get(at..at + 4)?.iter().try_fold(0u32, |value, &b| {
        let digit = char::from(b).to_digit(16)?;
        Some(value << 4 | digit)
    })
}

/// Bytes that must be escaped inside a JSON string (what [`first_special`] finds).
#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Every byte of a word set to 1.
const ONES: u64 = u64::from_ne_bytes([1; 8]);
/// The high bit of every byte of a word.
const HIGHS: u64 = ONES * 0x80;

/// Bytes [`first_special_in_blocks`] tests at once.
const SPECIAL_BLOCK: usize = 16;

/// [`first_special`] for a string of its own (the encoder's), where the end is no closer than
/// the string's length: tests [`SPECIAL_BLOCK`] bytes at once with a loop free of branches,
/// which the compiler turns into a few vector compares (SSE2, part of every x86-64), and hands
/// the block that has one, and the last bytes, to [`first_special`]. The parser keeps to
/// [`first_special`] word by word: the rest of its record is long, but most of its strings (field
/// names, short values) end within a word, where a block's test would only add to the cost
/// (callgrind, decoding bids: +2 % instructions with blocks; encoding them: −8 %).
#[inline(always)]
fn first_special_in_blocks(bytes: &[u8]) -> Option<usize> {
    let mut blocks = bytes.chunks_exact(SPECIAL_BLOCK);
    let mut at = 0;
    for block in &mut blocks {
        let any = block.iter().fold(false, |any, &b| any | needs_escape(b));
        if any {
            return first_special(block).map(|i| at + i);
        }
        at += SPECIAL_BLOCK;
    }
    first_special(blocks.remainder()).map(|i| at + i)
}

/// The index of the first byte of `bytes` that ends or escapes a JSON string's content: `"`, `\`
/// or a control character. Reads eight bytes at a time as a little-endian word `w` and marks,
/// without branching per byte, the bytes that are one of those: `x - 1` borrows into a byte's high
/// bit only where the byte was 0 (or a borrow came from a lower byte that was), so
/// `(x - ONES) & !x & HIGHS` marks the lowest zero byte of `x` exactly; with `x = w ^ (ONES * b)`
/// that is the first byte equal to `b`, and `(w - ONES * 0x20) & !w & HIGHS` marks the first byte
/// below 0x20. The lowest mark of the three is the answer.
#[inline]
pub(crate) fn first_special(bytes: &[u8]) -> Option<usize> {
    #[inline]
    fn marks(word: u64) -> u64 {
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (word.wrapping_sub(ONES * 0x20) & !word))
            & HIGHS
    }
    let mut at = 0;
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let found = marks(u64::from_le_bytes(word));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    // The last bytes, padded with a byte that is not special.
    let tail = words.remainder();
    let mut word = [b' '; 8];
    word[..tail.len()].copy_from_slice(tail);
    let found = marks(u64::from_le_bytes(word));
    (found != 0).then(|| at + (found.trailing_zeros() / 8) as usize)
}

/// Where JSON text is written: the encoder's byte buffers, and the decoder's `String` scratch
/// (a nested value read into a STRING column).
pub(crate) trait JsonOut {
    fn put_str(&mut self, s: &str);
    fn put_ascii(&mut self, b: u8);
}

impl JsonOut for Vec<u8> {
    #[inline]
    fn put_str(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
    #[inline]
    fn put_ascii(&mut self, b: u8) {
        self.push(b);
    }
}

impl JsonOut for String {
    #[inline]
    fn put_str(&mut self, s: &str) {
        self.push_str(s);
    }
    #[inline]
    fn put_ascii(&mut self, b: u8) {
        self.push(char::from(b));
    }
}

/// Appends `s` as a quoted JSON string.
pub(crate) fn write_string(out: &mut impl JsonOut, s: &str) {
    out.put_ascii(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    while let Some(found) = first_special_in_blocks(&bytes[run..]) {
        let at = run + found;
        // `at` holds an ASCII byte, so both slices end on character boundaries.
        out.put_str(s.get(run..at).unwrap_or_default());
        run = at + 1;
        let b = bytes[at];
        match b {
            b'"' => out.put_str("\\\""),
            b'\\' => out.put_str("\\\\"),
            b'\n' => out.put_str("\\n"),
            b'\r' => out.put_str("\\r"),
            b'\t' => out.put_str("\\t"),
            0x08 => out.put_str("\\b"),
            0x0c => out.put_str("\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.put_str("\\u00");
                out.put_ascii(HEX[usize::from(b >> 4)]);
                out.put_ascii(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    out.put_str(s.get(run..).unwrap_or_default());
    out.put_ascii(b'"');
}

/// Appends a node as JSON text (used to read an ARRAY or STRUCT into a STRING column).
pub(crate) fn write_node(out: &mut impl JsonOut, node: &Node) {
    match node {
        Node::Null => out.put_str("null"),
        Node::Bool(b) => out.put_str(if *b { "true" } else { "false" }),
        Node::Number(n) => out.put_str(n),
        Node::Text(s) => write_string(out, s),
        Node::Array(items) => {
            out.put_ascii(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.put_ascii(b',');
                }
                write_node(out, item);
            }
            out.put_ascii(b']');
        }
        Node::Object(members) => {
            out.put_ascii(b'{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.put_ascii(b',');
                }
                write_string(out, k);
                out.put_ascii(b':');
                write_node(out, v);
            }
            out.put_ascii(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> Result<Node, SyntaxError> {
        let mut p = Parser::new(s.as_bytes())?;
        let n = p.node(0)?;
        p.finish()?;
        Ok(n)
    }

    #[test]
    fn a_number_read_with_its_integer_reads_as_a_number_does() {
        let tokens = [
            "0",
            "-0",
            "7",
            "-12",
            "123456789012345678",
            "-999999999999999999",
            "1234567890123456789",
            "9223372036854775808",
            "1.5",
            "-2.0",
            "1e3",
            "1E+2",
            "01",
            "-01",
            "-",
            "-a",
            "12a",
            "",
        ];
        for token in tokens {
            for end in ["", ",", "}", " "] {
                let input = format!("{token}{end}");
                let mut fused = Parser::new(input.as_bytes()).unwrap();
                let mut plain = Parser::new(input.as_bytes()).unwrap();
                let read = fused.number_and_integer();
                assert_eq!(read.map(|(text, _)| text), plain.number(), "{input:?}");
                assert_eq!(fused.pos, plain.pos, "{input:?}");
                if let Ok((text, integer)) = read {
                    assert_eq!(integer, crate::coerce::short_integer(text), "{input:?}");
                }
            }
        }
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
        let e = Parser::new(b"\"ab\xff\"").err();
        assert_eq!(
            e,
            Some(SyntaxError {
                pos: 3,
                msg: "invalid UTF-8"
            })
        );
    }

    #[test]
    fn depth_is_limited() {
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(node(&deep).unwrap_err().msg, "recursion limit exceeded");
        let mut p = Parser::new(deep.as_bytes()).unwrap();
        assert_eq!(p.skip_value(0).unwrap_err().msg, "recursion limit exceeded");
    }

    #[test]
    fn skip_checks_syntax() {
        let mut p = Parser::new(br#"{"a":[1,{"b":"c"}],"d":-0.5e-3} "#).unwrap();
        p.skip_value(0).unwrap();
        p.finish().unwrap();
        let mut p = Parser::new(br#"{"a" 1}"#).unwrap();
        assert_eq!(
            p.skip_value(0).unwrap_err(),
            SyntaxError {
                pos: 5,
                msg: "expected `:`"
            }
        );
    }

    #[test]
    fn finds_the_first_special_byte_at_every_position() {
        let naive = |b: &[u8]| b.iter().position(|&c| needs_escape(c));
        for first_special in [first_special, first_special_in_blocks] {
            finds_the_first_special_byte_with(first_special, naive);
        }
    }

    fn finds_the_first_special_byte_with(
        first_special: fn(&[u8]) -> Option<usize>,
        naive: impl Fn(&[u8]) -> Option<usize>,
    ) {
        // Plain bytes around each special byte, at every offset of a word and past it; the
        // plain bytes include non-ASCII (UTF-8 of é and 😀) and the neighbours of the specials.
        let fill: Vec<u8> = "aé😀!#[]~ \u{7f}".bytes().cycle().take(56).collect();
        // Every length, so that the special byte is in a whole word or in the last bytes.
        for len in 0..=fill.len() {
            let plain = &fill[..len];
            assert_eq!(first_special(plain), None, "length {len}");
            for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                for at in 0..len {
                    let mut bytes = plain.to_vec();
                    bytes[at] = special;
                    assert_eq!(
                        first_special(&bytes),
                        Some(at),
                        "{special:#x} at {at} of {len}"
                    );
                    assert_eq!(first_special(&bytes), naive(&bytes));
                    // Specials after the first (whose marks may be wrong) do not hide it.
                    for later in at + 1..len {
                        bytes[later] = [b'"', 0x00, b'\\'][later % 3];
                    }
                    assert_eq!(
                        first_special(&bytes),
                        Some(at),
                        "{special:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert_eq!(first_special(b""), None);
        assert_eq!(first_special(b"abc\""), Some(3));
    }

    #[test]
    fn strings_are_slices_of_the_checked_text() {
        let input =
            "{\"name\":\"caf\u{e9} \u{1F600}, long enough to span words\",\"e\":\"a\\\"\\u00e9b\"}";
        let mut p = Parser::new(input.as_bytes()).unwrap();
        assert!(!p.begin_object().unwrap());
        let key = p.member_key().unwrap();
        assert_eq!(p.raw_text(key), "name");
        let value = p.string().unwrap();
        assert!(!value.escaped);
        assert_eq!(
            p.raw_text(value),
            "caf\u{e9} \u{1F600}, long enough to span words"
        );
        assert!(p.next_member().unwrap());
        p.member_key().unwrap();
        let escaped = p.string().unwrap();
        assert!(escaped.escaped);
        let mut out = String::from("x");
        p.unescape_into(escaped, &mut out).unwrap();
        assert_eq!(out, "xa\"\u{e9}b");
        assert!(!p.next_member().unwrap());
        p.finish().unwrap();
    }

    #[test]
    fn writes_escaped_strings() {
        let mut out = Vec::new();
        write_string(&mut out, "a\"\\\n\u{1}é");
        assert_eq!(std::str::from_utf8(&out).unwrap(), r#""a\"\\\n\u0001é""#);
        let mut p = Parser::new(&out).unwrap();
        assert_eq!(p.node(0).unwrap(), Node::Text("a\"\\\n\u{1}é".into()));
        // Escapes past the first word, and the same text written to a String.
        let long = "0123456789abcdef\"0123456789\\tail é\u{8}";
        let mut bytes = Vec::new();
        write_string(&mut bytes, long);
        let mut text = String::new();
        write_string(&mut text, long);
        assert_eq!(text.as_bytes(), &bytes[..]);
        assert_eq!(text, r#""0123456789abcdef\"0123456789\\tail é\b""#);
    }
}
