//! Echoing untrusted input in messages, bounded: an error names what was
//! wrong with a value without repeating a megabyte of it back.

use std::fmt;

/// At most this many characters of an input are quoted.
const MAX_QUOTED_CHARS: usize = 64;

/// Displays a string as a quoted, escaped literal (`"abc"`), cut to its
/// first 64 characters with `…` and its full length when longer.
#[derive(Clone, Copy)]
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chars = self.0.chars().count();
        if chars <= MAX_QUOTED_CHARS {
            return write!(f, "{:?}", self.0);
        }
        let head: String = self.0.chars().take(MAX_QUOTED_CHARS).collect();
        write!(f, "{head:?}… ({chars} characters)")
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_inputs_are_quoted_whole_and_long_ones_cut() {
        assert_eq!(Quoted("acme").to_string(), "\"acme\"");
        assert_eq!(Quoted("a\"b\n").to_string(), "\"a\\\"b\\n\"");
        let long = "x".repeat(100_000);
        let quoted = Quoted(&long).to_string();
        assert!(quoted.len() < 100, "{quoted}");
        assert!(quoted.ends_with("… (100000 characters)"), "{quoted}");
    }
}
