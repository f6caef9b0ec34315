//! Reading a list of rules from a stream, one rule at a time, without its
//! text.
//!
//! serde_json can read from a stream (`from_reader`), but one byte at a
//! time, and it buffers each string whole before handing it over, so one
//! huge string costs its size in memory however the rest is read. Here the
//! stream is read in pieces and followed by a small scanner ([`Scan`]:
//! strings, nesting, the rule's index, the field being read) that
//!
//! - refuses a string longer than [`MAX_STRING`] bytes at once, with a
//!   [`RuleError`] naming the rule and the field, before anything buffers
//!   it;
//! - finds where each element of the top-level array begins and ends
//!   ([`Splitter`]), so each rule is parsed from its own bytes with
//!   serde_json's fast slice reader, by the same visitor as everywhere
//!   (`super::AnyValue`); the array's own syntax (brackets, commas,
//!   whitespace, nothing after it) is checked here, with serde_json's
//!   messages and positions in the whole text.
//!
//! A document that is not an array is read by serde_json from the stream
//! (`super::read_list`, through [`Strings`], which applies the same string
//! cap) only to say what it is.

use super::{AnyValue, Checked, ListError, ListState, RuleError, Wire};
use serde::de::{DeserializeSeed, IgnoredAny};
use serde::Deserialize;
use std::io::{self, Read};

/// The longest string (a value or a field name) a streamed list may hold,
/// in bytes: no field takes more than about 50.
pub const MAX_STRING: usize = 1024;

/// How much of a field name the scanner keeps for its message.
const NAME_KEPT: usize = 64;

/// How much of the stream is read at once.
const PIECE: usize = 64 << 10;

/// Where the scanner stands in the JSON text.
#[derive(Debug, Default)]
struct Scan {
    /// Nesting: 0 outside the list, 1 in the list, 2 in a rule.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Bytes of the current string so far.
    len: usize,
    /// The index of the rule being read (elements of the list so far).
    index: usize,
    /// The rule being read is an object.
    in_object: bool,
    /// The next string of the rule is a field name.
    expect_name: bool,
    /// The current string is a field name (kept in `name`).
    naming: bool,
    /// The last field name of the rule (its first bytes).
    name: Vec<u8>,
    /// The text is not a list: every string is the document's.
    whole: bool,
}

impl Scan {
    /// Follows one byte; the error for a string that gets too long.
    #[inline]
    fn step(&mut self, b: u8) -> Result<(), RuleError> {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                self.naming = false;
                return Ok(());
            }
            self.len += 1;
            if self.len > MAX_STRING {
                return Err(self.too_long());
            }
            if self.naming && self.name.len() < NAME_KEPT {
                self.name.push(b);
            }
            return Ok(());
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.len = 0;
                self.naming = self.depth == 2 && self.in_object && self.expect_name;
                if self.naming {
                    self.name.clear();
                }
            }
            b'{' | b'[' => {
                self.depth = self.depth.saturating_add(1);
                if self.depth == 2 {
                    self.in_object = b == b'{';
                    self.expect_name = self.in_object;
                    self.name.clear();
                }
            }
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            b',' if self.depth == 1 => self.index = self.index.saturating_add(1),
            b',' if self.depth == 2 => self.expect_name = self.in_object,
            b':' if self.depth == 2 => self.expect_name = false,
            _ => {}
        }
        Ok(())
    }

    fn too_long(&self) -> RuleError {
        let what =
            format!("a string of more than {MAX_STRING} bytes; no field takes one that long.");
        match self.depth {
            _ if self.whole => RuleError::new("rules", what),
            0 => RuleError::new("rules", what),
            1 => RuleError::new("rule", what).at(self.index),
            _ if self.naming => RuleError::new(
                "rule",
                format!("a field name of more than {MAX_STRING} bytes."),
            )
            .at(self.index),
            _ if !self.in_object || self.name.is_empty() => {
                RuleError::new("rule", what).at(self.index)
            }
            _ => RuleError::new(String::from_utf8_lossy(&self.name), what).at(self.index),
        }
    }
}

/// A reader that refuses a string longer than [`MAX_STRING`] as it passes
/// each piece on: the error is an I/O error carrying the [`RuleError`]
/// ([`rule_error`]). For serde_json's own reader (a document that is not an
/// array); wrap it in a `std::io::BufReader`.
pub(super) struct Strings<R> {
    inner: R,
    scan: Scan,
}

impl<R: Read> Strings<R> {
    /// For a document that is not a list (its strings are named as the
    /// document's).
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            scan: Scan {
                whole: true,
                ..Scan::default()
            },
        }
    }
}

impl<R: Read> Read for Strings<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        for &b in out.get(..n).unwrap_or_default() {
            self.scan.step(b).map_err(io::Error::other)?;
        }
        Ok(n)
    }
}

/// The [`RuleError`] inside an I/O error of [`Strings`], if it is one.
pub(super) fn rule_error(e: &io::Error) -> Option<RuleError> {
    e.get_ref()?.downcast_ref::<RuleError>().cloned()
}

/// A position in the text as serde_json counts it: lines from 1, the
/// column of the last byte read (0 right after a newline).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pos {
    line: usize,
    col: usize,
}

impl Pos {
    fn start() -> Self {
        Self { line: 1, col: 0 }
    }

    #[inline]
    fn advance(&mut self, b: u8) {
        if b == b'\n' {
            self.line += 1;
            self.col = 0;
        } else {
            self.col += 1;
        }
    }

    /// Where `(line, col)` of a text that starts right after `self` is.
    fn then(self, line: usize, col: usize) -> Self {
        if line <= 1 {
            Self {
                line: self.line,
                col: self.col + col,
            }
        } else {
            Self {
                line: self.line + line - 1,
                col,
            }
        }
    }
}

/// The array's own syntax, between its elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Top {
    /// Before the document: whitespace, then `[`.
    Start,
    /// After `[`: an element or `]`.
    Open,
    /// After `,`: an element.
    Comma,
    /// In an element.
    Element,
    /// After an element: `,` or `]`.
    After,
    /// After `]`: whitespace only.
    Done,
}

/// Finds the elements of a JSON array arriving in pieces (see the module
/// docs).
struct Splitter {
    scan: Scan,
    top: Top,
    pos: Pos,
    /// The element began right after this position.
    elem_pos: Pos,
    /// The element is a scalar (a number or a literal): it ends at
    /// whitespace, `,` or `]`.
    scalar: bool,
    /// The element's bytes from earlier pieces.
    carried: Vec<u8>,
}

/// Why splitting stopped.
enum Stop<E> {
    /// The document is not an array: read it with serde_json from here.
    NotArray,
    /// An error.
    Error(ListError<E>),
}

impl Splitter {
    fn new() -> Self {
        Self {
            scan: Scan::default(),
            top: Top::Start,
            pos: Pos::start(),
            elem_pos: Pos::start(),
            scalar: false,
            carried: Vec::new(),
        }
    }

    fn syntax<E>(&self, what: &str) -> Stop<E> {
        Stop::Error(ListError::Rule(not_json_at(what, self.pos)))
    }

    /// Follows `piece`, handing each complete element to `each`. On
    /// [`Stop::NotArray`], `piece[at..]` is where the document begins.
    fn feed<E>(
        &mut self,
        piece: &[u8],
        at: &mut usize,
        each: &mut impl FnMut(&[u8], Pos, bool) -> Result<(), ListError<E>>,
    ) -> Result<(), Stop<E>> {
        // Where the current element began in this piece.
        let mut start = if self.top == Top::Element {
            Some(0)
        } else {
            None
        };
        let mut i = 0;
        while i < piece.len() {
            let b = piece[i];
            if self.top == Top::Element {
                // A scalar ends before the byte that ends it.
                if self.scalar && matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b',' | b']') {
                    // Handed over with the byte that ends it, which is
                    // then read as the array's.
                    self.element_done(piece, start.take().unwrap_or(0), i + 1, true, each)?;
                    continue;
                }
                self.pos.advance(b);
                self.scan
                    .step(b)
                    .map_err(|e| Stop::Error(ListError::Rule(e)))?;
                let ended = !self.scalar && self.scan.depth == 1 && !self.scan.in_string;
                i += 1;
                if ended {
                    self.element_done(piece, start.take().unwrap_or(0), i, false, each)?;
                }
                continue;
            }
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos.advance(b);
                i += 1;
                continue;
            }
            match (self.top, b) {
                (Top::Start, b'[') => self.top = Top::Open,
                (Top::Start, _) => {
                    *at = i;
                    return Err(Stop::NotArray);
                }
                (Top::Open | Top::After, b']') => self.top = Top::Done,
                (Top::After, b',') => self.top = Top::Comma,
                (Top::Comma, b']') => {
                    self.pos.advance(b);
                    return Err(self.syntax("trailing comma"));
                }
                (Top::Open | Top::Comma, b',') => {
                    self.pos.advance(b);
                    return Err(self.syntax("expected value"));
                }
                (Top::Open | Top::Comma, _) => {
                    // An element begins here.
                    self.top = Top::Element;
                    self.elem_pos = self.pos;
                    self.scalar = !matches!(b, b'{' | b'[' | b'"');
                    self.carried.clear();
                    start = Some(i);
                    continue;
                }
                (Top::After, _) => {
                    self.pos.advance(b);
                    return Err(self.syntax("expected `,` or `]`"));
                }
                (Top::Done, _) => {
                    self.pos.advance(b);
                    return Err(self.syntax("trailing characters"));
                }
                (Top::Element, _) => {}
            }
            self.pos.advance(b);
            self.scan
                .step(b)
                .map_err(|e| Stop::Error(ListError::Rule(e)))?;
            i += 1;
        }
        if let Some(s) = start {
            self.carried
                .extend_from_slice(piece.get(s..).unwrap_or_default());
        }
        Ok(())
    }

    /// The element that began at `piece[start]` (or earlier) ends before
    /// `piece[end]`; with `ender`, `piece[end - 1]` is the byte after it.
    fn element_done<E>(
        &mut self,
        piece: &[u8],
        start: usize,
        end: usize,
        ender: bool,
        each: &mut impl FnMut(&[u8], Pos, bool) -> Result<(), ListError<E>>,
    ) -> Result<(), Stop<E>> {
        self.top = Top::After;
        let here = piece.get(start..end).unwrap_or_default();
        let found = if self.carried.is_empty() {
            each(here, self.elem_pos, ender)
        } else {
            self.carried.extend_from_slice(here);
            let whole = std::mem::take(&mut self.carried);
            let r = each(&whole, self.elem_pos, ender);
            self.carried = whole;
            self.carried.clear();
            r
        };
        found.map_err(Stop::Error)
    }

    /// The end of the text: the array must be complete. An element cut
    /// short is handed over as it is (a scalar may be whole; anything else
    /// gets serde_json's own message for where it ends).
    fn finish<E>(
        &mut self,
        each: &mut impl FnMut(&[u8], Pos, bool) -> Result<(), ListError<E>>,
    ) -> Result<(), Stop<E>> {
        if self.top == Top::Element {
            let whole = std::mem::take(&mut self.carried);
            self.top = Top::After;
            each(&whole, self.elem_pos, false).map_err(Stop::Error)?;
        }
        match self.top {
            Top::Done => Ok(()),
            Top::Start | Top::Comma => Err(self.syntax("EOF while parsing a value")),
            _ => Err(self.syntax("EOF while parsing a list")),
        }
    }
}

/// A serde_json-style "not valid JSON" refusal at `pos`.
fn not_json_at(what: &str, pos: Pos) -> RuleError {
    RuleError::new(
        "rule",
        format!(
            "the request is not valid JSON ({what} at line {} column {}).",
            pos.line, pos.col
        ),
    )
}

/// A serde_json error of an element's own text, placed in the whole text
/// (with `instead` as its message, if given).
fn element_error(e: &serde_json::Error, began: Pos, instead: Option<&str>) -> RuleError {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let what = instead.unwrap_or_else(|| text.strip_suffix(&suffix).unwrap_or(&text));
    not_json_at(what, began.then(e.line(), e.column()))
}

/// Where the rules of a list go as they are read.
struct Sink<T, E, F> {
    state: ListState<E>,
    max: usize,
    each: F,
    kind: std::marker::PhantomData<T>,
}

impl<T: Wire, E, F: FnMut(usize, T) -> Result<(), E>> Sink<T, E, F> {
    /// The element `text`, which began right after `began`: parsed and
    /// handed to `each` (the same steps as `super::ListVisitor`). With
    /// `ender`, the last byte of `text` is the one after the element (a
    /// scalar is parsed with it, so that serde_json sees what it would see
    /// in the whole text).
    fn element(&mut self, text: &[u8], began: Pos, ender: bool) -> Result<(), ListError<E>> {
        let index = self.state.count;
        if ender {
            let own = text.get(..text.len().saturating_sub(1)).unwrap_or_default();
            let mut de = serde_json::Deserializer::from_slice(text);
            IgnoredAny::deserialize(&mut de)
                .map_err(|e| ListError::Rule(element_error(&e, began, None)))?;
            let mut de = serde_json::Deserializer::from_slice(own);
            let whole = IgnoredAny::deserialize(&mut de).and_then(|_| de.end());
            whole.map_err(|e| {
                ListError::Rule(element_error(&e, began, Some("expected `,` or `]`")))
            })?;
            return self.element(own, began, false);
        }
        let mut de = serde_json::Deserializer::from_slice(text);
        let checked = if index >= self.max || self.state.first_bad.is_some() {
            // Only its syntax matters now.
            IgnoredAny::deserialize(&mut de).map(|_| None)
        } else {
            AnyValue::<T>::new().deserialize(&mut de).map(Some)
        };
        let checked = checked.map_err(|e| ListError::Rule(element_error(&e, began, None)))?;
        // A whole value with more after it, before `,` or `]`.
        de.end()
            .map_err(|e| ListError::Rule(element_error(&e, began, Some("expected `,` or `]`"))))?;
        if index >= self.max {
            return Err(self
                .state
                .first_bad
                .take()
                .unwrap_or(ListError::TooMany(self.max)));
        }
        self.state.count = index.saturating_add(1);
        match checked {
            None => {}
            Some(Checked(Ok(rule))) => {
                if let Err(e) = (self.each)(index, rule) {
                    self.state.first_bad = Some(ListError::Refused(e));
                }
            }
            Some(Checked(Err(e))) => self.state.first_bad = Some(ListError::Rule(e.at(index))),
        }
        Ok(())
    }
}

/// Reads a JSON array of rules of type `T` from `reader` (see
/// `super::read_flow_specs`).
pub(super) fn read<T: Wire, R: Read, E>(
    mut reader: R,
    max: usize,
    each: impl FnMut(usize, T) -> Result<(), E>,
) -> Result<usize, ListError<E>> {
    let mut sink = Sink {
        state: ListState {
            first_bad: None,
            not_list: None,
            count: 0,
            stopped: false,
        },
        max,
        each,
        kind: std::marker::PhantomData,
    };
    let mut split = Splitter::new();
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ListError::Io(e)),
        };
        let piece = buf.get(..n).unwrap_or_default();
        let mut at = 0;
        let mut on_element =
            |text: &[u8], began: Pos, ender: bool| sink.element(text, began, ender);
        let fed = if n == 0 {
            split.finish(&mut on_element)
        } else {
            split.feed(piece, &mut at, &mut on_element)
        };
        match fed {
            Ok(()) if n == 0 => break,
            Ok(()) => {}
            Err(Stop::Error(e)) => return Err(e),
            Err(Stop::NotArray) => {
                // Not an array (nothing was read yet): serde_json says
                // what it is, or that it is not JSON, reading on from where
                // it begins.
                let rest = io::Cursor::new(piece.get(at..).unwrap_or_default().to_vec());
                let de = serde_json::Deserializer::from_reader(io::BufReader::with_capacity(
                    PIECE,
                    Strings::new(rest.chain(reader)),
                ));
                return super::read_list(de, max, sink.each);
            }
        }
    }
    match sink.state.first_bad {
        Some(e) => Err(e),
        None => Ok(sink.state.count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Result<(), RuleError> {
        let mut s = Scan::default();
        for &b in text.as_bytes() {
            s.step(b)?;
        }
        Ok(())
    }

    #[test]
    fn short_strings_pass_and_a_long_one_is_named() {
        let long = "y".repeat(MAX_STRING + 1);
        let ok =
            r#"[{"src": "1.1.1.1", "dst": "a\"b,{[", "x": [1, {"y": 2}]}, {"prefix": "::/0"}]"#;
        assert!(scan(ok).is_ok());
        let at = |text: String| scan(&text).unwrap_err();
        let e = at(format!(
            r#"[{{"src": "1"}}, {{"src": "1", "dst": "{long}"}}]"#
        ));
        assert_eq!((e.field(), e.index()), ("dst", Some(1)));
        assert!(e.to_string().contains("more than 1024 bytes"), "{e}");
        let e = at(format!(r#"[{{"a": 1}}, 2, "{long}"]"#));
        assert_eq!((e.field(), e.index()), ("rule", Some(2)));
        let e = at(format!(r#"[{{"{long}": 1}}]"#));
        assert_eq!((e.field(), e.index()), ("rule", Some(0)));
        assert!(e.to_string().contains("field name"), "{e}");
        let e = at(format!(r#"[{{"src": ["{long}"]}}]"#));
        assert_eq!((e.field(), e.index()), ("src", Some(0)));
        let e = at(format!(r#"[[1, "{long}"]]"#));
        assert_eq!((e.field(), e.index()), ("rule", Some(0)));
        let e = at(format!(r#""{long}""#));
        assert_eq!((e.field(), e.index()), ("rules", None));
        // Escapes count as what they are in the text, and end no string.
        let escaped = "\\\"".repeat(MAX_STRING / 2 + 1);
        let e = at(format!(r#"[{{"src": "{escaped}"}}]"#));
        assert_eq!(e.field(), "src");
        // Exactly the cap is fine.
        let most = "z".repeat(MAX_STRING);
        assert!(scan(&format!(r#"[{{"src": "{most}"}}]"#)).is_ok());
    }

    #[test]
    fn the_fallback_reader_stops_at_a_long_string() {
        let text = format!("{{\"src\": \"{}\"}}", "q".repeat(200));
        let mut out = String::new();
        Strings::new(text.as_bytes())
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, text);
        let text = format!("{{\"dst\": \"{}\"}}", "q".repeat(100_000));
        let e = Strings::new(text.as_bytes())
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(
            rule_error(&e).map(|r| r.field().to_string()),
            Some("rules".into())
        );
    }

    /// A reader that hands out `text` in pieces of `size` bytes.
    struct Pieces<'a>(&'a [u8], usize);

    impl Read for Pieces<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    type Outcome = Result<(usize, Vec<String>), String>;

    /// What reading `text` gives, as the stream in pieces of `size` and as
    /// serde_json reads it whole (the reference).
    fn both(text: &str, size: usize) -> (Outcome, Outcome) {
        let run = |streamed: bool| -> Outcome {
            let mut got = Vec::new();
            let each = |i: usize, s: super::super::FlowRuleSpec| {
                got.push(format!("{i}:{}", s.dst));
                if s.dst == "refuse" {
                    Err("refused".to_string())
                } else {
                    Ok(())
                }
            };
            let r = if streamed {
                read(Pieces(text.as_bytes(), size), 3, each)
            } else if text.trim_start().starts_with('[') {
                // An array is read as the daemon read a whole body before.
                let de = serde_json::Deserializer::from_slice(text.as_bytes());
                super::super::read_list(de, 3, each)
            } else {
                // Anything else is read by serde_json from the stream.
                let de = serde_json::Deserializer::from_reader(text.as_bytes());
                super::super::read_list(de, 3, each)
            };
            match r {
                Ok(n) => Ok((n, got)),
                Err(ListError::Rule(e)) => Err(format!("rule {e}")),
                Err(ListError::Refused(e)) => Err(format!("refused {e} after {got:?}")),
                Err(ListError::TooMany(n)) => Err(format!("too many {n} after {got:?}")),
                Err(ListError::Io(e)) => Err(format!("io {e}")),
            }
        };
        (run(true), run(false))
    }

    #[test]
    fn pieces_cut_anywhere_read_as_serde_json_reads_the_whole() {
        let r = |d: &str| {
            format!(r#"{{"src": "1.1.1.1", "dst": "{d}", "proto": "tcp", "action": "drop"}}"#)
        };
        let (a, b, refuse) = (r("a,]["), r("b\\\"}"), r("refuse"));
        let texts = vec![
            format!("[{a}, {b}]"),
            format!(" \n[ {a} ,\n{b} ] \n"),
            "[]".to_string(),
            " [ ] ".to_string(),
            format!("[{a}]"),
            format!("[{a},{b},{a}]"),
            format!("[{a},{b},{a},{b}]"),
            format!("[{a},{b},{a},{{"),
            format!("[{a}, 7, {b}]"),
            format!("[{a}, \"x\", null, true, 1.5, -2, [1, 2], {b}]"),
            format!("[{refuse}, {a}]"),
            format!("[{refuse}, {{"),
            format!("[{a}, {{\"src\": 1, \"src\": 2}}]"),
            format!("[{a}, {{\"colour\": \"red\"}}]"),
            format!("[{a} {b}]"),
            format!("[{a},]"),
            format!("[{a}] x"),
            format!("[{a}]]"),
            format!("[{a}"),
            format!("[{a},"),
            "[".to_string(),
            "".to_string(),
            "   ".to_string(),
            "[1x]".to_string(),
            "[tru]".to_string(),
            "[:]".to_string(),
            "[,]".to_string(),
            format!("[{a}, {{\"src\": 1 \"dst\": 2}}]"),
            format!("[{a},\n  {{\"src\": \"x\",\n \"dst\" 2}}]"),
            "{\"a\": [1]}".to_string(),
            " 7".to_string(),
            "\"x\"".to_string(),
            "null".to_string(),
            "{\"a\": ".to_string(),
            "x".to_string(),
            "[-]".to_string(),
            "[1e]".to_string(),
            "[1 ,2]".to_string(),
            "[ \"x\" ,\t1\r\n]".to_string(),
            "[{}, [], {\"src\": \"1.1.1.1\"}]".to_string(),
            format!("[{a},\n{a},\n  {{\"src\": \"\\u00e9\\\"\", \"dst\": 1e400}}]"),
            "[\"é\u{1F600}\", \"\\ud83d\"]".to_string(),
            format!("[{}{}]", "[".repeat(130), "]".repeat(130)),
            "[1]\n\n".to_string(),
            "\u{feff}[]".to_string(),
        ];
        for text in &texts {
            for size in [1, 2, 3, 7, 64, 100_000] {
                let (streamed, whole) = both(text, size);
                assert_eq!(streamed, whole, "{text:?} in pieces of {size}");
            }
        }
    }

    #[test]
    fn a_long_string_ends_the_stream_at_once() {
        let long = format!(
            r#"[{{"src": "1.1.1.1", "dst": "1.1.1.2", "proto": "tcp", "action": "drop"}}, {{"src": "{}"}}, {{"#,
            "9".repeat(5000)
        );
        for size in [1, 1000, 100_000] {
            let e = read(
                Pieces(long.as_bytes(), size),
                9,
                |_, _: super::super::FlowRuleSpec| Ok::<(), ()>(()),
            )
            .unwrap_err();
            assert!(
                matches!(&e, ListError::Rule(r) if (r.field(), r.index()) == ("src", Some(1))),
                "{e:?}"
            );
        }
        // Also when the document is not an array.
        let long = format!(r#"{{"src": "{}"}}"#, "9".repeat(5000));
        let e = read(
            Pieces(long.as_bytes(), 100),
            9,
            |_, _: super::super::FlowRuleSpec| Ok::<(), ()>(()),
        )
        .unwrap_err();
        assert!(
            matches!(&e, ListError::Rule(r) if (r.field(), r.index()) == ("rules", None)),
            "{e:?}"
        );
    }
}
