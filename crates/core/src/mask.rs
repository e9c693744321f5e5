//! Masking secrets in a job's output: every occurrence of each value becomes `***` before the
//! output is stored, also a value the job wrote across two reads of its pipe.

/// What a masked value is replaced with.
pub const MASK: &[u8] = b"***";

/// Masks one output stream, chunk by chunk. It keeps back, unflushed, the end of a chunk that
/// could begin a value (at most the longest value's length less one byte) until the next
/// chunk, or [`Masker::finish`], says whether it does.
#[derive(Debug, Default)]
pub struct Masker {
    /// Longest first, so that of two values starting at one place the longer is masked.
    values: Vec<Vec<u8>>,
    held: Vec<u8>,
}

impl Masker {
    /// A masker of `values` (empty ones are ignored).
    pub fn new<I, V>(values: I) -> Masker
    where
        I: IntoIterator<Item = V>,
        V: AsRef<[u8]>,
    {
        let mut values: Vec<Vec<u8>> =
            values.into_iter().map(|v| v.as_ref().to_vec()).filter(|v| !v.is_empty()).collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Masker { values, held: Vec::new() }
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The masked output of `chunk` that can be flushed now.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.values.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(chunk);
        let (out, rest) = self.scan(&buf, true);
        self.held = buf[rest..].to_vec();
        out
    }

    /// What is still held back, masked: nothing more can complete a value.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.held);
        self.scan(&buf, false).0
    }

    /// Masks `buf` from its start; with `hold`, stops where the rest could begin a value and
    /// says where.
    fn scan(&self, buf: &[u8], hold: bool) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < buf.len() {
            let rest = &buf[i..];
            // First whether a value could begin here and end past the data: then what to do
            // here is not known yet (a longer value would win over a shorter one found now).
            if hold && self.values.iter().any(|v| v.len() > rest.len() && v.starts_with(rest)) {
                return (out, i);
            }
            if let Some(v) = self.values.iter().find(|v| rest.starts_with(v)) {
                out.extend_from_slice(MASK);
                i += v.len();
                continue;
            }
            out.push(buf[i]);
            i += 1;
        }
        (out, buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_at_once(values: &[&str], text: &str) -> String {
        let mut m = Masker::new(values);
        let mut out = m.feed(text.as_bytes());
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_every_occurrence_longest_first() {
        assert_eq!(all_at_once(&["hunter2"], "pw=hunter2 again hunter2!"), "pw=*** again ***!");
        assert_eq!(all_at_once(&["abcdef", "cd"], "xabcdefx abcd"), "x***x ab***");
        assert_eq!(all_at_once(&[], "plain"), "plain");
        assert_eq!(all_at_once(&["aa"], "aaaaa"), "******a");
        // A shorter value found at the end of a chunk waits for what a longer one needs.
        let mut m = Masker::new(["ca", "c"]);
        let mut out = m.feed(b"abc");
        out.extend(m.feed(b"a"));
        out.extend(m.finish());
        assert_eq!(out, b"ab***");
    }

    #[test]
    fn a_value_split_across_chunks_is_masked_and_the_rest_flows() {
        let mut m = Masker::new(["s3cr3t-value"]);
        let mut out = m.feed(b"before s3cr");
        assert_eq!(out, b"before ", "the start of the value is held back");
        out.extend(m.feed(b"3t-value after"));
        out.extend(m.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "before *** after");
        // A prefix that turns out not to be the value is flushed with the next chunk or at the end.
        let mut m = Masker::new(["s3cr3t-value"]);
        let mut out = m.feed(b"s3cr");
        out.extend(m.feed(b"ew"));
        assert_eq!(out, b"s3crew");
        assert_eq!(m.feed(b"s3"), b"");
        assert_eq!(m.finish(), b"s3");
    }

    proptest! {
        /// However the output is cut into chunks, the masked result is the same, and no value
        /// survives in it.
        #[test]
        fn chunking_never_changes_the_result(
            text in "[abc]{0,60}",
            cuts in proptest::collection::vec(0usize..60, 0..8),
            values in proptest::collection::vec("[abc]{1,5}", 1..4),
        ) {
            let whole = {
                let mut m = Masker::new(&values);
                let mut out = m.feed(text.as_bytes());
                out.extend(m.finish());
                out
            };
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut m = Masker::new(&values);
            let mut pieces = Vec::new();
            let mut from = 0;
            for c in cuts {
                pieces.extend(m.feed(&text.as_bytes()[from..c]));
                from = c;
            }
            pieces.extend(m.feed(&text.as_bytes()[from..]));
            pieces.extend(m.finish());
            prop_assert_eq!(&pieces, &whole);
            // What remains of the text between masks holds no value whole.
            let shown = String::from_utf8(whole).unwrap();
            for part in shown.split("***") {
                for v in &values {
                    // Only a value made of the mask's neighbours could reappear; `[abc]` never.
                    prop_assert!(!part.contains(v.as_str()), "{} in {:?}", v, shown);
                }
            }
        }
    }
}
