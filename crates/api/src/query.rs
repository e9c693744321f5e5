//! What the list operations' query strings share: the page size, and filters that name one
//! of an enum's values.

use crate::error::{ApiError, ApiResult};

/// The page size `limit` gives: 1 to 1000, 50 when left out.
pub(crate) fn page_limit(limit: Option<&str>) -> ApiResult<i64> {
    match limit {
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::invalid_query(format!("limit `{l}` must be a whole number from 1 to 1000"))),
        None => Ok(50),
    }
}

/// A filter naming one of `names` (`what` says what it is: "state"), read by `parse`.
pub(crate) fn named<T>(
    what: &str,
    text: Option<&str>,
    parse: fn(&str) -> Option<T>,
    names: &[&str],
) -> ApiResult<Option<T>> {
    text.map(|t| {
        parse(t)
            .ok_or_else(|| ApiError::invalid_query(format!("unknown {what} `{t}`; use one of {}", names.join(", "))))
    })
    .transpose()
}
