//! Release versions and the schemes apps write them in (seed 001: versions
//! compared "as version names or as integer version codes").
//!
//! Each app has one [`Versioning`], chosen when it is created:
//!
//! - `semver` (the default): strict semantic versioning, `MAJOR.MINOR.PATCH`
//!   with optional `-pre-release` and `+build`, ordered by semver
//!   precedence (a pre-release before its release; build metadata only
//!   breaks ties).
//! - `code`: an integer version code (Android `versionCode`, an iOS build
//!   number): `41`, `42`, ordered as numbers. No leading zeros.
//! - `dotted`: numbers separated by dots, as many as wanted (`1.0`,
//!   `2024.01.3`, `10.2.0.4711`), compared number by number; a missing
//!   number counts as 0, so `1.0` and `1.0.0` are the same version (and
//!   cannot both be published). Leading zeros are allowed and ignored
//!   (`2024.01.3` is `2024.1.3`).
//!
//! A [`Version`] keeps its spelling (shown everywhere, in URLs, answers
//! and keys) and orders by one key common to the three schemes, so that
//! versions read without knowing the app (a manifest, a command line)
//! compare exactly as the app's own parse would. What a given app accepts
//! is [`Version::parse`] with its scheme; the registry and the gateway
//! enforce it, so one app never mixes schemes.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use thiserror::Error;

/// A version string the scheme does not accept.
#[derive(Debug, Error)]
#[error("invalid version {}: {reason}", crate::Quoted(input))]
pub struct VersionError {
    input: String,
    reason: String,
}

/// The longest version string accepted (a version appears in URLs, keys
/// and every answer).
pub(crate) const MAX_VERSION_LEN: usize = 128;

/// The most numbers a dotted version may have.
const MAX_DOTTED_PARTS: usize = 16;

/// How an app writes and orders its versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Versioning {
    #[default]
    Semver,
    Code,
    Dotted,
}

impl Versioning {
    pub const ALL: [Versioning; 3] = [Versioning::Semver, Versioning::Code, Versioning::Dotted];

    pub fn as_str(self) -> &'static str {
        match self {
            Versioning::Semver => "semver",
            Versioning::Code => "code",
            Versioning::Dotted => "dotted",
        }
    }

    /// What a version of this scheme looks like, for messages.
    pub fn example(self) -> &'static str {
        match self {
            Versioning::Semver => "semantic versioning such as 2.4.1 or 2.5.0-rc.1",
            Versioning::Code => "an integer version code such as 42",
            Versioning::Dotted => "numbers separated by dots such as 1.0 or 2024.01.3",
        }
    }
}

impl fmt::Display for Versioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Versioning {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Versioning::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown versioning {s:?}: expected semver, code or dotted"))
    }
}

/// A release version: its spelling, and what orders it.
#[derive(Debug, Clone)]
pub struct Version {
    text: String,
    /// The numbers, trailing zeros dropped (so `1.0` equals `1.0.0`).
    numbers: Vec<u64>,
    pre: semver::Prerelease,
    build: semver::BuildMetadata,
    /// The version as semver, when it is spelled as one.
    semver: Option<semver::Version>,
}

impl Version {
    /// Parses `input` as a version of `scheme`.
    pub fn parse(scheme: Versioning, input: &str) -> Result<Version, VersionError> {
        let err = |reason: String| VersionError { input: input.to_owned(), reason };
        if input.len() > MAX_VERSION_LEN {
            return Err(err(format!("is longer than {MAX_VERSION_LEN} bytes")));
        }
        match scheme {
            Versioning::Semver => {
                if let Some(rest) = input.strip_prefix(['v', 'V'])
                    && semver::Version::parse(rest).is_ok()
                {
                    return Err(err(format!("drop the leading 'v' (use {})", crate::Quoted(rest))));
                }
                let v = semver::Version::parse(input)
                    .map_err(|e| err(format!("{e} (expected {})", Versioning::Semver.example())))?;
                Ok(Version::from_semver(v))
            }
            Versioning::Code => {
                let ok = !input.is_empty()
                    && input.bytes().all(|b| b.is_ascii_digit())
                    && (input == "0" || !input.starts_with('0'));
                let n = input.parse::<u64>().ok().filter(|_| ok);
                let n =
                    n.ok_or_else(|| err(format!("expected {}, without leading zeros", Versioning::Code.example())))?;
                Ok(Version::numeric(input, vec![n]))
            }
            Versioning::Dotted => {
                let parts: Vec<&str> = input.split('.').collect();
                if parts.len() > MAX_DOTTED_PARTS {
                    return Err(err(format!("has more than {MAX_DOTTED_PARTS} numbers")));
                }
                let numbers = parts
                    .iter()
                    .map(|p| {
                        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                            None
                        } else {
                            p.parse::<u64>().ok()
                        }
                    })
                    .collect::<Option<Vec<u64>>>()
                    .ok_or_else(|| err(format!("expected {}", Versioning::Dotted.example())))?;
                Ok(Version::numeric(input, numbers))
            }
        }
    }

    /// Parses a version without knowing its app's scheme: semantic
    /// versioning when it is spelled as such, else dotted numbers (which
    /// includes integer codes). Ordering is the same as with the app's own
    /// scheme; whether the app accepts it is [`Version::conforms`].
    pub fn parse_any(input: &str) -> Result<Version, VersionError> {
        if input.len() > MAX_VERSION_LEN || input.starts_with(['v', 'V']) {
            // Too long, or a leading 'v': semver's error says so.
            return Version::parse(Versioning::Semver, input);
        }
        Version::parse(Versioning::Semver, input).or_else(|_| {
            Version::parse(Versioning::Dotted, input).map_err(|_| VersionError {
                input: input.to_owned(),
                reason: "expected semantic versioning (2.4.1), an integer version code (42) or dotted numbers \
                         (2024.01.3), as the app was created with"
                    .to_owned(),
            })
        })
    }

    fn from_semver(v: semver::Version) -> Version {
        let mut numbers = vec![v.major, v.minor, v.patch];
        trim(&mut numbers);
        Version { text: v.to_string(), numbers, pre: v.pre.clone(), build: v.build.clone(), semver: Some(v) }
    }

    fn numeric(input: &str, mut numbers: Vec<u64>) -> Version {
        trim(&mut numbers);
        let semver = semver::Version::parse(input).ok();
        Version {
            text: input.to_owned(),
            numbers,
            pre: semver::Prerelease::EMPTY,
            build: semver::BuildMetadata::EMPTY,
            semver,
        }
    }

    /// Checks that the version is spelled as `scheme` wants (the error
    /// says what the scheme expects).
    pub fn conforms(&self, scheme: Versioning) -> Result<(), VersionError> {
        Version::parse(scheme, &self.text).map(|_| ())
    }

    /// The version as it is spelled.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The version as semver, when it is spelled as one (only semver apps
    /// take semver requirements such as `compatible`).
    pub fn as_semver(&self) -> Option<&semver::Version> {
        self.semver.as_ref()
    }

    /// Whether this is a semver pre-release (`2.5.0-rc.1`).
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    /// What orders the version, without build metadata, as one string:
    /// two versions with the same precedence cannot both be published.
    /// At least three numbers, so that a semver version's precedence is
    /// its own spelling without build metadata.
    pub fn precedence(&self) -> String {
        let mut numbers = self.numbers.clone();
        numbers.resize(numbers.len().max(3), 0);
        let mut out = numbers.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
        if !self.pre.is_empty() {
            out.push('-');
            out.push_str(self.pre.as_str());
        }
        out
    }

    /// Compares what orders two versions, build metadata aside.
    pub fn cmp_precedence(&self, other: &Version) -> Ordering {
        (&self.numbers, &self.pre).cmp(&(&other.numbers, &other.pre))
    }

    /// Whether a semver requirement (`>=2.4.0, <2.5.0`) matches: only
    /// versions spelled as semver can.
    pub fn satisfies(&self, req: &semver::VersionReq) -> bool {
        self.semver.as_ref().is_some_and(|v| req.matches(v))
    }

    fn key(&self) -> (&[u64], &semver::Prerelease, &semver::BuildMetadata) {
        (&self.numbers, &self.pre, &self.build)
    }
}

/// Drops trailing zeros: `[1, 0, 0]` orders as `[1]`.
fn trim(numbers: &mut Vec<u64>) {
    while numbers.last() == Some(&0) {
        numbers.pop();
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse_any(s)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Version {}

impl Hash for Version {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.numbers.hash(state);
        self.pre.hash(state);
        self.build.hash(state);
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// Parses a release version whose app's scheme is not known here (a
/// command line, a manifest): see [`Version::parse_any`].
pub fn parse_version(input: &str) -> Result<Version, VersionError> {
    Version::parse_any(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(scheme: Versioning, s: &str) -> Version {
        Version::parse(scheme, s).unwrap()
    }

    #[test]
    fn accepts_semver_with_prerelease_and_build() {
        let v = parse_version("2.5.0-rc.1+build.7").unwrap();
        assert_eq!(v.to_string(), "2.5.0-rc.1+build.7");
        assert!(v.is_prerelease());
        assert_eq!(v.precedence(), "2.5.0-rc.1");
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
    fn semver_refuses_partial_versions() {
        for bad in ["2.4", "", "2.4.1.0", "latest", " 2.4.1", "42"] {
            let e = Version::parse(Versioning::Semver, bad).unwrap_err().to_string();
            assert!(e.contains("invalid version") && e.contains("semantic versioning"), "{bad}: {e}");
        }
    }

    #[test]
    fn codes_are_integers_ordered_as_numbers() {
        assert!(v(Versioning::Code, "9") < v(Versioning::Code, "10"));
        assert!(v(Versioning::Code, "100") > v(Versioning::Code, "99"));
        for bad in ["", "042", "4.2", "-1", "1e3", "18446744073709551616", " 4"] {
            let e = Version::parse(Versioning::Code, bad).unwrap_err().to_string();
            assert!(e.contains("integer version code"), "{bad}: {e}");
        }
        assert_eq!(v(Versioning::Code, "0").to_string(), "0");
        assert_eq!(v(Versioning::Code, "42").precedence(), "42.0.0");
    }

    #[test]
    fn dotted_versions_compare_number_by_number() {
        let d = |s| v(Versioning::Dotted, s);
        assert!(d("2024.01.3") < d("2024.1.10"));
        assert!(d("1.9") < d("1.10"));
        assert!(d("1.2") < d("1.2.1"));
        assert_eq!(d("1.0"), d("1.0.0"));
        assert_eq!(d("1.0").precedence(), d("1.0.0").precedence());
        assert_eq!(d("2024.01.3").to_string(), "2024.01.3", "the spelling is kept");
        assert_eq!(d("2024.01.3").precedence(), "2024.1.3");
        for bad in ["", "1..2", ".1", "1.", "1.a", "1.0-rc.1", "v1.0"] {
            let e = Version::parse(Versioning::Dotted, bad).unwrap_err().to_string();
            assert!(e.contains("numbers separated by dots"), "{bad}: {e}");
        }
        let many = vec!["1"; 17].join(".");
        assert!(Version::parse(Versioning::Dotted, &many).is_err());
    }

    #[test]
    fn a_version_read_without_its_scheme_orders_as_its_scheme_would() {
        // "1.0.0" reads as semver, "1.5" as dotted: in a dotted app they
        // compare as the app's own parse does.
        let any = |s| parse_version(s).unwrap();
        assert!(any("1.0.0") < any("1.5"));
        assert_eq!(any("1.0.0"), v(Versioning::Dotted, "1.0.0"));
        assert_eq!(any("42"), v(Versioning::Code, "42"));
        assert!(any("1.0.0-rc.1") < any("1.0.0"));
        assert!(any("1.0.0") < any("1.0.0+b2"), "build metadata only breaks ties");
        assert!(any("2.4").conforms(Versioning::Semver).is_err());
        assert!(any("2.4").conforms(Versioning::Dotted).is_ok());
        assert!(any("2.4.1").conforms(Versioning::Code).is_err());
        assert_eq!("dotted".parse::<Versioning>().unwrap(), Versioning::Dotted);
        assert!("calver".parse::<Versioning>().unwrap_err().contains("semver, code or dotted"));
    }

    proptest::proptest! {
        /// Any string: never a panic; an accepted version prints back as
        /// the input (one spelling per version) and parses to itself; an
        /// error stays short whatever the input.
        #[test]
        fn accepted_versions_round_trip(input in "\\PC{0,40}|v?[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(-[a-z0-9.]{1,8})?(\\+[a-z0-9.]{1,8})?|[0-9]{1,4}(\\.[0-9]{1,4}){0,5}") {
            match parse_version(&input) {
                Ok(v) => {
                    proptest::prop_assert_eq!(v.to_string(), input.clone());
                    proptest::prop_assert_eq!(parse_version(&v.to_string()).unwrap(), v);
                }
                Err(e) => proptest::prop_assert!(e.to_string().len() < 400),
            }
        }

        /// Semver versions order exactly as the semver crate orders them.
        #[test]
        fn semver_order_is_kept(a in "[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}(-(rc|beta)\\.[0-9])?", b in "[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}(-(rc|beta)\\.[0-9])?") {
            let (Ok(sa), Ok(sb)) = (semver::Version::parse(&a), semver::Version::parse(&b)) else { return Ok(()) };
            proptest::prop_assert_eq!(parse_version(&a).unwrap().cmp(&parse_version(&b).unwrap()), sa.cmp(&sb));
        }
    }
}
