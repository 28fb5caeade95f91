//! Writing what one tenant gets: every base artifact, as the tenant's
//! variant makes it, into a temporary sibling of the output renamed into
//! place at the end.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ferry_release::ArtifactSpec;

use super::tree::{Content, Tree};
use super::{BaseArtifact, LinkMode, Variant, VariantsError};

pub(super) fn render(
    base: &[BaseArtifact],
    variant: &Variant,
    out: &Path,
    link: LinkMode,
) -> Result<Vec<ArtifactSpec>, VariantsError> {
    let out_err = |source| VariantsError::Render { path: out.to_owned(), source };
    match fs::symlink_metadata(out) {
        Ok(meta) if meta.is_dir() => {
            if fs::read_dir(out).map_err(out_err)?.next().is_some() {
                return Err(VariantsError::OutputExists { path: out.to_owned() });
            }
        }
        Ok(_) => return Err(VariantsError::OutputExists { path: out.to_owned() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(out_err(e)),
    }
    let Some(out_name) = out.file_name().and_then(|n| n.to_str()) else {
        return Err(out_err(io::Error::new(io::ErrorKind::InvalidInput, "the output must name a directory")));
    };
    let parent = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    // Removed on drop: an early return leaves nothing behind.
    let tmp = tempfile::Builder::new().prefix(&format!(".{out_name}.")).tempdir_in(parent).map_err(out_err)?;
    open_up(tmp.path()).map_err(out_err)?;

    let mut specs = Vec::with_capacity(base.len());
    for artifact in base {
        let tree = variant.overrides.get(&artifact.name).unwrap_or(&artifact.tree);
        let dir = tmp.path().join(artifact.name.as_str());
        fs::create_dir(&dir).map_err(out_err)?;
        let path = match tree {
            Tree::File { name, content } => {
                place(content, &dir.join(name.as_str()), link)?;
                out.join(artifact.name.as_str()).join(name.as_str())
            }
            Tree::Directory(files) => {
                for (rel, content) in files {
                    let target = dir.join(rel.as_str());
                    if let Some(parent) = target.parent() {
                        fs::create_dir_all(parent).map_err(out_err)?;
                    }
                    place(content, &target, link)?;
                }
                out.join(artifact.name.as_str())
            }
        };
        specs.push(ArtifactSpec { name: artifact.name.clone(), platforms: artifact.platforms.clone(), path });
    }

    let rendered = tmp.keep();
    if let Err(e) = fs::rename(&rendered, out) {
        let _ = fs::remove_dir_all(&rendered);
        return Err(out_err(e));
    }
    Ok(specs)
}

/// Writes one file of the render at `target`.
fn place(content: &Content, target: &Path, link: LinkMode) -> Result<(), VariantsError> {
    // Never write through what is already there: after a hard link, a copy
    // or write to the same path (names equal on a case-folding file
    // system) would change the original.
    if fs::symlink_metadata(target).is_ok() {
        let clash = io::Error::new(
            io::ErrorKind::AlreadyExists,
            "two files of the render land on this path (names that differ only in case, on this file system?)",
        );
        return Err(render_err(target)(clash));
    }
    match content {
        Content::Existing(source) => {
            let linked = link == LinkMode::HardLink && fs::hard_link(source, target).is_ok();
            if !linked {
                // Copies the permission bits too.
                fs::copy(source, target).map_err(render_err(source))?;
            }
        }
        Content::Computed { bytes, permissions } => {
            let mut file =
                fs::OpenOptions::new().write(true).create_new(true).open(target).map_err(render_err(target))?;
            io::Write::write_all(&mut file, bytes).map_err(render_err(target))?;
            fs::set_permissions(target, permissions.clone()).map_err(render_err(target))?;
        }
    }
    Ok(())
}

fn render_err(path: &Path) -> impl FnOnce(io::Error) -> VariantsError + '_ {
    move |source| VariantsError::Render { path: PathBuf::from(path), source }
}

/// Temporary directories are private (0700); the render is for packing and
/// review like any output directory.
#[cfg(unix)]
fn open_up(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
}

#[cfg(not(unix))]
fn open_up(_dir: &Path) -> io::Result<()> {
    Ok(())
}
