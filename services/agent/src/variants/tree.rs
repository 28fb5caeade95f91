//! What an artifact on disk consists of, seen exactly as packing sees it
//! (`ferry_release::pack`): a file, or the regular files below a directory,
//! following symbolic links that stay inside it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use ferry_release::{PackError, RelPath};

/// An artifact's content before or after overrides.
#[derive(Debug, Clone)]
pub(super) enum Tree {
    /// A file artifact: its file name (which packing records) and content.
    File { name: RelPath, content: Content },
    /// A directory artifact: each file by its path inside the directory.
    Directory(BTreeMap<RelPath, Content>),
}

/// Where a rendered file's bytes come from.
#[derive(Clone)]
pub(super) enum Content {
    /// An existing regular file (the target, for a symbolic link), linked or
    /// copied as it is.
    Existing(PathBuf),
    /// Bytes computed by `set`, written with the permissions of the file
    /// they were computed from.
    Computed { bytes: Vec<u8>, permissions: fs::Permissions },
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Existing(path) => f.debug_tuple("Existing").field(path).finish(),
            Self::Computed { bytes, .. } => write!(f, "Computed({} bytes)", bytes.len()),
        }
    }
}

impl Content {
    /// The bytes, read from disk for an existing file.
    pub(super) fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Self::Existing(path) => fs::read(path),
            Self::Computed { bytes, .. } => Ok(bytes.clone()),
        }
    }

    /// The permissions the rendered file gets.
    pub(super) fn permissions(&self) -> std::io::Result<fs::Permissions> {
        match self {
            Self::Existing(path) => Ok(fs::metadata(path)?.permissions()),
            Self::Computed { permissions, .. } => Ok(permissions.clone()),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io { path: path.to_owned(), source }
}

/// Reads what `path` holds as an artifact: a file or a directory, as packing
/// would take it. Errors are packing's own, so they read the same.
pub(super) fn read_tree(path: &Path) -> Result<Tree, PackError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if meta.is_file() {
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| PackError::NotUtf8 { path: path.into() })?;
        let name = RelPath::parse(name).map_err(|source| PackError::Path { path: path.into(), source })?;
        let real = fs::canonicalize(path).map_err(io_err(path))?;
        Ok(Tree::File { name, content: Content::Existing(real) })
    } else if meta.is_dir() {
        Ok(Tree::Directory(walk(path)?))
    } else {
        Err(PackError::Special { path: path.into() })
    }
}

/// The regular files below `root` by relative path, with the path to read
/// each from: packing's own walk (links followed while they stay inside
/// `root`), each file read from its real path, so a render holds regular
/// files only.
fn walk(root: &Path) -> Result<BTreeMap<RelPath, Content>, PackError> {
    Ok(ferry_release::walk(root)?.into_iter().map(|f| (f.rel, Content::Existing(f.real))).collect())
}
