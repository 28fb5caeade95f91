//! From the raw file to [`Variants`]: every name, path, pointer and file on
//! disk checked, every problem collected with its line and column rather
//! than stopping at the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use ferry_release::{Name, Quoted, RelPath};
use toml::Spanned;

use super::doc::{Doc, Document, Format};
use super::file::{Locator, RawBase, RawFile, RawOverrides, RawVariant, SpannedMap, in_file_order};
use super::tree::{Content, Tree, read_tree};
use super::{BaseArtifact, Problem, TenantAt, Variant, Variants};

/// Checks the parsed file `raw` (read from `file`, whose text is `text`).
pub(super) fn check(file: &Path, text: &str, raw: &RawFile) -> Result<Variants, Vec<Problem>> {
    let dir = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut checker = Checker { file, locator: Locator::new(text), dir, problems: Vec::new() };
    let app = raw.app.as_ref().and_then(|app| checker.name("", "app", app));
    let (base, declared) = checker.base(raw.base.as_ref());
    let variants = checker.variants(raw.variants.as_ref(), &base, &declared);
    let mut problems = checker.problems;
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(problems);
    }
    Ok(Variants { file: file.to_owned(), app, base, variants })
}

struct Checker<'a> {
    file: &'a Path,
    locator: Locator<'a>,
    /// The directory relative paths start from: the variants file's.
    dir: PathBuf,
    problems: Vec<Problem>,
}

/// Keys of an override table, as `(key, span start)` for those present.
fn present_keys(o: &RawOverrides) -> Vec<(&'static str, usize)> {
    let mut keys = Vec::new();
    if let Some(r) = &o.replace {
        keys.push(("replace", r.span().start));
    }
    if let Some(a) = &o.add {
        keys.push(("add", a.span().start));
    }
    if let Some(r) = &o.remove {
        keys.push(("remove", r.span().start));
    }
    if let Some(s) = &o.set {
        keys.push(("set", s.span().start));
    }
    keys
}

impl Checker<'_> {
    fn report(&mut self, offset: usize, message: String) {
        let (line, column) = self.locator.locate(offset);
        self.problems.push(Problem { file: self.file.to_owned(), line, column, message });
    }

    fn line(&self, offset: usize) -> usize {
        self.locator.line(offset)
    }

    /// A valid name, or a problem at the value; `ctx` prefixes the message.
    fn name(&mut self, ctx: &str, what: &'static str, value: &Spanned<String>) -> Option<Name> {
        match Name::parse(what, value.get_ref()) {
            Ok(name) => Some(name),
            Err(e) => {
                self.report(value.span().start, format!("{ctx}{e}"));
                None
            }
        }
    }

    /// A valid path inside a directory artifact, or a problem at the value.
    fn rel_path(&mut self, ctx: &str, value: &Spanned<String>) -> Option<RelPath> {
        match RelPath::parse(value.get_ref()) {
            Ok(path) => Some(path),
            Err(e) => {
                self.report(value.span().start, format!("{ctx}: {e}"));
                None
            }
        }
    }

    /// A file or directory named by a base `path` or a `source`, read as
    /// packing would read it.
    fn tree(&mut self, ctx: &str, value: &Spanned<String>) -> Option<Tree> {
        let offset = value.span().start;
        if value.get_ref().is_empty() {
            self.report(offset, format!("{ctx}: the path is empty"));
            return None;
        }
        let full = self.dir.join(value.get_ref());
        if !full.exists() {
            let message = format!("{ctx}: {} does not exist (looked for {})", Quoted(value.get_ref()), full.display());
            self.report(offset, message);
            return None;
        }
        match read_tree(&full) {
            Ok(Tree::Directory(files)) if files.is_empty() => {
                self.report(offset, format!("{ctx}: directory {} holds no files", Quoted(value.get_ref())));
                None
            }
            Ok(tree) => Some(tree),
            Err(e) => {
                self.report(offset, format!("{ctx}: {e}"));
                None
            }
        }
    }

    /// A regular file named by `replace` or `add`.
    fn source_file(&mut self, ctx: &str, value: &Spanned<String>) -> Option<Content> {
        let offset = value.span().start;
        let full = self.dir.join(value.get_ref());
        let problem = match std::fs::metadata(&full) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("{ctx}: file {} does not exist (looked for {})", Quoted(value.get_ref()), full.display())
            }
            Err(e) => format!("{ctx}: cannot read {}: {e}", full.display()),
            Ok(meta) if !meta.is_file() || value.get_ref().is_empty() => {
                format!("{ctx}: {} is not a regular file", Quoted(value.get_ref()))
            }
            Ok(_) => match std::fs::canonicalize(&full) {
                Ok(real) => return Some(Content::Existing(real)),
                Err(e) => format!("{ctx}: cannot read {}: {e}", full.display()),
            },
        };
        self.report(offset, problem);
        None
    }

    /// `[base]`: the artifacts that read well, and the names of all those
    /// declared (so that overrides of a broken one are not reported again).
    fn base(&mut self, base: Option<&Spanned<RawBase>>) -> (Vec<BaseArtifact>, BTreeSet<String>) {
        let mut artifacts = Vec::new();
        let mut declared = BTreeSet::new();
        let Some(base) = base else {
            self.report(0, "no [base] section: name the base artifacts in [base.artifacts.NAME] tables".into());
            return (artifacts, declared);
        };
        let raw = match &base.get_ref().artifacts {
            Some(raw) if !raw.get_ref().is_empty() => raw,
            _ => {
                let message = "no base artifacts: add a [base.artifacts.NAME] table with a `path`".into();
                self.report(base.span().start, message);
                return (artifacts, declared);
            }
        };
        for (key, artifact) in in_file_order(raw.get_ref()) {
            declared.insert(key.get_ref().clone());
            let name = self.name("", "artifact", key);
            let ctx = format!("base artifact {}", Quoted(key.get_ref()));
            let artifact = artifact.get_ref();
            let mut platforms = Vec::new();
            let mut platforms_ok = true;
            for platform in artifact.platforms.iter().flat_map(|p| p.get_ref()) {
                match self.name(&format!("{ctx}: "), "platform", platform) {
                    Some(p) => platforms.push(p),
                    None => platforms_ok = false,
                }
            }
            platforms.sort();
            platforms.dedup();
            let tree = self.tree(&format!("{ctx}: `path`"), &artifact.path);
            if let (Some(name), Some(tree), true) = (name, tree, platforms_ok) {
                artifacts.push(BaseArtifact { name, platforms, tree });
            }
        }
        (artifacts, declared)
    }

    fn variants(
        &mut self,
        raw: Option<&Spanned<BTreeMap<Spanned<String>, Spanned<RawVariant>>>>,
        base: &[BaseArtifact],
        declared: &BTreeSet<String>,
    ) -> Vec<Variant> {
        let mut variants = Vec::new();
        let raw = match raw {
            Some(raw) if !raw.get_ref().is_empty() => raw,
            _ => {
                let offset = raw.map_or(0, |r| r.span().start);
                let message = "no variants: add a [variants.NAME] table with `tenants` and the overrides".into();
                self.report(offset, message);
                return variants;
            }
        };
        // Tenant -> (variant, line) of where it was first named.
        let mut seen: HashMap<Name, (String, usize)> = HashMap::new();
        for (key, variant) in in_file_order(raw.get_ref()) {
            let before = self.problems.len();
            let ctx = format!("variant {}", Quoted(key.get_ref()));
            let name = self.name("", "variant", key);
            let tenants = self.tenants(&ctx, key, variant.get_ref(), &mut seen);
            let mut overrides = BTreeMap::new();
            for (artifact_key, raw_overrides) in &variant.get_ref().artifacts {
                let Some(artifact) = self.name(&format!("{ctx}: "), "artifact", artifact_key) else { continue };
                let Some(base_artifact) = base.iter().find(|b| b.name == artifact) else {
                    if !declared.contains(artifact_key.get_ref()) {
                        let known = declared.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
                        let message = format!(
                            "{ctx}: artifact {} is not a base artifact (the base has: {known})",
                            Quoted(artifact_key.get_ref())
                        );
                        self.report(artifact_key.span().start, message);
                    }
                    continue;
                };
                let actx = format!("{ctx}: artifact {}", Quoted(artifact_key.get_ref()));
                if let Some(tree) = self.overrides(&actx, artifact_key, &base_artifact.tree, raw_overrides) {
                    overrides.insert(artifact, tree);
                }
            }
            if let (Some(name), true) = (name, self.problems.len() == before) {
                variants.push(Variant { name: name.to_string(), tenants, overrides });
            }
        }
        variants
    }

    fn tenants(
        &mut self,
        ctx: &str,
        key: &Spanned<String>,
        variant: &RawVariant,
        seen: &mut HashMap<Name, (String, usize)>,
    ) -> Vec<TenantAt> {
        let mut tenants = Vec::new();
        let list = match &variant.tenants {
            None => {
                let message = format!("{ctx}: no `tenants`: name the tenants it is for, e.g. tenants = [\"acme\"]");
                self.report(key.span().start, message);
                return tenants;
            }
            Some(list) if list.get_ref().is_empty() => {
                self.report(list.span().start, format!("{ctx}: `tenants` is empty: name at least one tenant"));
                return tenants;
            }
            Some(list) => list,
        };
        for tenant in list.get_ref() {
            let Some(name) = self.name(&format!("{ctx}: "), "tenant", tenant) else { continue };
            let offset = tenant.span().start;
            match seen.get(&name) {
                Some((other, line)) if other == key.get_ref() => {
                    let message =
                        format!("{ctx}: tenant {} is listed twice (also on line {line})", Quoted(name.as_str()));
                    self.report(offset, message);
                }
                Some((other, line)) => {
                    let message = format!(
                        "{ctx}: tenant {} is also in variant {} (line {line})",
                        Quoted(name.as_str()),
                        Quoted(other)
                    );
                    self.report(offset, message);
                }
                None => {
                    let (line, column) = self.locator.locate(offset);
                    seen.insert(name.clone(), (key.get_ref().clone(), line));
                    tenants.push(TenantAt { name, line, column });
                }
            }
        }
        tenants
    }

    /// What a variant makes of one base artifact, or `None` after reporting
    /// why it cannot.
    fn overrides(
        &mut self,
        ctx: &str,
        key: &Spanned<String>,
        base: &Tree,
        raw: &Spanned<RawOverrides>,
    ) -> Option<Tree> {
        let raw = raw.get_ref();
        let before = self.problems.len();
        let edits = present_keys(raw);
        if let Some(source) = &raw.source {
            if !edits.is_empty() {
                let list = edits
                    .iter()
                    .map(|(k, offset)| format!("`{k}` (line {})", self.line(*offset)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let message =
                    format!("{ctx}: `source` substitutes the whole artifact and cannot be combined with {list}");
                self.report(source.span().start, message);
            }
            let tree = self.tree(&format!("{ctx}: `source`"), source);
            return tree.filter(|_| self.problems.len() == before);
        }
        let tree = match base {
            Tree::File { name, content } => {
                for (k, offset) in edits.iter().filter(|(k, _)| *k != "set") {
                    let message = format!(
                        "{ctx} is a file: `{k}` edits files inside a directory artifact; \
                         use `source` to substitute the whole file"
                    );
                    self.report(*offset, message);
                }
                let mut content = content.clone();
                for (file_key, pointers) in raw.set.iter().flat_map(|s| in_file_order(s.get_ref())) {
                    if !file_key.get_ref().is_empty() {
                        let message = format!(
                            "{ctx} is a file: `set` names it with the key \"\" (empty string), not {}",
                            Quoted(file_key.get_ref())
                        );
                        self.report(file_key.span().start, message);
                        continue;
                    }
                    let set_ctx = format!("{ctx}: `set` on {}", Quoted(name.as_str()));
                    if let Some(edited) = self.set(&set_ctx, file_key, name.as_str(), &content, pointers) {
                        content = edited;
                    }
                }
                Tree::File { name: name.clone(), content }
            }
            Tree::Directory(files) => {
                let mut files = files.clone();
                self.edit_directory(ctx, raw, &mut files);
                if files.is_empty() && self.problems.len() == before {
                    self.report(key.span().start, format!("{ctx}: no files would be left in the artifact"));
                }
                Tree::Directory(files)
            }
        };
        (self.problems.len() == before).then_some(tree)
    }

    /// `remove`, `replace`, `add`, then `set`, in that order, on the files
    /// of a directory artifact.
    fn edit_directory(&mut self, ctx: &str, raw: &RawOverrides, files: &mut BTreeMap<RelPath, Content>) {
        let mut removed = BTreeSet::new();
        for value in raw.remove.iter().flat_map(|r| r.get_ref()) {
            let ctx = format!("{ctx}: `remove`");
            let Some(path) = self.rel_path(&ctx, value) else { continue };
            if files.remove(&path).is_some() {
                removed.insert(path);
                continue;
            }
            let why = if removed.contains(&path) {
                "is listed twice"
            } else if is_directory(files, &path) {
                "is a directory: list the files to remove"
            } else {
                "is not in the base artifact"
            };
            self.report(value.span().start, format!("{ctx}: {} {why}", Quoted(value.get_ref())));
        }
        for (key, value) in raw.replace.iter().flat_map(|r| in_file_order(r.get_ref())) {
            let ctx = format!("{ctx}: `replace`");
            let Some(path) = self.rel_path(&ctx, key) else { continue };
            if !files.contains_key(&path) {
                let why = if removed.contains(&path) {
                    "is also in `remove`"
                } else if is_directory(files, &path) {
                    "is a directory: replace its files one by one"
                } else {
                    "is not in the base artifact"
                };
                self.report(key.span().start, format!("{ctx}: {} {why}", Quoted(key.get_ref())));
                continue;
            }
            if let Some(content) = self.source_file(&format!("{ctx} of {}", Quoted(key.get_ref())), value) {
                files.insert(path, content);
            }
        }
        for (key, value) in raw.add.iter().flat_map(|a| in_file_order(a.get_ref())) {
            let ctx = format!("{ctx}: `add`");
            let Some(path) = self.rel_path(&ctx, key) else { continue };
            let conflict = if files.contains_key(&path) {
                Some("already exists in the base artifact; use `replace`".to_owned())
            } else if is_directory(files, &path) {
                Some("is a directory in the base artifact".to_owned())
            } else {
                file_ancestor(files, &path).map(|a| format!("cannot be added: {} is a file", Quoted(a)))
            };
            if let Some(why) = conflict {
                self.report(key.span().start, format!("{ctx}: {} {why}", Quoted(key.get_ref())));
                continue;
            }
            if let Some(content) = self.source_file(&format!("{ctx} of {}", Quoted(key.get_ref())), value) {
                files.insert(path, content);
            }
        }
        for (key, pointers) in raw.set.iter().flat_map(|s| in_file_order(s.get_ref())) {
            if key.get_ref().is_empty() {
                let message = format!(
                    "{ctx}: `set` names files inside the directory artifact (the key \"\" is for a file artifact)"
                );
                self.report(key.span().start, message);
                continue;
            }
            let Some(path) = self.rel_path(&format!("{ctx}: `set`"), key) else { continue };
            let set_ctx = format!("{ctx}: `set` on {}", Quoted(key.get_ref()));
            let Some(content) = files.get(&path) else {
                self.report(key.span().start, format!("{set_ctx}: the file is not in the artifact"));
                continue;
            };
            if let Some(edited) = self.set(&set_ctx, key, path.as_str(), content, pointers) {
                files.insert(path, edited);
            }
        }
    }

    /// Applies the pointers of one `set` table to `content`, a JSON or YAML
    /// file named `file_name`.
    fn set(
        &mut self,
        ctx: &str,
        key: &Spanned<String>,
        file_name: &str,
        content: &Content,
        pointers: &SpannedMap<toml::Value>,
    ) -> Option<Content> {
        let offset = key.span().start;
        let Some(format) = Format::of(file_name) else {
            self.report(offset, format!("{ctx}: not a JSON (.json) or YAML (.yaml, .yml) file"));
            return None;
        };
        let bytes = match content.read() {
            Ok(bytes) => bytes,
            Err(e) => {
                self.report(offset, format!("{ctx}: cannot read the file: {e}"));
                return None;
            }
        };
        let mut doc = match Document::parse(&bytes, format) {
            Ok(doc) => doc,
            Err(why) => {
                self.report(offset, format!("{ctx}: the file does not parse as {format}: {why}"));
                return None;
            }
        };
        let entries = in_file_order(pointers.get_ref());
        if entries.is_empty() {
            return Some(content.clone());
        }
        let before = self.problems.len();
        for (pointer, value) in entries {
            let value_doc = match Doc::from_toml(value.get_ref()) {
                Ok(v) => v,
                Err(why) => {
                    let message = format!("{ctx}: value of pointer {}: {why}", Quoted(pointer.get_ref()));
                    self.report(value.span().start, message);
                    continue;
                }
            };
            match doc.root.pointer_mut(pointer.get_ref()) {
                Ok(slot) => *slot = value_doc,
                Err(why) => {
                    self.report(pointer.span().start, format!("{ctx}: pointer {} {why}", Quoted(pointer.get_ref())))
                }
            }
        }
        if self.problems.len() != before {
            return None;
        }
        let written = doc.to_bytes().and_then(|bytes| {
            let permissions = content.permissions().map_err(|e| format!("cannot read the file: {e}"))?;
            Ok(Content::Computed { bytes, permissions })
        });
        match written {
            Ok(content) => Some(content),
            Err(why) => {
                self.report(offset, format!("{ctx}: {why}"));
                None
            }
        }
    }
}

/// Whether `path` is a directory among `files`: some file lies below it.
fn is_directory(files: &BTreeMap<RelPath, Content>, path: &RelPath) -> bool {
    let prefix = format!("{}/", path.as_str());
    files.keys().any(|f| f.as_str().starts_with(&prefix))
}

/// The first ancestor of `path` that is a file among `files`.
fn file_ancestor<'a>(files: &BTreeMap<RelPath, Content>, path: &'a RelPath) -> Option<&'a str> {
    let p = path.as_str();
    p.match_indices('/').map(|(i, _)| &p[..i]).find(|a| RelPath::parse(a).is_ok_and(|a| files.contains_key(&a)))
}
