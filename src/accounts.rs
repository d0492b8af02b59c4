//! User and group names, read from `/etc/passwd` and `/etc/group` directly.
//!
//! The release binary is linked statically, and glibc's NSS modules (systemd, sssd, …)
//! loaded into a static binary can crash it: asking glibc for a group it only finds
//! through such a module killed the process with SIGSEGV. So only the files are read;
//! users and groups that exist only in a directory service are not known by name here.

use std::path::Path;

/// One line of a passwd or group file, split at its colons.
fn entries(file: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

fn user_name_in(passwd: &Path, uid: u32) -> Option<String> {
    entries(passwd).into_iter().find(|f| f.len() >= 3 && f[2].parse() == Ok(uid)).map(|f| f[0].clone())
}

/// The name of `uid`, if `/etc/passwd` has one.
pub fn user_name(uid: u32) -> Option<String> {
    user_name_in(Path::new("/etc/passwd"), uid)
}

/// A group: its id and its listed members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub gid: u32,
    pub members: Vec<String>,
}

fn group_in(file: &Path, name: &str) -> Option<Group> {
    entries(file).into_iter().find(|f| f.len() >= 3 && f[0] == name).and_then(|f| {
        let gid = f[2].parse().ok()?;
        let members = f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()).unwrap_or_default();
        Some(Group { gid, members })
    })
}

fn group_name_in(file: &Path, gid: u32) -> Option<String> {
    entries(file).into_iter().find(|f| f.len() >= 3 && f[2].parse() == Ok(gid)).map(|f| f[0].clone())
}

/// The name of group `gid`, if `/etc/group` has one.
pub fn group_name(gid: u32) -> Option<String> {
    group_name_in(Path::new("/etc/group"), gid)
}

/// The group called `name`, if `/etc/group` has it.
pub fn group(name: &str) -> Option<Group> {
    group_in(Path::new("/etc/group"), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_as_glibc_reads_them() {
        let t = tempfile::tempdir().unwrap();
        let passwd = t.path().join("passwd");
        std::fs::write(&passwd, "# comment\nroot:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n\n").unwrap();
        assert_eq!(user_name_in(&passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(user_name_in(&passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_name_in(&passwd, 4242), None);
        let group = t.path().join("group");
        std::fs::write(&group, "wheel:x:10:alice,bob\nempty:x:11:\nbroken:x:notanumber:\n").unwrap();
        assert_eq!(group_in(&group, "wheel"), Some(Group { gid: 10, members: vec!["alice".into(), "bob".into()] }));
        assert_eq!(group_in(&group, "empty"), Some(Group { gid: 11, members: vec![] }));
        assert_eq!(group_in(&group, "broken"), None);
        assert_eq!(group_in(&group, "nope"), None);
        assert_eq!(group_name_in(&group, 10).as_deref(), Some("wheel"));
        assert_eq!(group_name_in(&group, 99), None);
    }
}
