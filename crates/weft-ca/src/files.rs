//! Writing the CA's files without following symbolic links.
//!
//! Opening a path with create + truncate follows a symlink planted there, so anyone who can
//! write to the directory could make the CA write its root key wherever the link points, or
//! overwrite a file of their choosing with it. Files are instead written to a new file next to
//! the target, created exclusively (which never follows a symlink), and renamed over the
//! target (which replaces a symlink rather than writing through it). The rename also means a
//! reader sees the old content or the new one, never half of it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// How many temporary names are tried before giving up: a collision of 64 random bits means
/// something else is creating files with our naming scheme, not bad luck.
const TEMP_ATTEMPTS: usize = 8;

/// Writes `contents` to `path` with permission bits `mode`, replacing any file or symlink
/// already there and never writing through a symlink.
///
/// The parent directory must exist. The mode is set on the open file, so it is exact whatever
/// the umask, and no other permission is visible at any moment.
pub fn replace_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
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
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
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
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "no free temporary name next to {} after {TEMP_ATTEMPTS} attempts",
            path.display()
        ),
    ))
}

fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| io::Error::other("the system random generator failed"))?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn replaces_a_symlink_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, "precious").unwrap();
        let target = dir.path().join("key");
        symlink(&outside, &target).unwrap();

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
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
