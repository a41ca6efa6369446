//! Disk primitives of the file-backed stores (keys dir, client registry): the private
//! directory, atomic writes, the ownership and mode rules, the advisory lock, change
//! stamps.
//!
//! The rules are ssh's: a store file or directory must be owned by the server's user (or
//! root) and not writable by group or others; a file holding secrets not readable by them
//! either. Files are opened without following symbolic links, except a link that stays
//! inside the store's directory (the layout of a Kubernetes Secret volume); a root-owned
//! store on a read-only filesystem cannot be written by anyone, so its write bits do not
//! matter.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of in-flight temporary files; the loader skips every dot file.
pub const TEMP_PREFIX: &str = ".tmp-";

/// What a store file holds, for the mode rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// Secrets (private keys, client secret hashes): no access at all for group or others.
    Secrets,
    /// Records (the key manifest): readable by all, writable by the owner only.
    Records,
}

/// Why a store file or directory is not used.
#[derive(Debug, thiserror::Error)]
pub enum Unsafe {
    /// Group or others may use it in a way the rule forbids.
    #[error(
        "{path}: permissions {mode:04o} are too open; {what} must not be {access} by group or others (fix: chmod {fix:o} {path})"
    )]
    TooOpen {
        /// Its permission bits.
        mode: u32,
        /// What it is, for the message.
        what: &'static str,
        /// "accessible" or "writable".
        access: &'static str,
        /// The mode that fixes it.
        fix: u32,
        /// The path, for the fix.
        path: String,
    },
    /// Owned by a user other than the server's and root.
    #[error(
        "{path}: owned by uid {owner}, not by this server's user (uid {uid}) or root; another user could change it (fix: chown {uid} {path})"
    )]
    Owner {
        /// The file's owner.
        owner: u32,
        /// The server's effective uid.
        uid: u32,
        /// The path, for the fix.
        path: String,
    },
    /// A symbolic link that leads out of the store's directory.
    #[error(
        "{path}: a symbolic link to {target}, outside {dir}; store files are never followed out of their directory (fix: replace the link with the file)"
    )]
    Symlink {
        /// The link.
        path: String,
        /// Where it leads.
        target: String,
        /// The store's directory.
        dir: String,
    },
    /// Not a regular file (a directory, a device, a fifo).
    #[error("{0}: not a regular file")]
    NotAFile(String),
    /// A symbolic link where a file is only ever opened itself (the audit log).
    #[error(
        "{path}: a symbolic link (to {target}); it is never followed, so nobody who can change the link can redirect the writes (fix: name the file itself)"
    )]
    Link {
        /// The link.
        path: String,
        /// Where it leads.
        target: String,
    },
}

/// A store file could not be read: the OS error, or a rule it breaks.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The OS refused.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The file breaks the ownership, mode or link rule.
    #[error(transparent)]
    Unsafe(#[from] Unsafe),
}

/// Test hook: with `JWT_ISSUER_READ_FAULT_IF=<path>`, reading any store file fails with an
/// I/O error (EIO) while `<path>` exists, as on a failing disk or a network filesystem.
const READ_FAULT_ENV: &str = "JWT_ISSUER_READ_FAULT_IF";

/// Reads `dir/name` under the store rules: `Ok(None)` when it does not exist.
///
/// # Errors
/// The OS error, or the rule the file or `dir` breaks.
pub fn read_store_file(dir: &Path, name: &str, holds: Holds) -> Result<Option<Vec<u8>>, ReadError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    if std::env::var_os(READ_FAULT_ENV).is_some_and(|flag| Path::new(&flag).exists()) {
        return Err(io::Error::from(rustix::io::Errno::IO).into());
    }
    check_dir(dir)?;
    let path = dir.join(name);
    let mut file = match open_within(dir, &path) {
        Ok(file) => file,
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Unsafe::NotAFile(path.display().to_string()).into());
    }
    check_owner(meta.uid(), &path)?;
    let mode = meta.mode() & 0o777;
    let (forbidden, what, access, fix) = match holds {
        Holds::Secrets => (
            0o077,
            "a file holding private keys or secrets",
            "accessible",
            0o600,
        ),
        Holds::Records => (0o022, "a store file", "writable", 0o644),
    };
    let allowed = match holds {
        // Nobody can write a sealed store, whatever the bits say.
        Holds::Records => sealed(&meta, &file),
        // A sealed secret may be readable by its group when that group is the server's:
        // a Kubernetes Secret mounted for a non-root server (fsGroup) is root:group 0440.
        Holds::Secrets => {
            mode & forbidden == 0o040 && sealed(&meta, &file) && in_our_groups(meta.gid())
        }
    };
    if mode & forbidden != 0 && !allowed {
        return Err(Unsafe::TooOpen {
            mode,
            what,
            access,
            fix,
            path: path.display().to_string(),
        }
        .into());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Checks the store's directory itself: owned by the server's user or root, and not
/// writable by group or others unless its filesystem is read-only. A missing directory
/// passes (the first change creates it 0700).
///
/// # Errors
/// The rule it breaks, or the OS error of looking at it.
pub fn check_dir(dir: &Path) -> Result<(), ReadError> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    check_owner(meta.uid(), dir)?;
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 && !File::open(dir).is_ok_and(|d| sealed(&meta, &d)) {
        return Err(Unsafe::TooOpen {
            mode,
            what: "a store directory",
            access: "writable",
            fix: 0o700,
            path: dir.display().to_string(),
        }
        .into());
    }
    Ok(())
}

fn check_owner(owner: u32, path: &Path) -> Result<(), Unsafe> {
    let uid = rustix::process::geteuid().as_raw();
    if owner == uid || owner == 0 {
        return Ok(());
    }
    Err(Unsafe::Owner {
        owner,
        uid,
        path: path.display().to_string(),
    })
}

/// Opens `path` (in `dir`) for reading without following a symbolic link, except one
/// whose target lies inside `dir`.
fn open_within(dir: &Path, path: &Path) -> Result<File, ReadError> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |p: &Path| {
        fs::OpenOptions::new()
            .read(true)
            // Non-blocking: a fifo planted under a store file's name must not hang the
            // open (the type is checked next).
            .custom_flags(no_follow() | non_blocking())
            .open(p)
    };
    match open(path) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            let target = fs::canonicalize(path)?;
            let inside = fs::canonicalize(dir)?;
            if !target.starts_with(&inside) {
                return Err(Unsafe::Symlink {
                    path: path.display().to_string(),
                    target: target.display().to_string(),
                    dir: inside.display().to_string(),
                }
                .into());
            }
            Ok(open(&target)?)
        }
        other => Ok(other?),
    }
}

/// Whether nobody can change `file` whatever its write bits: owned by root on a read-only
/// filesystem (a Kubernetes Secret volume). A read-only bind mount of someone else's files
/// does not count: they may write the files underneath.
fn sealed(meta: &fs::Metadata, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.uid() == 0 && read_only_fs(file)
}

/// Whether `gid` is the server's group or one of its supplementary groups.
fn in_our_groups(gid: u32) -> bool {
    rustix::process::getegid().as_raw() == gid
        || rustix::process::getgroups().is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
}

/// Whether `file` lives on a read-only filesystem.
fn read_only_fs(file: &File) -> bool {
    rustix::fs::fstatvfs(file)
        .is_ok_and(|stat| stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// `O_NONBLOCK`, for `OpenOptionsExt::custom_flags` (no effect on regular files).
fn non_blocking() -> i32 {
    i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0)
}

/// `O_NOFOLLOW | O_CLOEXEC`, for `OpenOptionsExt::custom_flags`.
fn no_follow() -> i32 {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC;
    i32::try_from(flags.bits()).unwrap_or(0)
}

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

pub(crate) fn inject_disk_full() -> io::Result<()> {
    match std::env::var_os(DISK_FULL_ENV) {
        Some(flag) if Path::new(&flag).exists() => Err(io::Error::from(rustix::io::Errno::NOSPC)),
        _ => Ok(()),
    }
}

/// Opens `path` for appending (`O_APPEND`), creating it with mode 0600 when missing, under
/// the store rules: its directory and the file owned by this user or root and writable by
/// nobody else, the file a regular file and never a symbolic link. Group and others may
/// read it (a log shipper may need to), never write it.
///
/// # Errors
/// The OS error, or the rule the file or its directory breaks.
pub fn open_append(path: &Path) -> Result<File, ReadError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    check_dir(dir)?;
    let file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        // A fifo under the name must not hang the open (the type is checked next).
        .custom_flags(no_follow() | non_blocking())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                let target = fs::read_link(path)
                    .map_or_else(|_| "?".to_owned(), |t| t.display().to_string());
                ReadError::Unsafe(Unsafe::Link {
                    path: path.display().to_string(),
                    target,
                })
            } else {
                ReadError::Io(e)
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Unsafe::NotAFile(path.display().to_string()).into());
    }
    check_owner(meta.uid(), path)?;
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(Unsafe::TooOpen {
            mode,
            what: "an append-only log",
            access: "writable",
            fix: 0o600,
            path: path.display().to_string(),
        }
        .into());
    }
    Ok(file)
}

/// How long a change waits for another process's change to finish before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Takes the exclusive advisory lock on `path` (created 0600), held until the file drops;
/// waits at most [`LOCK_WAIT`] for another holder (a change in progress takes well under a
/// second; a holder that keeps it longer is stuck, and waiting for ever would stall the
/// caller too).
pub fn lock(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        // A link planted as the lock file must not make the server create or lock a
        // file elsewhere, nor a fifo block the open.
        .custom_flags(no_follow() | non_blocking())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the lock file is not a regular file",
        ));
    }
    let start = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "another process has held the lock for {} s (a change in progress, or stuck)",
                        LOCK_WAIT.as_secs()
                    ),
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// The version of a file's content and its safety: (inode, size, modification time,
/// change time, mode, owner), so a replaced file, and a chmod or chown, are noticed
/// cheaply; `None` when it does not exist or cannot be looked at.
pub fn version_of(path: &Path) -> Option<crate::store::StoreVersion> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).ok()?;
    Some(crate::store::StoreVersion::new(format!(
        "{}:{}:{}.{:09}:{}.{:09}:{:o}:{}",
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
        meta.mode(),
        meta.uid()
    )))
}
