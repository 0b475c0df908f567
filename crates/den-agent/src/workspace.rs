//! A workspace: a folder den owns, and the paths a model may name in it.
//!
//! Every path a tool takes is relative to the workspace. `..` cannot climb
//! out of it and symlinks cannot lead out of it: the deepest existing part of
//! a path is resolved by the operating system and must stay under the root.
//! `.git` is den's: tools may not write there.

use std::path::{Component, Path, PathBuf};

use crate::ToolError;

/// A workspace folder (canonical).
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    /// The workspace at `root`, which must exist.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        Ok(Self { root: root.canonicalize()? })
    }

    /// Its folder.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `path` (relative to the workspace) is, when it stays inside.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, ToolError> {
        let outside = || ToolError::Refused(format!("{path}: outside the workspace"));
        let relative = Path::new(path);
        if relative.is_absolute() {
            return Err(ToolError::Refused(format!("{path}: paths are relative to the workspace")));
        }
        let mut joined = self.root.clone();
        for part in relative.components() {
            match part {
                Component::Normal(p) => joined.push(p),
                Component::CurDir => {}
                Component::ParentDir => {
                    if joined == self.root {
                        return Err(outside());
                    }
                    joined.pop();
                }
                Component::RootDir | Component::Prefix(_) => return Err(outside()),
            }
        }
        // The deepest part that exists, with its symlinks resolved, must be inside.
        let mut existing = joined.as_path();
        while !existing.exists() {
            existing = existing.parent().ok_or_else(outside)?;
        }
        let real = existing.canonicalize().map_err(|e| ToolError::Failed(format!("{path}: {e}")))?;
        if !real.starts_with(&self.root) {
            return Err(outside());
        }
        // A dangling symlink at the end could be written through later.
        if joined.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) && !joined.exists() {
            return Err(outside());
        }
        let rest = joined.strip_prefix(existing).unwrap_or(Path::new(""));
        Ok(if rest.as_os_str().is_empty() { real } else { real.join(rest) })
    }

    /// Like [`Workspace::resolve`], for writing: `.git` is refused.
    pub fn resolve_for_write(&self, path: &str) -> Result<PathBuf, ToolError> {
        let resolved = self.resolve(path)?;
        if self.relative(&resolved).components().next().is_some_and(|c| c.as_os_str() == ".git") {
            return Err(ToolError::Refused(format!("{path}: .git is den's; commits happen when you finish")));
        }
        Ok(resolved)
    }

    /// `path` (inside the workspace) relative to its root, for showing.
    #[must_use]
    pub fn relative<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_whatever_dots_and_symlinks_say() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("src/escape")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("nothing-yet"), dir.path().join("dangling")).unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        assert!(ws.resolve("src/lib.rs").unwrap().starts_with(ws.root()));
        assert!(ws.resolve("src/../README.md").is_ok());
        for bad in ["../x", "src/../../x", "/etc/passwd", "src/escape/secret", "src/escape", "dangling"] {
            assert!(matches!(ws.resolve(bad), Err(ToolError::Refused(_))), "{bad} must be refused");
        }
        assert!(ws.resolve_for_write(".git/config").is_err());
        assert!(ws.resolve_for_write("./.git/hooks/pre-commit").is_err());
        assert!(ws.resolve_for_write("src/.git-notes").is_ok());
    }
}
