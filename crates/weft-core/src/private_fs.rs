//! Files only the mesh's own user may read: keys and attestation tokens.
//!
//! Two rules hold for every file written here. A file is created fresh with mode 0600 and then
//! renamed into place, so a symlink planted at the target is replaced, never followed (an
//! attacker who can write into the directory cannot redirect a secret to a file of their
//! choice). A directory is created with mode 0700, and an existing one is refused if it is a
//! symlink or is readable by others.

use std::fs;
use std::io::{self as stdio, Write};
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

/// Writes `contents` to `path` with mode 0600 (see [`replace_file`]).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PrivateFsError> {
    replace_file(path, contents, 0o600).map_err(io(path))
}

/// How many temporary names are tried before giving up: a collision of 64 random bits means
/// something else is creating files with our naming scheme, not bad luck.
const TEMP_ATTEMPTS: usize = 8;

/// Writes `contents` to `path` with permission bits `mode`, replacing any file or symlink
/// already there and never writing through a symlink.
///
/// The parent directory must exist. The mode is set on the open file, so it is exact whatever
/// the umask, and no other permission is visible at any moment.
pub fn replace_file(path: &Path, contents: &[u8], mode: u32) -> stdio::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        stdio::Error::new(
            stdio::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    for _ in 0..TEMP_ATTEMPTS {
        let temp = dir.join(format!(
            ".{}.{:016x}.tmp",
            name.to_string_lossy(),
            random_u64()?
        ));
        let mut file = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
        {
            Ok(file) => file,
            Err(e) if e.kind() == stdio::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let written = file
            .set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|()| file.write_all(contents))
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::rename(&temp, path));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written?;
        // Make the rename itself durable. Some filesystems refuse to fsync a directory; the
        // file's content is already synced, so that is not worth failing over.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        return Ok(());
    }
    Err(stdio::Error::new(
        stdio::ErrorKind::AlreadyExists,
        format!(
            "no free temporary name next to {} after {TEMP_ATTEMPTS} attempts",
            path.display()
        ),
    ))
}

fn random_u64() -> stdio::Result<u64> {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| stdio::Error::other("the system random generator failed"))?;
    Ok(u64::from_le_bytes(bytes))
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

    #[test]
    fn replaces_a_symlink_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, "precious").unwrap();
        let target = dir.path().join("key");
        std::os::unix::fs::symlink(&outside, &target).unwrap();

        replace_file(&target, b"secret", 0o600).unwrap();

        assert_eq!(fs::read_to_string(&outside).unwrap(), "precious");
        let meta = fs::symlink_metadata(&target).unwrap();
        assert!(meta.file_type().is_file(), "the link itself was replaced");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&target).unwrap(), "secret");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn sets_the_exact_mode_and_replaces_existing_content() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("bundle.pem");
        fs::write(&target, "old and longer than the new content").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o666)).unwrap();

        replace_file(&target, b"new", 0o644).unwrap();

        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn a_path_without_a_file_name_is_an_error_not_a_panic() {
        let err = replace_file(Path::new("/"), b"x", 0o600).unwrap_err();
        assert_eq!(err.kind(), stdio::ErrorKind::InvalidInput);
    }
}
