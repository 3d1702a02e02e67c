//! Opening a plan's value files safely: never under `/proc`, `/sys` or `/dev` (nor through a
//! symlink or a `..` detour into them), never deployd's own secret files, never a FIFO or a
//! device (an open that could block), at most the API's longest value. Used when a plan is
//! loaded ([`check_at_load`]) and when a run reads its values ([`read_value_file`]); a leaf
//! below the plan loader and the executor.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::api::rules::PARAM_VALUE_MAX;

/// Folders whose files are never a param value: the kernel's views of processes (deployd's
/// own environment, `/proc/self/environ`), of the system, and devices.
pub const REFUSED_ROOTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// The refused root `path` is under (`/proc`, `/sys`, `/dev`), compared by components.
pub fn refused_root(path: &Path) -> Option<&'static str> {
    REFUSED_ROOTS
        .into_iter()
        .find(|root| path.starts_with(root))
}

/// `path` with `.` and `..` folded without touching the file system (`/tmp/../proc` is
/// `/proc`), so that a refused folder cannot hide behind a detour.
fn fold_dots(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn refused_message(path: &Path, resolved: Option<&Path>, root: &str) -> String {
    let what = match resolved {
        Some(r) if r != path => format!(
            "{} resolves to {}, under {root}",
            path.display(),
            r.display()
        ),
        _ => format!("{} is under {root}", path.display()),
    };
    format!(
        "{what}: value_from.file reads regular files only, never under /proc, /sys or /dev (they expose the daemon's own environment and devices)"
    )
}

/// Refuses a path that is, or resolves through symlinks to, a file under a refused root.
fn check_path(path: &Path) -> Result<(), String> {
    let folded = fold_dots(path);
    if let Some(root) = refused_root(&folded) {
        return Err(refused_message(path, None, root));
    }
    if let Ok(real) = std::fs::canonicalize(path)
        && let Some(root) = refused_root(&real)
    {
        return Err(refused_message(path, Some(&real), root));
    }
    Ok(())
}

/// The kind of a file that is not a regular file, for messages.
fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a folder"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Opens a value file for reading, never blocking: the path must not lead under a refused
/// root nor into `forbidden`, checked on the handle actually opened, and it must be a
/// regular file (`fstat` on that handle).
fn open_checked(path: &Path, forbidden: &[PathBuf]) -> Result<File, OpenError> {
    check_path(path).map_err(OpenError::Refused)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO or a device never blocks the open; a regular file reads as usual.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(OpenError::Io)?;
    {
        use std::os::fd::AsRawFd;
        // What was opened, whatever symlinks were swapped meanwhile.
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .or_else(|_| std::fs::canonicalize(path))
            .map_err(|e| OpenError::Refused(format!("cannot resolve {}: {e}", path.display())))?;
        if let Some(root) = refused_root(&opened) {
            return Err(OpenError::Refused(refused_message(
                path,
                Some(&opened),
                root,
            )));
        }
        let forbidden_hit = forbidden
            .iter()
            .filter_map(|f| std::fs::canonicalize(f).ok())
            .any(|f| opened.starts_with(&f));
        if forbidden_hit {
            return Err(OpenError::Refused(format!(
                "{} holds deployd's own credentials; a plan may not read it",
                path.display()
            )));
        }
    }
    let meta = file.metadata().map_err(OpenError::Io)?;
    if !meta.file_type().is_file() {
        return Err(OpenError::Refused(format!(
            "{} is {}; value_from.file reads regular files only",
            path.display(),
            kind_of(&meta.file_type())
        )));
    }
    Ok(file)
}

enum OpenError {
    /// The path may never be read.
    Refused(String),
    /// It could not be opened (missing, no permission...).
    Io(std::io::Error),
}

/// Checks a `value_from.file` path when the plan is loaded: refused if it is, or resolves
/// to, a file under `/proc`, `/sys` or `/dev`, or is there and not a regular file. A file
/// that is missing or unreadable now is not an error here (it may be there when a run
/// starts, which checks everything again).
pub fn check_at_load(path: &Path) -> Result<(), String> {
    match open_checked(path, &[]) {
        Ok(_) | Err(OpenError::Io(_)) => Ok(()),
        Err(OpenError::Refused(why)) => Err(why),
    }
}

/// Reads a value file (blocking, but never on a FIFO or device): at most
/// [`PARAM_VALUE_MAX`] characters, one trailing newline dropped.
pub fn read_value_file(path: &Path, forbidden: &[PathBuf]) -> Result<String, String> {
    let file = open_checked(path, forbidden).map_err(|e| match e {
        OpenError::Refused(why) => why,
        OpenError::Io(e) => format!("cannot read {}: {e}", path.display()),
    })?;
    // 8192 characters take at most 4 x 8192 bytes, plus a line ending: reading one more
    // character's worth tells "too long" without reading the rest (`/dev/zero`-like files).
    let cap = (PARAM_VALUE_MAX + 1) * 4;
    let mut bytes = Vec::with_capacity(4096);
    file.take(cap as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let too_long = || {
        format!(
            "{} holds more than {PARAM_VALUE_MAX} characters, the API's limit for a param value",
            path.display()
        )
    };
    if bytes.len() >= cap {
        return Err(too_long());
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let text = strip_one_newline(text);
    if text.chars().count() > PARAM_VALUE_MAX {
        return Err(too_long());
    }
    Ok(text)
}

/// A file's value without the one line ending editors add.
pub fn strip_one_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}
