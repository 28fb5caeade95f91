use thiserror::Error;

/// A version string that is not semantic versioning.
#[derive(Debug, Error)]
#[error("invalid version {}: {reason}", crate::Quoted(input))]
pub struct VersionError {
    input: String,
    reason: String,
}

/// The longest version string accepted (semver sets no limit; a version
/// appears in URLs, keys and every answer).
pub(crate) const MAX_VERSION_LEN: usize = 128;

/// Parses a release version: strict semantic versioning (`MAJOR.MINOR.PATCH`
/// with optional `-pre` and `+build`), the form versions are compared in
/// (S0-3). A leading `v` is refused with a hint rather than guessed away, so a
/// version has exactly one spelling everywhere.
pub fn parse_version(input: &str) -> Result<semver::Version, VersionError> {
    let err = |reason: String| VersionError { input: input.to_owned(), reason };
    if input.len() > MAX_VERSION_LEN {
        return Err(err(format!("is longer than {MAX_VERSION_LEN} bytes")));
    }
    if let Some(rest) = input.strip_prefix(['v', 'V'])
        && semver::Version::parse(rest).is_ok()
    {
        return Err(err(format!("drop the leading 'v' (use {})", crate::Quoted(rest))));
    }
    semver::Version::parse(input)
        .map_err(|e| err(format!("{e} (expected semantic versioning such as 2.4.1 or 2.5.0-rc.1)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_semver_with_prerelease_and_build() {
        let v = parse_version("2.5.0-rc.1+build.7").unwrap();
        assert_eq!(v.to_string(), "2.5.0-rc.1+build.7");
    }

    #[test]
    fn refuses_leading_v_with_a_hint() {
        let e = parse_version("v2.4.1").unwrap_err().to_string();
        assert!(e.contains("drop the leading 'v'"), "{e}");
    }

    #[test]
    fn refuses_very_long_versions_and_quotes_little_of_them() {
        let long = format!("1.0.0-{}", "a".repeat(10_000));
        let e = parse_version(&long).unwrap_err().to_string();
        assert!(e.contains("longer than 128") && e.len() < 200, "{e}");
    }

    #[test]
    fn refuses_partial_versions() {
        for bad in ["2.4", "", "2.4.1.0", "latest", " 2.4.1"] {
            let e = parse_version(bad).unwrap_err().to_string();
            assert!(e.contains("invalid version"), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        /// Any string: never a panic; an accepted version prints back as
        /// the input (one spelling per version) and parses to itself; an
        /// error stays short whatever the input.
        #[test]
        fn accepted_versions_round_trip(input in "\\PC{0,40}|v?[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(-[a-z0-9.]{1,8})?(\\+[a-z0-9.]{1,8})?") {
            match parse_version(&input) {
                Ok(v) => {
                    proptest::prop_assert_eq!(v.to_string(), input.clone());
                    proptest::prop_assert_eq!(parse_version(&v.to_string()).unwrap(), v);
                }
                Err(e) => proptest::prop_assert!(e.to_string().len() < 400),
            }
        }
    }
}
