//! Files only the mesh's own user may read: keys and attestation tokens.
//!
//! Two rules hold for every file written here. A file is created fresh with mode 0600 and then
//! renamed into place, so a symlink planted at the target is replaced, never followed (an
//! attacker who can write into the directory cannot redirect a secret to a file of their
//! choice). A directory is created with mode 0700, and an existing one is refused if it is a
//! symlink or is readable by others.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a private file or directory could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFsError {
    /// The operating system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The path is a symlink where a directory of our own was expected.
    #[error("{0}: is a symlink; refusing to keep secrets behind it")]
    Symlink(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrivateFsError + '_ {
    move |source| PrivateFsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and missing parents) with mode 0700, or tightens an existing one to 0700.
/// Refuses a `dir` that is a symlink.
pub fn create_private_dir(dir: &Path) -> Result<(), PrivateFsError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(PrivateFsError::Symlink(dir.to_path_buf()));
        }
        Ok(_) => {}
        Err(_) => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?,
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

/// Writes `contents` to `path` with mode 0600: into a new file beside it, then renamed over
/// it, so a symlink at `path` is replaced rather than followed.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PrivateFsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let mut attempt = 0u32;
    let (tmp, mut file) = loop {
        let tmp = dir.join(format!(".{name}.{}.{attempt}.tmp", std::process::id()));
        // create_new is O_CREAT|O_EXCL: it fails on any existing entry, symlinks included.
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                attempt += 1;
            }
            Err(e) => return Err(io(&tmp)(e)),
        }
    };
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    Ok(())
}

/// Reads a private file, refusing to follow a symlink at `path`.
pub fn read_private(path: &Path) -> Result<Vec<u8>, PrivateFsError> {
    let meta = fs::symlink_metadata(path).map_err(io(path))?;
    if meta.file_type().is_symlink() {
        return Err(PrivateFsError::Symlink(path.to_path_buf()));
    }
    fs::read(path).map_err(io(path))
}

/// Reads the token in `path` if it holds a well-formed one (64 hex digits), else writes a new
/// random one there with [`write_private`]. Tokens prove who may attest or read; a file that
/// was tampered with into something shorter is replaced, never trusted.
pub fn ensure_token(path: &Path) -> Result<String, PrivateFsError> {
    if let Ok(existing) = read_private(path) {
        let t = String::from_utf8_lossy(&existing).trim().to_string();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(t);
        }
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| io(path)(std::io::Error::other("no system randomness")))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, token.as_bytes())?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("weft-private-fs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn files_are_private_and_symlinks_are_not_followed() {
        let dir = scratch("files");
        create_private_dir(&dir.join("secrets")).unwrap();
        let mode = fs::metadata(dir.join("secrets"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);

        let outside = dir.join("outside");
        fs::write(&outside, "untouched").unwrap();
        let target = dir.join("secrets/key");
        std::os::unix::fs::symlink(&outside, &target).unwrap();
        write_private(&target, b"secret").unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "untouched");
        let meta = fs::symlink_metadata(&target).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(read_private(&target).unwrap(), b"secret");

        // Rewriting replaces the content in place.
        write_private(&target, b"again").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"again");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_are_reused_unless_malformed() {
        let dir = scratch("tokens");
        create_private_dir(&dir).unwrap();
        let path = dir.join("token");
        let a = ensure_token(&path).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(ensure_token(&path).unwrap(), a);
        fs::write(&path, "short").unwrap();
        let b = ensure_token(&path).unwrap();
        assert_ne!(b, a);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlinked_directories_and_files_are_refused() {
        let dir = scratch("dirs");
        fs::create_dir_all(dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        assert!(matches!(
            create_private_dir(&dir.join("link")),
            Err(PrivateFsError::Symlink(_))
        ));
        fs::write(dir.join("real/file"), "x").unwrap();
        std::os::unix::fs::symlink(dir.join("real/file"), dir.join("filelink")).unwrap();
        assert!(matches!(
            read_private(&dir.join("filelink")),
            Err(PrivateFsError::Symlink(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
