//! Query parameters of the console's pages, checked before anything is
//! read: an unknown, repeated, oversized or malformed parameter is a
//! [`Failure::BadParam`] naming it (a 400 page), never a 500.

use super::{Failure, RawParams};

/// Rows of a listing page unless `page_size` says otherwise.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Most rows of a listing page.
pub const MAX_PAGE_SIZE: usize = 500;
/// Longest value of a text filter, in bytes.
const MAX_TEXT: usize = 256;

/// The checked query parameters of one page.
#[derive(Debug)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// The parameters of `raw`, refusing any not in `allowed` and any
    /// given twice. Empty values count as absent (what an empty form
    /// field sends).
    pub fn parse(raw: RawParams, allowed: &[&str]) -> Result<Self, Failure> {
        let pairs = match raw {
            Ok(axum::extract::Query(pairs)) => pairs,
            Err(_) => {
                return Err(Failure::BadParam("(query string)".into(), "is not valid URL encoding".into()));
            }
        };
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                let shown: String = name.chars().take(64).collect();
                return Err(Failure::BadParam(
                    shown,
                    format!("is not a parameter of this page ({})", allowed.join(", ")),
                ));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(Failure::BadParam(name.clone(), "is given twice".into()));
            }
        }
        Ok(Self { pairs: pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect() })
    }

    /// A text filter: at most 256 bytes, no control characters; `""`
    /// when absent.
    pub fn text(&self, name: &str) -> Result<&str, Failure> {
        let value = self.pairs.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str());
        if value.len() > MAX_TEXT {
            return Err(Failure::BadParam(name.into(), format!("is longer than {MAX_TEXT} bytes")));
        }
        if value.chars().any(char::is_control) {
            return Err(Failure::BadParam(name.into(), "holds control characters".into()));
        }
        Ok(value)
    }

    /// A whole number in `range`, or `default` when absent.
    pub fn number(&self, name: &str, range: std::ops::RangeInclusive<u64>, default: u64) -> Result<u64, Failure> {
        let value = self.text(name)?;
        if value.is_empty() {
            return Ok(default);
        }
        let bad = || {
            let shown: String = value.chars().take(32).collect();
            Failure::BadParam(
                name.into(),
                format!("must be a whole number from {} to {}, not {shown:?}", range.start(), range.end()),
            )
        };
        let n: u64 = value.parse().map_err(|_| bad())?;
        if range.contains(&n) { Ok(n) } else { Err(bad()) }
    }

    /// `page_size`: 1 to [`MAX_PAGE_SIZE`], default [`DEFAULT_PAGE_SIZE`].
    pub fn page_size(&self) -> Result<usize, Failure> {
        let n = self.number("page_size", 1..=MAX_PAGE_SIZE as u64, DEFAULT_PAGE_SIZE as u64)?;
        Ok(usize::try_from(n).unwrap_or(DEFAULT_PAGE_SIZE))
    }

    /// A tenant id filter, checked by the API's own rule.
    pub fn tenant(&self, name: &str) -> Result<&str, Failure> {
        let value = self.text(name)?;
        if !value.is_empty() {
            prism_proto::names::validate_part(value)
                .map_err(|e| Failure::BadParam(name.into(), format!("is not a tenant id: {e}")))?;
        }
        Ok(value)
    }

    /// A namespace name filter (`tenant/name`), checked by the API's own
    /// rule.
    pub fn namespace(&self, name: &str) -> Result<&str, Failure> {
        let value = self.text(name)?;
        if !value.is_empty() {
            prism_proto::names::NamespaceName::parse(value)
                .map_err(|e| Failure::BadParam(name.into(), format!("is not a namespace name (tenant/name): {e}")))?;
        }
        Ok(value)
    }

    /// A value that must be one of `choices` (or absent).
    pub fn choice(&self, name: &str, choices: &[&str]) -> Result<&str, Failure> {
        let value = self.text(name)?;
        if !value.is_empty() && !choices.contains(&value) {
            return Err(Failure::BadParam(name.into(), format!("must be one of {}", choices.join(", "))));
        }
        Ok(value)
    }

    /// The value of `name` as given, for links that keep it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)], allowed: &[&str]) -> Result<Params, Failure> {
        let pairs = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Params::parse(Ok(axum::extract::Query(pairs)), allowed)
    }

    fn named(result: Result<impl std::fmt::Debug, Failure>) -> String {
        match result {
            Err(Failure::BadParam(name, _)) => name,
            other => panic!("expected a bad parameter, got {other:?}"),
        }
    }

    #[test]
    fn names_the_parameter_that_is_wrong() {
        assert_eq!(named(params(&[("nope", "1")], &["q"])), "nope");
        assert_eq!(named(params(&[("q", "a"), ("q", "b")], &["q"])), "q");
        let p = params(&[("page_size", "0"), ("tenant", "Bad!"), ("q", "x\u{7}")], &["page_size", "tenant", "q"])
            .expect("known");
        assert_eq!(named(p.page_size()), "page_size");
        assert_eq!(named(p.tenant("tenant")), "tenant");
        assert_eq!(named(p.text("q")), "q");
        let p = params(&[("page_size", "-3"), ("status", "HAPPY")], &["page_size", "status"]).expect("known");
        assert_eq!(named(p.page_size()), "page_size");
        assert_eq!(named(p.choice("status", &["ACTIVE"])), "status");
    }

    #[test]
    fn empty_values_are_absent_and_defaults_apply() -> Result<(), Failure> {
        let p = params(&[("page_size", ""), ("tenant", "")], &["page_size", "tenant"])?;
        assert_eq!(p.page_size()?, DEFAULT_PAGE_SIZE);
        assert_eq!(p.tenant("tenant")?, "");
        Ok(())
    }
}
