//! Splits the QMP input stream into JSON messages.
//!
//! QMP input is JSON values back to back, with or without newlines between
//! them. A message ends where its outermost bracket closes, found by
//! counting brackets outside strings, so a value split across reads or
//! several values in one read both work. Syntax beyond that is left to the
//! parser; the splitter only decides where a message ends.
//!
//! Like the reference server it also accepts `'single-quoted'` strings and
//! a `\'` escape. These are rewritten into standard JSON as the message is
//! copied, so the parser only ever sees RFC 8259 text.
//!
//! Errors and recovery, also as the reference server does it:
//! - A byte that cannot start a token is an error; the bytes after it are
//!   skipped up to the next structural character or line end, so one word
//!   of garbage is one error.
//! - After an error the rest of the message is skipped without storing it:
//!   brackets are still counted and the skipping ends where they balance.
//! - An ASCII control character other than tab, CR and LF, or a 0xFE/0xFF
//!   byte, resets everything. Clients send one to bring the server back to a
//!   known state whatever came before.
//!
//! Memory held is the message being framed, at most [`MAX_MESSAGE`] bytes,
//! whatever the peer sends.

use alloc::vec::Vec;

/// Largest message, in bytes as stored (after quote rewriting).
pub const MAX_MESSAGE: usize = 64 << 10;

/// Deepest nesting of objects and arrays. The parser recurses per level,
/// so this bounds its stack as well.
pub const MAX_DEPTH: usize = 64;

/// Containers, members and elements one message may hold. A parsed value
/// takes far more memory than its text (an empty-ish object is a whole
/// B-tree node), so the byte limit alone does not bound the parse.
pub const MAX_VALUES: usize = 4096;

/// A message buffer that grew past this is released once delivered, so an
/// idle session does not keep the memory of its largest request.
const KEEP_CAPACITY: usize = 4096;

/// Why a message was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// A byte that no JSON token starts or contains here.
    Stray(u8),
    /// Over [`MAX_MESSAGE`].
    TooLong,
    /// Over [`MAX_DEPTH`].
    TooDeep,
    /// Over [`MAX_VALUES`].
    TooMany,
}

/// What [`Splitter::split`] found in the bytes it consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// All input consumed, no message complete yet.
    NeedMore,
    /// [`Splitter::message`] holds one complete message.
    Message,
    /// A message was dropped; tell the peer.
    Error(SplitError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    /// Between tokens.
    Start,
    /// In a bare number or keyword.
    Word,
    /// In a string opened by `quote`; `escaped` after a backslash.
    Str { quote: u8, escaped: bool },
    /// After a stray byte: skip to a point where tokens can start again.
    Skip,
}

/// The framing state of one input stream.
#[derive(Debug)]
pub struct Splitter {
    /// The current message, normalised.
    buf: Vec<u8>,
    /// Open `{` and `[` outside strings.
    depth: usize,
    values: usize,
    lex: Lex,
    /// The current message has failed: count brackets, store nothing.
    discarding: bool,
    /// `buf` was handed out as a message; clear it before going on.
    delivered: bool,
}

impl Default for Splitter {
    fn default() -> Self {
        Self::new()
    }
}

/// Control bytes that reset the stream, and bytes that never occur in
/// UTF-8.
fn is_reset(b: u8) -> bool {
    (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b >= 0xFE
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn starts_word(b: u8) -> bool {
    b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-'
}

/// Bytes that may continue a number or keyword. Wider than JSON so a bad
/// word reaches the parser whole and is reported as one error.
fn continues_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.' | b'_')
}

impl Splitter {
    pub fn new() -> Self {
        Splitter {
            buf: Vec::new(),
            depth: 0,
            values: 0,
            lex: Lex::Start,
            discarding: false,
            delivered: false,
        }
    }

    /// The message after [`Split::Message`], valid until the next
    /// [`Splitter::split`].
    pub fn message(&self) -> &[u8] {
        if self.delivered { &self.buf } else { &[] }
    }

    /// Bytes held for an unfinished message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Consumes input up to the end of the next message or error, and
    /// returns how many bytes it took and what it found. A byte that ends a
    /// bare number (`1}`) is not consumed: it belongs to what follows.
    pub fn split(&mut self, input: &[u8]) -> (usize, Split) {
        if self.delivered {
            self.delivered = false;
            self.buf.clear();
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            match self.step(b) {
                Step::Next => i += 1,
                Step::Again => {}
                Step::Done(split) => return (i + 1, split),
                Step::DoneBefore(split) => return (i, split),
            }
        }
        (input.len(), Split::NeedMore)
    }

    fn step(&mut self, b: u8) -> Step {
        if is_reset(b) {
            let quiet = self.discarding;
            self.reset();
            return if quiet {
                Step::Next
            } else {
                Step::Done(Split::Error(SplitError::Stray(b)))
            };
        }
        match self.lex {
            Lex::Str { quote, escaped } => self.in_string(b, quote, escaped),
            Lex::Word if continues_word(b) => self.store(&[b]),
            Lex::Word => {
                self.lex = Lex::Start;
                if self.depth == 0 {
                    self.finish_before()
                } else {
                    Step::Again
                }
            }
            Lex::Skip => {
                if (b < 0x20 && b != b'\t') || b"{}[],:".contains(&b) {
                    self.lex = Lex::Start;
                    Step::Again
                } else {
                    Step::Next
                }
            }
            Lex::Start => self.at_start(b),
        }
    }

    fn at_start(&mut self, b: u8) -> Step {
        if is_space(b) {
            // Kept inside a message: `[1 2]` must not become `[12]`.
            return if self.depth > 0 {
                self.store(&[b])
            } else {
                Step::Next
            };
        }
        if self.depth == 0 {
            self.buf.clear();
            self.values = 0;
        }
        match b {
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return self.fail(SplitError::TooDeep);
                }
                if let Some(s) = self.count() {
                    return s;
                }
                self.store(&[b])
            }
            b'}' | b']' if self.depth > 0 => {
                self.depth -= 1;
                if let Step::Done(e) = self.store(&[b]) {
                    return Step::Done(e);
                }
                if self.depth == 0 {
                    self.finish()
                } else {
                    Step::Next
                }
            }
            // A closer or separator on its own is a message of one token
            // that the parser rejects.
            b'}' | b']' | b',' | b':' if self.depth == 0 => {
                self.buf.push(b);
                self.finish()
            }
            b',' | b':' => {
                if let Some(s) = self.count() {
                    return s;
                }
                self.store(&[b])
            }
            b'"' | b'\'' => {
                self.lex = Lex::Str {
                    quote: b,
                    escaped: false,
                };
                self.store(b"\"")
            }
            _ if starts_word(b) => {
                self.lex = Lex::Word;
                self.store(&[b])
            }
            _ => {
                self.lex = Lex::Skip;
                self.fail(SplitError::Stray(b))
            }
        }
    }

    fn in_string(&mut self, b: u8, quote: u8, escaped: bool) -> Step {
        if escaped {
            self.lex = Lex::Str {
                quote,
                escaped: false,
            };
            // `\'` is not JSON; the apostrophe needs no escape there.
            return if b == b'\'' {
                self.store(b"'")
            } else if b < 0x20 {
                self.lex = Lex::Skip;
                self.fail(SplitError::Stray(b))
            } else {
                self.store(&[b'\\', b])
            };
        }
        match b {
            // Raw tab, CR or LF: not allowed in a string.
            _ if b < 0x20 => {
                self.lex = Lex::Skip;
                self.fail(SplitError::Stray(b))
            }
            b'\\' => {
                self.lex = Lex::Str {
                    quote,
                    escaped: true,
                };
                Step::Next
            }
            _ if b == quote => {
                self.lex = Lex::Start;
                if let Step::Done(e) = self.store(b"\"") {
                    return Step::Done(e);
                }
                if self.depth == 0 {
                    self.finish()
                } else {
                    Step::Next
                }
            }
            b'"' => self.store(b"\\\""),
            _ => self.store(&[b]),
        }
    }

    /// Counts a value; what to return instead if that is one too many.
    fn count(&mut self) -> Option<Step> {
        self.values += 1;
        (self.values > MAX_VALUES && !self.discarding).then(|| self.fail(SplitError::TooMany))
    }

    fn store(&mut self, bytes: &[u8]) -> Step {
        if self.discarding {
            return Step::Next;
        }
        if self.buf.len() + bytes.len() > MAX_MESSAGE {
            return self.fail(SplitError::TooLong);
        }
        self.buf.extend_from_slice(bytes);
        Step::Next
    }

    /// Drops the current message, reporting it once. Skipping lasts until
    /// the value the error occurred in ends.
    fn fail(&mut self, e: SplitError) -> Step {
        let first = !self.discarding;
        self.buf.clear();
        self.discarding = self.depth > 0 || matches!(self.lex, Lex::Str { .. } | Lex::Word);
        if first {
            Step::Done(Split::Error(e))
        } else {
            Step::Next
        }
    }

    /// The value that ended at the byte just consumed.
    fn finish(&mut self) -> Step {
        if self.discarding {
            self.discarding = false;
            self.buf.clear();
            return Step::Next;
        }
        self.delivered = true;
        Step::Done(Split::Message)
    }

    /// The value that ended just before the current byte.
    fn finish_before(&mut self) -> Step {
        match self.finish() {
            Step::Done(s) => Step::DoneBefore(s),
            _ => Step::Again,
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.depth = 0;
        self.values = 0;
        self.lex = Lex::Start;
        self.discarding = false;
    }
}

enum Step {
    /// Byte consumed, go on.
    Next,
    /// Look at the same byte again in the new state.
    Again,
    /// Byte consumed; report.
    Done(Split),
    /// Byte not consumed; report.
    DoneBefore(Split),
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    /// Everything the splitter reports for `input` fed in pieces of `step`
    /// bytes: messages as text, errors as `Err`.
    fn run(input: &[u8], step: usize) -> Vec<Result<String, SplitError>> {
        let mut s = Splitter::new();
        let mut got = Vec::new();
        for chunk in input.chunks(step) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let (n, what) = s.split(rest);
                rest = &rest[n..];
                match what {
                    Split::NeedMore => assert!(rest.is_empty()),
                    Split::Message => {
                        got.push(Ok(String::from_utf8(s.message().to_vec()).unwrap()))
                    }
                    Split::Error(e) => got.push(Err(e)),
                }
                assert!(s.buffered() <= MAX_MESSAGE);
            }
        }
        got
    }

    fn msgs(v: &[&str]) -> Vec<Result<String, SplitError>> {
        v.iter().map(|m| Ok(String::from(*m))).collect()
    }

    #[test]
    fn splits_back_to_back_values_in_any_chunking() {
        let input = br#"{"a": "}]\"{"}[1, [2]]  "str" {"b":{}}"#;
        let want = msgs(&[r#"{"a": "}]\"{"}"#, "[1, [2]]", r#""str""#, r#"{"b":{}}"#]);
        for step in 1..input.len() + 1 {
            assert_eq!(run(input, step), want, "step {step}");
        }
    }

    #[test]
    fn whitespace_between_values_is_skipped() {
        assert_eq!(run(b" \r\n\t{}\r\n\r\n[]\n", 3), msgs(&["{}", "[]"]));
        assert_eq!(run(b"[1 2]", 1), msgs(&["[1 2]"]));
    }

    #[test]
    fn bare_words_end_at_a_delimiter() {
        assert_eq!(
            run(b"123{}true false\n-1.5e3 ", 1),
            msgs(&["123", "{}", "true", "false", "-1.5e3"])
        );
        // No delimiter yet: still waiting.
        assert_eq!(run(b"123", 1), msgs(&[]));
    }

    #[test]
    fn lone_closers_and_separators_are_messages() {
        assert_eq!(run(b"}],:", 1), msgs(&["}", "]", ",", ":"]));
    }

    #[test]
    fn single_quotes_become_standard_json() {
        let got = run(br#"{'execute': 'say "hi"', 'x': 'it\'s', "y": "\'\n"}"#, 1);
        assert_eq!(
            got,
            msgs(&[r#"{"execute": "say \"hi\"", "x": "it's", "y": "'\n"}"#])
        );
    }

    #[test]
    fn garbage_word_is_one_error_then_recovers() {
        let got = run(b"Hello world {\"a\":1}", 1);
        assert_eq!(got, [Err(SplitError::Stray(b'H')), Ok("{\"a\":1}".into())]);
        let got = run(b"{\"a\": @@@, \"b\": [1]}{}", 1);
        assert_eq!(got, [Err(SplitError::Stray(b'@')), Ok("{}".into())]);
    }

    #[test]
    fn raw_newline_in_string_is_an_error() {
        let got = run(b"{\"a\": \"x\ny\"}\n{}", 1);
        assert_eq!(got, [Err(SplitError::Stray(b'\n')), Ok("{}".into())]);
    }

    #[test]
    fn reset_byte_forces_known_state() {
        // Unterminated string and open brackets, then a reset byte.
        let got = run(b"{\"a\": [\"unterminated \xff{\"execute\": 1}", 1);
        assert_eq!(
            got,
            [Err(SplitError::Stray(0xff)), Ok("{\"execute\": 1}".into())]
        );
        // After an error, the reset ends the skipping quietly.
        let got = run(b"[@ [[ \x04{}", 1);
        assert_eq!(got, [Err(SplitError::Stray(b'@')), Ok("{}".into())]);
    }

    #[test]
    fn depth_limit_then_skip_to_balance() {
        let deep = "[".repeat(MAX_DEPTH);
        let ok = alloc::format!("{deep}{}", "]".repeat(MAX_DEPTH));
        assert_eq!(run(ok.as_bytes(), 7), msgs(&[&ok]));
        let bad = alloc::format!(
            "{deep}[{{\"x\": \"]]]\"}}{} {{}}",
            "]".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            run(bad.as_bytes(), 5),
            [Err(SplitError::TooDeep), Ok("{}".into())]
        );
    }

    #[test]
    fn endless_open_brackets_stay_bounded() {
        let mut s = Splitter::new();
        let chunk = [b'['; 4096];
        let mut errors = 0;
        for _ in 0..(10 << 20) / chunk.len() {
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let (n, what) = s.split(rest);
                rest = &rest[n..];
                errors += usize::from(matches!(what, Split::Error(_)));
            }
            assert!(s.buffered() <= MAX_DEPTH);
            assert!(s.buf.capacity() <= KEEP_CAPACITY);
        }
        assert_eq!(errors, 1);
    }

    #[test]
    fn size_limit_on_huge_string() {
        let mut input = Vec::from(&b"{\"a\": \""[..]);
        input.resize(input.len() + 10 * MAX_MESSAGE, b'x');
        input.extend_from_slice(b"\"}{}");
        assert_eq!(
            run(&input, 1000),
            [Err(SplitError::TooLong), Ok("{}".into())]
        );
        // A top-level string over the limit is skipped to its end.
        let mut input = Vec::from(&b"\""[..]);
        input.resize(input.len() + 2 * MAX_MESSAGE, b'{');
        input.extend_from_slice(b"\" []");
        assert_eq!(
            run(&input, 999),
            [Err(SplitError::TooLong), Ok("[]".into())]
        );
    }

    #[test]
    fn value_count_limit() {
        let mut input = String::from("[");
        for _ in 0..MAX_VALUES {
            input.push_str("0,");
        }
        input.push_str("0] []");
        assert_eq!(
            run(input.as_bytes(), 4096),
            [Err(SplitError::TooMany), Ok("[]".into())]
        );
    }

    #[test]
    fn message_is_empty_until_complete() {
        let mut s = Splitter::new();
        assert_eq!(s.split(b"{\"a\""), (4, Split::NeedMore));
        assert_eq!(s.message(), b"");
        assert_eq!(s.split(b": 1} {}"), (4, Split::Message));
        assert_eq!(s.message(), b"{\"a\": 1}");
        assert_eq!(s.split(b" {}"), (3, Split::Message));
        assert_eq!(s.message(), b"{}");
    }
}
