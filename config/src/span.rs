//! Byte offsets (from toml's spans) to 1-based line and column numbers.
//!
//! Owns: offset arithmetic. Must never: interpret the document.

/// Line-start table of one document.
#[derive(Debug, Clone)]
pub(crate) struct LineIndex {
    text: String,
    line_starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            text: text.to_owned(),
            line_starts,
        }
    }

    /// 1-based (line, column); the column counts characters, not bytes.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_line_and_char_column() {
        let idx = LineIndex::new("ab\ncdé\nx");
        assert_eq!(idx.line_col(0), (1, 1));
        assert_eq!(idx.line_col(2), (1, 3));
        assert_eq!(idx.line_col(3), (2, 1));
        assert_eq!(idx.line_col(7), (2, 4)); // after the two-byte é
        assert_eq!(idx.line_col(8), (3, 1));
        assert_eq!(idx.line_col(100), (3, 2));
    }
}
