//! In-memory per-peer bitmaps (one bit per 4 KiB of data) with dirty-page
//! tracking. Owns: bit arithmetic and the page encoding (little-endian u64 words,
//! bit i of the bitmap = bit i%64 of word i/64). Must never: set bits beyond the
//! data size (those stay zero on disk).

use crate::layout::{BITMAP_GRANULE_BYTES, MD_BLOCK_BYTES};

const WORDS_PER_PAGE: usize = 512;
// Compile-time size assertion: a page of words is exactly one metadata block.
const _: () = assert!(WORDS_PER_PAGE as u64 * 8 == MD_BLOCK_BYTES);

/// One peer's bitmap.
#[derive(Debug, Clone)]
pub(crate) struct Bitmap {
    words: Vec<u64>,
    bits: u64,
    dirty: Vec<bool>,
}

impl Bitmap {
    /// A zeroed bitmap of `bits` bits stored in `bytes` (a multiple of 4096).
    pub(crate) fn new(bits: u64, bytes: u64) -> Self {
        let words = usize::try_from(bytes / 8).expect("bitmap fits in memory");
        assert!(u64::try_from(words).unwrap_or(0) * 64 >= bits);
        Self {
            words: vec![0; words],
            bits,
            dirty: vec![false; words / WORDS_PER_PAGE],
        }
    }

    pub(crate) fn pages(&self) -> usize {
        self.dirty.len()
    }

    pub(crate) fn bits(&self) -> u64 {
        self.bits
    }

    fn set_bit_range(&mut self, first: u64, end: u64, value: bool) {
        let mut bit = first;
        while bit < end {
            let word = usize::try_from(bit / 64).expect("in range");
            let shift = bit % 64;
            let n = (64 - shift).min(end - bit);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << shift
            };
            let old = self.words[word];
            self.words[word] = if value { old | mask } else { old & !mask };
            if self.words[word] != old {
                self.dirty[word / WORDS_PER_PAGE] = true;
            }
            bit += n;
        }
    }

    /// Marks every granule touched by the byte range.
    pub(crate) fn set_range(&mut self, offset_bytes: u64, len_bytes: u64) {
        let end_bytes = offset_bytes
            .checked_add(len_bytes)
            .expect("range overflows");
        let first = offset_bytes / BITMAP_GRANULE_BYTES;
        let end = end_bytes.div_ceil(BITMAP_GRANULE_BYTES);
        assert!(end <= self.bits, "bitmap range beyond data size");
        self.set_bit_range(first, end, true);
    }

    /// Clears only granules the byte range covers completely.
    pub(crate) fn clear_range(&mut self, offset_bytes: u64, len_bytes: u64) {
        let end_bytes = offset_bytes
            .checked_add(len_bytes)
            .expect("range overflows");
        let first = offset_bytes.div_ceil(BITMAP_GRANULE_BYTES);
        let end = (end_bytes / BITMAP_GRANULE_BYTES).min(self.bits);
        if first < end {
            self.set_bit_range(first, end, false);
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub(crate) fn next_set(&self, from_bit: u64) -> Option<u64> {
        if from_bit >= self.bits {
            return None;
        }
        let mut word = usize::try_from(from_bit / 64).ok()?;
        let mut w = self.words[word] & (u64::MAX << (from_bit % 64));
        loop {
            if w != 0 {
                let bit = u64::try_from(word).ok()? * 64 + u64::from(w.trailing_zeros());
                return (bit < self.bits).then_some(bit);
            }
            word += 1;
            w = *self.words.get(word)?;
        }
    }

    /// Runs of set bits as (first bit, length).
    pub(crate) fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut from = 0;
        while let Some(start) = self.next_set(from) {
            let mut end = start + 1;
            while end < self.bits && self.get(end) {
                end += 1;
            }
            runs.push((start, end - start));
            from = end;
        }
        runs
    }

    fn get(&self, bit: u64) -> bool {
        let word = usize::try_from(bit / 64).unwrap_or(usize::MAX);
        self.words
            .get(word)
            .is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }

    pub(crate) fn mark_all_dirty(&mut self) {
        self.dirty.fill(true);
    }

    pub(crate) fn dirty_pages(&self) -> Vec<usize> {
        self.dirty
            .iter()
            .enumerate()
            .filter(|(_, d)| **d)
            .map(|(i, _)| i)
            .collect()
    }

    pub(crate) fn mark_clean(&mut self, page: usize) {
        self.dirty[page] = false;
    }

    pub(crate) fn encode_page(&self, page: usize) -> Vec<u8> {
        self.words[page * WORDS_PER_PAGE..(page + 1) * WORDS_PER_PAGE]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    /// Loads a page read from disk; returns false if it has bits beyond the data size.
    pub(crate) fn load_page(&mut self, page: usize, bytes: &[u8]) -> bool {
        for (i, chunk) in bytes.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            self.words[page * WORDS_PER_PAGE + i] = u64::from_le_bytes(b);
        }
        self.next_set(self.bits).is_none() && self.tail_clear()
    }

    fn tail_clear(&self) -> bool {
        let first_word = usize::try_from(self.bits / 64).unwrap_or(usize::MAX);
        let partial_mask = if self.bits.is_multiple_of(64) {
            u64::MAX
        } else {
            u64::MAX << (self.bits % 64)
        };
        self.words
            .iter()
            .enumerate()
            .skip(first_word)
            .all(|(i, w)| {
                let mask = if i == first_word {
                    partial_mask
                } else {
                    u64::MAX
                };
                w & mask == 0
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_marks_touched_granules_clear_only_covered_ones() {
        let mut bm = Bitmap::new(1000, 4096);
        bm.set_range(4095, 2);
        assert_eq!(bm.runs(), vec![(0, 2)]);
        bm.clear_range(0, 4096 + 100);
        assert_eq!(bm.runs(), vec![(1, 1)]);
        bm.clear_range(4096, 4096);
        assert_eq!(bm.count(), 0);
    }

    #[test]
    fn count_and_next_set_across_words() {
        let mut bm = Bitmap::new(100_000, 16384);
        bm.set_range(63 * 4096, 3 * 4096);
        bm.set_range(99_999 * 4096, 4096);
        assert_eq!(bm.count(), 4);
        assert_eq!(bm.next_set(0), Some(63));
        assert_eq!(bm.next_set(66), Some(99_999));
        assert_eq!(bm.next_set(100_000), None);
        assert_eq!(bm.runs(), vec![(63, 3), (99_999, 1)]);
        assert_eq!(bm.dirty_pages(), vec![0, 3]);
    }

    #[test]
    fn page_round_trip_and_tail_check() {
        let mut bm = Bitmap::new(70, 4096);
        bm.set_range(0, 70 * 4096);
        let page = bm.encode_page(0);
        let mut other = Bitmap::new(70, 4096);
        assert!(other.load_page(0, &page));
        assert_eq!(other.count(), 70);
        let mut bad = page.clone();
        bad[9] = 0xFF;
        assert!(!other.load_page(0, &bad));
    }
}
