//! Files as the tests write and read them: replaced the way editors do, listed back, and a
//! small filesystem to fill.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::bins::describe;

/// Every name in `dir`, hidden ones included, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Replace a file the way editors do: write a new file, rename it over the old one.
pub fn write_replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-edit");
    fs::write(&tmp, text).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

/// A tmpfs of `size` (e.g. `4m`) mounted on `dir`; unmounted when dropped. Needs root (or
/// CAP_SYS_ADMIN); fails loudly otherwise, since the disk-space test means nothing without it.
pub struct SmallFilesystem {
    pub dir: PathBuf,
}

impl SmallFilesystem {
    pub fn mount(dir: &Path, size: &str) -> SmallFilesystem {
        fs::create_dir_all(dir).unwrap();
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            output.status.success(),
            "cannot mount a {size} tmpfs on {} for the disk-space test: {}; run the tests as root or with CAP_SYS_ADMIN",
            dir.display(),
            describe(&output)
        );
        SmallFilesystem {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
