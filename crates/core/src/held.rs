//! A count of things under way, held while one is: a gauge that cannot be left counting a
//! future that was dropped at an await.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts one in `n` from its making until it is dropped (however it ends).
pub struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    pub fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Held(n)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_while_held() {
        let n = AtomicUsize::new(0);
        let a = Held::new(&n);
        let b = Held::new(&n);
        assert_eq!(n.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(n.load(Ordering::Relaxed), 1);
        drop(b);
        assert_eq!(n.load(Ordering::Relaxed), 0);
    }
}
