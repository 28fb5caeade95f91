//! Variants: one base release customised per tenant.
//!
//! A vendor builds one base release of an app and customises it for each
//! tenant (customer). Instead of keeping a copy per tenant, it writes one
//! `ferry.variants.toml`: a `[base]` naming the base artifacts, and a
//! `[variants.NAME]` table per variant, with the tenants it serves and its
//! overrides. [`Variants::load`] parses and checks the file;
//! [`Variants::render`] writes what one tenant gets, ready for
//! [`ferry_release::pack`].
//!
//! # The file
//!
//! ```toml
//! app = "crm"                       # optional: the app the variants are of
//!
//! [base.artifacts.web]              # a base artifact, like --artifact NAME[@PLATFORM,...]=PATH
//! path = "dist/web"                 # a directory artifact
//! [base.artifacts.mobile]
//! path = "dist/app.apk"             # a file artifact
//! platforms = ["android"]           # optional
//! [base.artifacts.api]
//! path = "openapi.json"
//!
//! [variants.acme]                   # a variant; its name is a name like a tenant's
//! tenants = ["acme"]                # one or several tenants, each in one variant only
//!
//! [variants.acme.web]                                     # overrides of the base artifact `web`
//! remove = ["img/promo.png"]                              # a file of the base to drop
//! replace = { "img/logo.png" = "variants/acme/logo.png" } # a file of the base -> new content
//! add = { "img/extra.png" = "variants/acme/extra.png" }   # a file the base does not have
//! [variants.acme.web.set."config.json"]                   # values to set in a JSON or YAML file
//! "/api/endpoint" = "https://api.acme.example"            # RFC 6901 JSON pointer -> TOML value
//! "/theme/colors/0" = "#ff0000"
//!
//! [variants.acme.api.set.""]                              # in a file artifact, "" is the file itself
//! "/info/title" = "ACME CRM API"
//!
//! [variants.north]
//! tenants = ["globex", "initech"]   # tenants with the same needs share one variant
//! [variants.north.mobile]
//! source = "variants/north/app.apk" # substitutes the whole artifact (a file or a directory)
//! ```
//!
//! - Relative paths on disk (`path`, `source`, the right-hand side of
//!   `replace` and `add`) start from the directory holding the variants file.
//! - Paths inside a directory artifact (`img/logo.png`) are relative,
//!   `/`-separated, without `.` or `..` segments ([`ferry_release::RelPath`]).
//! - Artifact, tenant, platform, app and variant names are
//!   [`ferry_release::Name`]s.
//! - A base directory is read as packing reads it: every regular file below
//!   it, following symbolic links that stay inside it. A render holds regular
//!   files only (a linked file is rendered with its target's content).
//! - An artifact a variant does not mention is rendered as in the base.
//!
//! ## Overrides of one artifact
//!
//! - `source` substitutes the whole artifact with another file or directory
//!   and cannot be combined with the other overrides.
//! - `remove`, `replace` and `add` edit the files of a directory artifact and
//!   are applied in that order: `remove` and `replace` name files of the base
//!   (a removed file cannot be replaced), `add` names files that do not exist
//!   after the removals (and neither lie below a file nor are a directory).
//!   On a file artifact they are errors: use `source`.
//! - `set` comes last, on the result: setting a value in a replaced or added
//!   file sets it in the new content. Its keys name files of the artifact
//!   (`"config.json"`), or `""` for the file of a file artifact. A file is
//!   JSON by the extension `.json` and YAML by `.yaml` or `.yml`. Each
//!   pointer must name a value that exists (array indices included; `-`
//!   does not), and pointers apply in file order, each on the result of
//!   those before it. Values are any TOML value, converted to JSON (tables
//!   become objects, date-times strings).
//! - A file edited by `set` keeps its format and its keys' order: JSON is
//!   pretty-printed with two-space indents if the original spread over
//!   several lines, compact otherwise; YAML is written in block style, and
//!   the original's comments, anchors and quoting are not kept. Files not
//!   edited are rendered byte for byte.
//!
//! # Problems
//!
//! Every problem names the file, line and column, and what is wrong:
//! `ferry.variants.toml:20:23: variant "north": tenant "acme" is also in
//! variant "acme" (line 14)`. A syntax error, an unknown key or a value of
//! the wrong type stops reading at once; every other problem (names, paths on
//! disk, pointers, tenants in two variants, ...) is collected, so that one
//! check reports them all.

mod check;
mod doc;
mod file;
mod publish;
mod render;
mod tree;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_release::{ArtifactSpec, Name, Quoted};
use thiserror::Error;

pub use self::publish::{TenantSummary, VariantsRequest, VariantsSummary, check_tenants, publish_variants, selected};
pub use crate::located::Problem;

use self::tree::Tree;

/// A parsed and checked variants file.
#[derive(Debug)]
pub struct Variants {
    /// The file as named to [`Variants::load`], for problems.
    file: PathBuf,
    app: Option<Name>,
    /// In file order.
    base: Vec<BaseArtifact>,
    /// In file order.
    variants: Vec<Variant>,
}

#[derive(Debug)]
struct BaseArtifact {
    name: Name,
    /// Sorted, unique.
    platforms: Vec<Name>,
    tree: Tree,
}

#[derive(Debug)]
struct Variant {
    name: String,
    /// In file order.
    tenants: Vec<TenantAt>,
    /// What the variant makes of each artifact it overrides.
    overrides: BTreeMap<Name, Tree>,
}

/// A tenant and where the file names it.
#[derive(Debug)]
struct TenantAt {
    name: Name,
    line: usize,
    column: usize,
}

/// Why a variants file cannot be used, or a render failed.
#[derive(Debug, Error)]
pub enum VariantsError {
    /// Problems in the file, one per line, in file order.
    #[error("{}", crate::located::display_problems(.0))]
    Problems(Vec<Problem>),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("tenant {} is in no variant of {}; its tenants are: {}", Quoted(tenant.as_str()), file.display(), display_names(known))]
    UnknownTenant { tenant: Name, file: PathBuf, known: Vec<Name> },
    #[error("cannot render into {}: it exists and is not an empty directory", path.display())]
    OutputExists { path: PathBuf },
    /// Writing the render, or reading a file for it, failed at `path`.
    #[error("render failed at {}: {source}", path.display())]
    Render { path: PathBuf, source: std::io::Error },
}

impl VariantsError {
    /// The located problems in the file; empty for the other errors.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Problems(problems) => problems,
            _ => &[],
        }
    }
}

impl From<Vec<Problem>> for VariantsError {
    fn from(problems: Vec<Problem>) -> Self {
        Self::Problems(problems)
    }
}

fn display_names(names: &[Name]) -> String {
    names.iter().map(Name::as_str).collect::<Vec<_>>().join(", ")
}

/// How [`Variants::render`] brings unchanged files into the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Hard-links files rendered as they are (base files, `replace` and
    /// `add` sources, `source` trees), copying when linking fails (across
    /// file systems, for one). Fast and small, for packing right away:
    /// editing such a file in place edits the original too.
    HardLink,
    /// Copies every file, so that the output can be edited (reviewed)
    /// without touching the originals.
    Copy,
}

impl Variants {
    /// Parses and checks everything that can be checked locally (syntax,
    /// keys, names, paths on disk, pointers).
    pub fn load(path: &Path) -> Result<Variants, VariantsError> {
        let bytes = std::fs::read(path).map_err(|source| VariantsError::Read { path: path.to_owned(), source })?;
        let text = crate::located::utf8_text(path, bytes).map_err(|p| VariantsError::Problems(vec![p]))?;
        let raw = file::parse(&text).map_err(|e| {
            let (line, column) = file::Locator::new(&text).locate(e.offset);
            VariantsError::Problems(vec![Problem { file: path.to_owned(), line, column, message: e.message }])
        })?;
        check::check(path, &text, &raw).map_err(VariantsError::Problems)
    }

    /// The variants file, as named to [`Variants::load`].
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The directory holding the variants file (relative paths start there).
    pub fn dir(&self) -> &Path {
        match self.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    /// The app the variants are of, if the file names it.
    pub fn app(&self) -> Option<&Name> {
        self.app.as_ref()
    }

    /// Every tenant, in file order, with its variant's name.
    pub fn tenants(&self) -> Vec<(Name, String)> {
        self.variants.iter().flat_map(|v| v.tenants.iter().map(|t| (t.name.clone(), v.name.clone()))).collect()
    }

    /// A problem located where the file names `tenant` (for problems found
    /// elsewhere, such as a tenant the registry does not know); at the start
    /// of the file for a tenant it does not name.
    pub fn problem_at_tenant(&self, tenant: &Name, message: String) -> Problem {
        let (line, column) = self
            .variants
            .iter()
            .flat_map(|v| &v.tenants)
            .find(|t| t.name == *tenant)
            .map_or((1, 1), |t| (t.line, t.column));
        Problem { file: self.file.clone(), line, column, message }
    }

    /// Writes what `tenant` gets into `out` and returns the artifact specs
    /// pointing there, ready for [`ferry_release::pack`]: `out/NAME` for a
    /// directory artifact, `out/NAME/FILE` for a file artifact (packing
    /// records a file artifact's file name, so it is kept).
    ///
    /// `out` must not exist or be an empty directory. The render is written
    /// into a sibling temporary directory and renamed to `out` at the end,
    /// so a failure leaves nothing at `out`.
    pub fn render(&self, tenant: &Name, out: &Path, link: LinkMode) -> Result<Vec<ArtifactSpec>, VariantsError> {
        let Some(variant) = self.variants.iter().find(|v| v.tenants.iter().any(|t| t.name == *tenant)) else {
            let known = self.tenants().into_iter().map(|(t, _)| t).collect();
            return Err(VariantsError::UnknownTenant { tenant: tenant.clone(), file: self.file.clone(), known });
        };
        render::render(&self.base, variant, out, link)
    }
}
