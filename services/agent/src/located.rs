//! Problems located in a TOML file the agent reads: byte offsets turned
//! into lines and columns, and the `FILE:LINE:COLUMN: message` form every
//! such problem is shown in.

use std::fmt;
use std::path::{Path, PathBuf};

/// A located problem in a file the agent reads (a variants file, the
/// watch configuration): `FILE:LINE:COLUMN: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// Problems, one per line.
pub(crate) fn display_problems(problems: &[Problem]) -> String {
    problems.iter().map(Problem::to_string).collect::<Vec<_>>().join("\n")
}

/// A file's text, or the problem that it is not UTF-8 (located at the
/// first byte that is not).
pub(crate) fn utf8_text(path: &Path, bytes: Vec<u8>) -> Result<String, Problem> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let valid = std::str::from_utf8(valid).expect("valid up to here");
        let (line, column) = Locator::new(valid).locate(valid.len());
        Problem { file: path.to_owned(), line, column, message: "the file is not UTF-8".to_owned() }
    })
}

/// Turns byte offsets of a text into 1-based lines and columns (columns in
/// characters, so that they match what an editor shows).
#[derive(Debug)]
pub(crate) struct Locator<'a> {
    text: &'a str,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { text, line_starts }
    }

    /// `(line, column)` of a byte offset; offsets past the end or inside a
    /// character are clamped.
    pub(crate) fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let start = self.line_starts[line];
        let column = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count());
        (line + 1, column + 1)
    }

    /// The line of a byte offset.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.locate(offset).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_offsets_by_line_and_character() {
        let text = "ab\nçd\n\nx";
        let loc = Locator::new(text);
        assert_eq!(loc.locate(0), (1, 1));
        assert_eq!(loc.locate(2), (1, 3));
        assert_eq!(loc.locate(3), (2, 1));
        // 'ç' is two bytes, one column.
        assert_eq!(loc.locate(5), (2, 2));
        assert_eq!(loc.locate(7), (3, 1));
        assert_eq!(loc.locate(8), (4, 1));
        assert_eq!(loc.locate(100), (4, 2));
    }
}
