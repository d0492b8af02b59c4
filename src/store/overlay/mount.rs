//! The OverlayFS mount of an overlay store: checking it, and (with `[mount]`) making,
//! remaking and removing it with mount(2).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::mountinfo::{self, escape_overlay_path};

/// Features that make an overlay refuse to mount again after its lower layer changed
/// (ESTALE); a lower store grows, so they stay off unless the user insists.
pub const DEFAULT_OPTIONS: &[&str] = &["index=off", "metacopy=off", "redirect_dir=off", "xino=off"];

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{}", incorrect_message(.real, .expected, .actual, .fix))]
    MountedIncorrectly { real: PathBuf, expected: String, actual: String, fix: String },
    #[error("{}", missing_dir_message(.what, .path))]
    MissingDir { what: &'static str, path: PathBuf },
    #[error("the upper layer '{0}' is itself on OverlayFS, which OverlayFS cannot use as an upper layer: put `upper-layer` (and the workdir) on a plain file system such as ext4, xfs, btrfs or tmpfs")]
    UpperOnOverlay(PathBuf),
    #[error("workdir '{workdir}' is on another filesystem than the upper layer '{upper}'; OverlayFS needs both on one filesystem")]
    CrossDevice { workdir: PathBuf, upper: PathBuf },
    #[error("mounting the overlay on '{real}' is not permitted: run as root (or in a user namespace that owns the mount)")]
    NotPermitted { real: PathBuf },
    #[error("no [mount] table in the store spec: add one with `workdir = \"…\"` so overlay-store can mount '{0}' itself")]
    NotManaged(PathBuf),
    #[error("'{real}' is busy: something still uses the mount (close it, or unmount by hand with `umount -l`)")]
    Busy { real: PathBuf },
    #[error("{op} '{real}' failed: {errno}{hint}")]
    Kernel { op: &'static str, real: PathBuf, errno: Errno, hint: String },
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
}

fn missing_dir_message(what: &str, path: &Path) -> String {
    if what == "lower store directory" {
        format!(
            "lower store directory '{}' does not exist: the spec's `lower-store` must name an existing Nix store (fix its `root`/`real`, or make the store first: `overlay-store --store 'local?root=…' init`)",
            path.display()
        )
    } else {
        format!(
            "{what} '{}' does not exist; create it (`overlay-store init` creates the upper layer, workdir and state directories)",
            path.display()
        )
    }
}

fn incorrect_message(real: &Path, expected: &str, actual: &str, fix: &str) -> String {
    format!("overlay filesystem '{}' mounted incorrectly\n  expected: {expected}\n  actual:   {actual}\n  to fix:   {fix}", real.display())
}

/// What the mount of an overlay store must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// The mount point: the upper store directory.
    pub real: PathBuf,
    pub lowerdir: PathBuf,
    pub upperdir: PathBuf,
    pub workdir: Option<PathBuf>,
    /// Extra OverlayFS options from `[mount] options`.
    pub options: Vec<String>,
    /// The lower store's database, stamped with the mount (see [`super::lower_stamp`]).
    pub lower_db: Option<PathBuf>,
    /// Where a mount made here records its stamp of the lower store.
    pub stamp_file: Option<PathBuf>,
    /// How the user names the spec on a command line (`-c 'store.toml'`), for fix-it
    /// commands; `None` when it has no file.
    pub spec_arg: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountState {
    NotMounted,
    Correct,
    /// Something else is mounted there; `actual` describes it.
    Wrong {
        actual: String,
    },
}

/// Paths as the kernel reports them: absolute, symlinks resolved where they exist.
fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

impl MountPlan {
    /// The options string for mount(2) / `mount -o`.
    pub fn data(&self) -> String {
        let mut opts = vec![
            format!("lowerdir={}", escape_overlay_path(&canonical(&self.lowerdir))),
            format!("upperdir={}", escape_overlay_path(&canonical(&self.upperdir))),
        ];
        if let Some(w) = &self.workdir {
            opts.push(format!("workdir={}", escape_overlay_path(&canonical(w))));
        }
        for d in DEFAULT_OPTIONS {
            let key = d.split('=').next().unwrap_or(d);
            if !self.options.iter().any(|o| o.split('=').next() == Some(key)) {
                opts.push(d.to_string());
            }
        }
        opts.extend(self.options.iter().cloned());
        opts.join(",")
    }

    /// Whether `other` describes the same mount (what the kernel is told), whatever the
    /// bookkeeping around it (stamp file, how the spec is named).
    pub fn same_mount(&self, other: &MountPlan) -> bool {
        (&self.real, &self.lowerdir, &self.upperdir, &self.workdir, &self.options)
            == (&other.real, &other.lowerdir, &other.upperdir, &other.workdir, &other.options)
    }

    /// The shell command that would mount it correctly.
    pub fn command(&self) -> String {
        let quote = |s: &str| {
            if s.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.,=:".contains(c)) {
                s.to_string()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        };
        let mut data = self.data();
        if self.workdir.is_none() {
            data.push_str(",workdir=<a workdir on the upper layer's filesystem>");
        }
        format!("mount -t overlay overlay -o {} {}", quote(&data), quote(&canonical(&self.real).to_string_lossy()))
    }

    pub fn expected_text(&self) -> String {
        format!("overlay with lowerdir={} upperdir={}", canonical(&self.lowerdir).display(), canonical(&self.upperdir).display())
    }

    /// Compares the top-most mount at `real` with the plan.
    pub fn state(&self) -> Result<MountState, MountError> {
        let entries = mountinfo::read_self().map_err(MountError::MountInfo)?;
        let real = canonical(&self.real);
        let Some(top) = mountinfo::top_mount_at(&entries, &real) else {
            return Ok(MountState::NotMounted);
        };
        let actual = format!("{} {}", top.fs_type, top.options_text());
        let Some(ov) = top.overlay() else {
            return Ok(MountState::Wrong { actual });
        };
        // Further lower dirs below the lower store's may add files, never hide them.
        let lower_ok = ov.lowerdirs.first().map(|l| l == &canonical(&self.lowerdir)).unwrap_or(false);
        let upper_ok = ov.upperdir.as_deref() == Some(canonical(&self.upperdir).as_path());
        Ok(if lower_ok && upper_ok { MountState::Correct } else { MountState::Wrong { actual } })
    }

    /// Fails with "mounted incorrectly" unless the mount matches.
    pub fn check(&self) -> Result<(), MountError> {
        match self.state()? {
            MountState::Correct => Ok(()),
            MountState::NotMounted => Err(self.incorrect("not mounted".into())),
            MountState::Wrong { actual } => Err(self.incorrect(actual)),
        }
    }

    fn incorrect(&self, actual: String) -> MountError {
        // With a [mount] table we mount it ourselves: say so first.
        let fix = match (&self.spec_arg, self.workdir.is_some(), actual == "not mounted") {
            (Some(arg), true, true) => format!("overlay-store {arg} mount   (which runs: {})", self.command()),
            (Some(arg), true, false) => format!("umount '{}' && overlay-store {arg} mount", self.real.display()),
            _ => self.command(),
        };
        MountError::MountedIncorrectly { real: self.real.clone(), expected: self.expected_text(), actual, fix }
    }

    /// Mounts the overlay; a no-op when it is already mounted correctly, an error when
    /// something else is mounted there.
    pub fn mount(&self) -> Result<bool, MountError> {
        match self.state()? {
            MountState::Correct => return Ok(false),
            MountState::Wrong { actual } => return Err(self.incorrect(actual)),
            MountState::NotMounted => {}
        }
        let workdir = self.workdir.clone().ok_or_else(|| MountError::NotManaged(self.real.clone()))?;
        for (what, p) in
            [("lower store directory", &self.lowerdir), ("upper layer", &self.upperdir), ("workdir", &workdir), ("mount point", &self.real)]
        {
            if !p.is_dir() {
                return Err(MountError::MissingDir { what, path: p.clone() });
            }
        }
        if let Some(file) = &self.stamp_file {
            super::lower_stamp::forget(file);
        }
        if is_overlayfs(&self.upperdir) {
            return Err(MountError::UpperOnOverlay(self.upperdir.clone()));
        }
        let (wd, ud) = (fs::metadata(&workdir), fs::metadata(&self.upperdir));
        if let (Ok(w), Ok(u)) = (wd, ud) {
            if w.dev() != u.dev() {
                return Err(MountError::CrossDevice { workdir, upper: self.upperdir.clone() });
            }
        }
        mount(Some("overlay"), &self.real, Some("overlay"), MsFlags::empty(), Some(self.data().as_str())).map_err(|errno| match errno {
            Errno::EPERM | Errno::EACCES => MountError::NotPermitted { real: self.real.clone() },
            errno => MountError::Kernel {
                op: "mounting overlay on",
                real: self.real.clone(),
                errno,
                hint: match errno {
                    Errno::ESTALE => " (the upper layer's index or metacopy data no longer matches the lower store; mount with index=off, or start a fresh upper layer)".into(),
                    Errno::EINVAL => " (the kernel log, `dmesg`, says why: an option it refused, or an upper layer on a file system OverlayFS cannot write to, which needs xattrs and d_type: ext4, xfs, btrfs and tmpfs work)".into(),
                    Errno::ENODEV => " (this kernel has no OverlayFS: `modprobe overlay`)".into(),
                    _ => String::new(),
                },
            },
        })?;
        if let Some(file) = &self.stamp_file {
            let recorded = super::lower_stamp::take(&self.real, &self.lowerdir, self.lower_db.as_deref())
                .map(|stamp| super::lower_stamp::record(file, &stamp));
            if let Some(Err(e)) = recorded {
                tracing::warn!("cannot record the lower store's state at mount time in '{}': {e}", file.display());
            }
        }
        Ok(true)
    }

    /// Unmounts; a no-op when nothing is mounted at `real`.
    pub fn umount(&self) -> Result<bool, MountError> {
        if self.state()? == MountState::NotMounted {
            return Ok(false);
        }
        umount2(&canonical(&self.real), MntFlags::empty()).map_err(|errno| match errno {
            Errno::EPERM | Errno::EACCES => MountError::NotPermitted { real: self.real.clone() },
            Errno::EBUSY => MountError::Busy { real: self.real.clone() },
            errno => MountError::Kernel { op: "unmounting", real: self.real.clone(), errno, hint: String::new() },
        })?;
        if let Some(file) = &self.stamp_file {
            super::lower_stamp::forget(file);
        }
        Ok(true)
    }
}

/// `mount -o remount REAL`: makes OverlayFS forget what it cached about the upper layer,
/// so files deleted there directly show the lower copy again.
pub fn remount(real: &Path) -> Result<(), MountError> {
    mount(None::<&str>, &canonical(real), None::<&str>, MsFlags::MS_REMOUNT, None::<&str>).map_err(|errno| match errno {
        Errno::EPERM | Errno::EACCES => MountError::NotPermitted { real: real.to_path_buf() },
        errno => MountError::Kernel { op: "remounting", real: real.to_path_buf(), errno, hint: String::new() },
    })
}

/// Whether `path` is on a mounted OverlayFS (by `statfs` magic): one system call, and
/// true of the mount whatever `check-mount` says, so a destructive operation can ask.
pub fn is_overlayfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC).unwrap_or(false)
}
