//! WAL positions (PostgreSQL's `pg_lsn`): the server puts one on the answer to every write
//! (`X-Shoal-Position`) and honours it on reads; the client carries it so that reads see its
//! writes.

use std::fmt;

/// A position in PostgreSQL's write-ahead log, written `X/Y` (the high and low 32 bits in hex,
/// as `pg_current_wal_lsn()` shows it). Ordered as the number, so `F/0` comes before `10/0`
/// although it sorts after it as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Reads `X/Y`, each half 1 to 8 hex digits (either case), as PostgreSQL accepts it.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.split_once('/')?;
        Some(Lsn(u64::from(half(hi)?) << 32 | u64::from(half(lo)?)))
    }
}

/// One half of an `X/Y`. Checked digit by digit because `from_str_radix` also takes a sign.
fn half(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(text: &str) -> Lsn {
        Lsn::parse(text).unwrap_or_else(|| panic!("`{text}` should parse"))
    }

    #[test]
    fn reads_and_writes_postgres_text_form() {
        for text in ["0/0", "0/16B3748", "1A/FF00", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(lsn(text).to_string(), text);
        }
        assert_eq!(lsn("1A/FF00"), Lsn(0x1A_0000_FF00));
        // Lower case and leading zeros are accepted, and shown as PostgreSQL shows them.
        assert_eq!(lsn("00000001/00ab").to_string(), "1/AB");
    }

    #[test]
    fn orders_as_numbers_across_the_halves() {
        assert!(lsn("0/FFFFFFFF") < lsn("1/0"));
        assert!(lsn("F/0") < lsn("10/0"));
        assert!(lsn("0/FF") < lsn("0/100"));
        assert!(lsn("1/0") > lsn("0/20"));
        assert_eq!(lsn("0/a"), lsn("0/A"));
    }

    #[test]
    fn refuses_what_is_not_a_position() {
        for text in
            ["", "0", "/", "0/", "/0", "G/1", "1/G", "1/2/3", "123456789/0", "0/123456789", "+1/0", " 0/1", "0/-1"]
        {
            assert_eq!(Lsn::parse(text), None, "`{text}` should be refused");
        }
    }
}
