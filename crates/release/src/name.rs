use std::fmt;

use thiserror::Error;

/// A name of a tenant, an app or an artifact: 1 to 63 characters of lowercase
/// ASCII letters, digits, `-` and `_`, starting with a letter or digit. Names
/// appear in URLs, S3 keys and log lines, so they are kept boring.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

/// A string that is not a valid [`Name`].
#[derive(Debug, Error)]
#[error("invalid {what} name {}: {reason}", crate::Quoted(input))]
pub struct NameError {
    what: &'static str,
    input: String,
    reason: &'static str,
}

impl Name {
    pub const MAX_LEN: usize = 63;

    /// Validates `input` as a name; `what` ("tenant", "app", "artifact",
    /// "platform") is used in the error.
    pub fn parse(what: &'static str, input: &str) -> Result<Self, NameError> {
        let err = |reason| NameError { what, input: input.to_owned(), reason };
        if input.is_empty() {
            return Err(err("must not be empty"));
        }
        if input.len() > Self::MAX_LEN {
            return Err(err("must be at most 63 characters"));
        }
        if !input.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return Err(err("may contain only a-z, 0-9, '-' and '_'"));
        }
        if !input.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(err("must start with a letter or a digit"));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_lowercase_names() {
        assert_eq!(Name::parse("tenant", "acme-2_x").unwrap().as_str(), "acme-2_x");
    }

    #[test]
    fn refuses_bad_names_naming_the_field() {
        for bad in ["", "Acme", "-acme", "a/b", "a b", &"x".repeat(64)] {
            let e = Name::parse("tenant", bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid tenant"), "{bad:?}: {e}");
        }
    }

    proptest::proptest! {
        /// Any string: never a panic; an accepted name is the input itself,
        /// 1 to 63 of [a-z0-9_-], starting with a letter or digit; an error
        /// stays short whatever the input.
        #[test]
        fn accepted_names_are_exactly_the_documented_shape(input in "\\PC{0,80}|[a-z0-9][a-z0-9_-]{0,70}") {
            match Name::parse("tenant", &input) {
                Ok(name) => {
                    proptest::prop_assert_eq!(name.as_str(), input.as_str());
                    proptest::prop_assert!((1..=63).contains(&input.len()));
                    proptest::prop_assert!(input.as_bytes()[0].is_ascii_alphanumeric());
                    proptest::prop_assert!(input.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'));
                }
                Err(e) => proptest::prop_assert!(e.to_string().len() < 400),
            }
        }
    }
}
