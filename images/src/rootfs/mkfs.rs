//! Turning the staging tree into a file system image with the host's tools: e2fsprogs'
//! `mkfs.ext4 -d` (then `debugfs` to pin inode change times, which `-d` copies from the
//! staging files and no caller can set) and erofs-utils' `mkfs.erofs`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::RootfsError;

/// File system UUID of every image: images are identified by their content digest, and a
/// fixed UUID keeps equal inputs byte-identical.
pub const FS_UUID: &str = "63617073-756c-452d-b26f-6f7466730001";
/// ext4 directory hash seed, fixed for the same reason.
pub const HASH_SEED: &str = "63617073-756c-452d-a861-736873656564";

/// Finds a tool on PATH or in the sbin directories (absent from a non-root PATH).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn tool(name: &'static str, package: &'static str) -> Result<PathBuf, RootfsError> {
    find_tool(name).ok_or(RootfsError::ToolMissing {
        tool: name,
        package,
    })
}

/// Output of a finished tool run.
struct Run {
    ok: bool,
    stderr: String,
}

fn run(cmd: &mut Command, tool: &'static str) -> Result<Run, RootfsError> {
    let out = cmd
        .output()
        .map_err(|source| RootfsError::ToolFailedToStart { tool, source })?;
    let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if stderr.trim().is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    Ok(Run {
        ok: out.status.success(),
        stderr,
    })
}

fn is_out_of_space(stderr: &str) -> bool {
    [
        "Could not allocate",
        "No space left",
        "No free space",
        "too small",
        "not enough space",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// Writes an ext4 image of `size` bytes with `inodes` inodes from `staging` to `out`.
pub fn ext4(
    staging: &Path,
    out: &Path,
    size: u64,
    inodes: u64,
    epoch: i64,
    squash_owner: bool,
) -> Result<(), RootfsError> {
    let mkfs = tool("mkfs.ext4", "e2fsprogs")?;
    let file = std::fs::File::create(out).map_err(|source| RootfsError::Output {
        path: out.display().to_string(),
        source,
    })?;
    file.set_len(size).map_err(|source| RootfsError::Output {
        path: out.display().to_string(),
        source,
    })?;
    drop(file);
    let result = run(
        Command::new(&mkfs)
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
            ])
            .arg("-N")
            .arg(inodes.to_string())
            .arg("-U")
            .arg(FS_UUID)
            .arg("-E")
            .arg(format!(
                "hash_seed={},root_owner=0:0,nodiscard,lazy_itable_init=1",
                HASH_SEED
            ))
            .arg("-d")
            .arg(staging)
            .arg(out),
        "mkfs.ext4",
    )?;
    if !result.ok {
        if is_out_of_space(&result.stderr) {
            return Err(RootfsError::OutOfSpace {
                size,
                detail: last_line(&result.stderr),
            });
        }
        return Err(RootfsError::ToolFailed {
            tool: "mkfs.ext4",
            stderr: result.stderr,
        });
    }
    pin_inode_times(out, epoch, squash_owner)
}

/// Sets every used inode's change time to `epoch` (and, with `squash_owner`, its owner to
/// root) through debugfs: `mkfs.ext4 -d` copies ctime from the staging files.
fn pin_inode_times(image: &Path, epoch: i64, squash_owner: bool) -> Result<(), RootfsError> {
    let dumpe2fs = tool("dumpe2fs", "e2fsprogs")?;
    let out = Command::new(&dumpe2fs)
        .arg(image)
        .output()
        .map_err(|source| RootfsError::ToolFailedToStart {
            tool: "dumpe2fs",
            source,
        })?;
    if !out.status.success() {
        return Err(RootfsError::ToolFailed {
            tool: "dumpe2fs",
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let listing = String::from_utf8_lossy(&out.stdout);
    let used = used_inodes(&listing).ok_or_else(|| RootfsError::ToolFailed {
        tool: "dumpe2fs",
        stderr: "unexpected output: no inode counts or group list".into(),
    })?;
    let mut script = String::new();
    for ino in used {
        let _ = writeln!(script, "sif <{ino}> ctime @{epoch}");
        if squash_owner {
            let _ = writeln!(script, "sif <{ino}> uid 0");
            let _ = writeln!(script, "sif <{ino}> gid 0");
        }
    }
    let script_path = image.with_extension("debugfs");
    std::fs::write(&script_path, script).map_err(|source| RootfsError::Output {
        path: script_path.display().to_string(),
        source,
    })?;
    let debugfs = tool("debugfs", "e2fsprogs")?;
    let result = run(
        Command::new(&debugfs)
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(image),
        "debugfs",
    );
    let _ = std::fs::remove_file(&script_path);
    let result = result?;
    // debugfs reports per-command errors on stderr but exits 0.
    let errors: Vec<&str> = result
        .stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !result.ok || !errors.is_empty() {
        return Err(RootfsError::ToolFailed {
            tool: "debugfs",
            stderr: errors.join("\n"),
        });
    }
    Ok(())
}

/// Inodes in use, from dumpe2fs' per-group "Free inodes:" lists: the root directory and
/// every used inode from "First inode" on.
fn used_inodes(listing: &str) -> Option<Vec<u64>> {
    let field = |name: &str| -> Option<u64> {
        listing
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    let count = field("Inode count:")?;
    let per_group = field("Inodes per group:")?;
    let first = field("First inode:").unwrap_or(11);
    if per_group == 0 {
        return None;
    }
    let mut free = vec![false; count as usize + 1];
    let mut groups = 0;
    for line in listing.lines() {
        // Group lines are indented; the unindented "Free inodes:" in the header is a count.
        if !line.starts_with(' ') {
            continue;
        }
        let Some(list) = line.trim_start().strip_prefix("Free inodes:") else {
            continue;
        };
        groups += 1;
        for range in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (a, b) = match range.split_once('-') {
                Some((a, b)) => (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?),
                None => {
                    let v = range.parse::<u64>().ok()?;
                    (v, v)
                }
            };
            for i in a..=b.min(count) {
                free[i as usize] = true;
            }
        }
    }
    if groups == 0 {
        return None;
    }
    Some(
        (1..=count)
            .filter(|&i| (i == 2 || i >= first) && !free[i as usize])
            .collect(),
    )
}

/// Writes an erofs image from `staging` to `out`.
pub fn erofs(
    staging: &Path,
    out: &Path,
    epoch: i64,
    squash_owner: bool,
) -> Result<(), RootfsError> {
    let mkfs = tool("mkfs.erofs", "erofs-utils")?;
    let mut cmd = Command::new(&mkfs);
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .arg(format!("-T{epoch}"))
        .arg(format!("-U{FS_UUID}"));
    if squash_owner {
        cmd.arg("--all-root");
    }
    let result = run(cmd.arg(out).arg(staging), "mkfs.erofs")?;
    if !result.ok {
        if is_out_of_space(&result.stderr) {
            return Err(RootfsError::OutOfSpace {
                size: 0,
                detail: last_line(&result.stderr),
            });
        }
        return Err(RootfsError::ToolFailed {
            tool: "mkfs.erofs",
            stderr: result.stderr,
        });
    }
    Ok(())
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_used_inodes_from_dumpe2fs() {
        let listing = "Inode count:              32\nInodes per group:         16\n\
                       Free inodes:              13\n\
                       First inode:              11\n\
                       Group 0: (Blocks 0-99)\n  Free inodes: 14-16\n\
                       Group 1: (Blocks 100-199)\n  Free inodes: 17-20, 22-32\n";
        assert_eq!(used_inodes(listing), Some(vec![2, 11, 12, 13, 21]));
        assert_eq!(used_inodes("garbage"), None);
    }
}
