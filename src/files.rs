//! Disk primitives of the file-backed stores (keys dir, client registry): the private
//! directory, atomic writes, mode checks, the advisory lock, change stamps.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Prefix of in-flight temporary files; the loader skips every dot file.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Makes an existing directory private (0700) when group or others may use it; returns
/// the mode it had when it changed it, `None` when it was private already.
pub fn tighten_dir(dir: &Path) -> io::Result<Option<u32>> {
    let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(Some(mode))
}

/// Writes `contents` to `dir/name` so that the name holds either nothing or the whole
/// file, never a prefix: temp file in the same directory (mode 0600), fsync, rename,
/// fsync of the directory so the rename itself survives a crash.
///
/// With `replace` false an existing file is never overwritten (`AlreadyExists`).
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8], replace: bool) -> io::Result<PathBuf> {
    let target = dir.join(name);
    // tempfile creates the file with mode 0600 and O_EXCL.
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    inject_disk_full()?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    if replace {
        tmp.persist(&target).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(&target).map_err(|e| e.error)?;
    }
    File::open(dir)?.sync_all()?;
    Ok(target)
}

/// Test hook: with `JWT_ISSUER_DISK_FULL_IF=<path>`, every atomic write fails as on a full
/// disk (ENOSPC, after the temp file exists) while `<path>` exists, so tests can fill the
/// disk under a running process and empty it again.
const DISK_FULL_ENV: &str = "JWT_ISSUER_DISK_FULL_IF";

fn inject_disk_full() -> io::Result<()> {
    match std::env::var_os(DISK_FULL_ENV) {
        Some(flag) if Path::new(&flag).exists() => Err(io::Error::from_raw_os_error(28)),
        _ => Ok(()),
    }
}

/// The permission bits of `path` when group or others may read or write it (ssh's rule
/// for private keys), `None` when it is private.
pub fn too_open_mode(meta: &fs::Metadata) -> Option<u32> {
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o066 != 0).then_some(mode)
}

/// Takes the exclusive advisory lock on `path` (created 0600), held until the file drops.
pub fn lock(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.lock()?;
    Ok(file)
}

/// The version of a file's content: (inode, size, modification time), to notice a
/// replaced file cheaply; `None` when it does not exist.
pub fn version_of(path: &Path) -> Option<crate::store::StoreVersion> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).ok()?;
    Some(crate::store::StoreVersion::new(format!(
        "{}:{}:{}.{:09}",
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )))
}
