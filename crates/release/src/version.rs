use thiserror::Error;

/// A version string that is not semantic versioning.
#[derive(Debug, Error)]
#[error("invalid version {input:?}: {reason}")]
pub struct VersionError {
    input: String,
    reason: String,
}

/// Parses a release version: strict semantic versioning (`MAJOR.MINOR.PATCH`
/// with optional `-pre` and `+build`), the form versions are compared in
/// (S0-3). A leading `v` is refused with a hint rather than guessed away, so a
/// version has exactly one spelling everywhere.
pub fn parse_version(input: &str) -> Result<semver::Version, VersionError> {
    let err = |reason: String| VersionError { input: input.to_owned(), reason };
    if let Some(rest) = input.strip_prefix(['v', 'V'])
        && semver::Version::parse(rest).is_ok()
    {
        return Err(err(format!("drop the leading 'v' (use {rest:?})")));
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
    fn refuses_partial_versions() {
        for bad in ["2.4", "", "2.4.1.0", "latest", " 2.4.1"] {
            let e = parse_version(bad).unwrap_err().to_string();
            assert!(e.contains("invalid version"), "{bad}: {e}");
        }
    }
}
