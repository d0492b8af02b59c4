//! Reading `/proc/self/mountinfo`, and the options of OverlayFS mounts in it.
//!
//! A line is `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTS`.
//! Fields escape space, tab, newline and backslash as octal (`\040`). Inside the
//! overlay's super options the kernel also octal-escapes `,`, and keeps the backslash
//! escapes of overlay paths (`\,`, `\:`, `\\`), so a value is decoded in two steps: octal
//! first, then overlay's own escapes when splitting `lowerdir` on `:`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// Super options, octal escapes decoded, in order.
    pub super_options: Vec<(String, Option<String>)>,
}

/// The directories of an overlay mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayOptions {
    /// Top-most first, as in `lowerdir=a:b`.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
}

/// Decodes `\NNN` octal escapes.
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64 + (oct[1] - b'0') as u32 * 8 + (oct[2] - b'0') as u32;
                if v <= 255 {
                    out.push(v as u8);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits on `sep` not preceded by a backslash and removes overlay's backslash escapes.
fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                parts.last_mut().expect("non-empty").push(n);
            }
        } else if c == sep {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("non-empty").push(c);
        }
    }
    parts
}

/// Escapes a path for an overlay mount option value (`,`, `:` and `\`).
pub fn escape_overlay_path(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub fn parse_line(line: &str) -> Option<MountEntry> {
    let (pre, post) = line.split_once(" - ")?;
    let pre: Vec<&str> = pre.split(' ').collect();
    if pre.len() < 6 {
        return None;
    }
    let mut post = post.splitn(3, ' ');
    let fs_type = unescape_octal(post.next()?);
    let source = unescape_octal(post.next()?);
    let opts = post.next().unwrap_or("");
    let super_options = opts
        .split(',')
        .filter(|o| !o.is_empty())
        .map(|o| match o.split_once('=') {
            Some((k, v)) => (unescape_octal(k), Some(unescape_octal(v))),
            None => (unescape_octal(o), None),
        })
        .collect();
    Some(MountEntry {
        id: pre[0].parse().ok()?,
        parent: pre[1].parse().ok()?,
        mount_point: PathBuf::from(unescape_octal(pre[4])),
        fs_type,
        source,
        super_options,
    })
}

pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

pub fn read_self() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mount currently visible at `path`: with stacked mounts, the last one listed.
pub fn top_mount_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == path)
}

impl MountEntry {
    pub fn option(&self, key: &str) -> Option<&str> {
        self.super_options.iter().rev().find(|(k, _)| k == key).and_then(|(_, v)| v.as_deref())
    }

    pub fn overlay(&self) -> Option<OverlayOptions> {
        if self.fs_type != "overlay" {
            return None;
        }
        let lowerdirs = self.option("lowerdir").map(|v| split_escaped(v, ':').into_iter().map(PathBuf::from).collect()).unwrap_or_default();
        let one = |k| self.option(k).map(|v| PathBuf::from(split_escaped(v, '\0').concat()));
        Some(OverlayOptions { lowerdirs, upperdir: one("upperdir"), workdir: one("workdir") })
    }

    /// The super options as the kernel shows them, for messages.
    pub fn options_text(&self) -> String {
        self.super_options
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r"63 43 0:39 / /tmp/ovt rw,relatime - tmpfs tmpfs rw
66 63 0:40 / /tmp/ovt/merged rw,relatime - overlay overlay rw,lowerdir=/tmp/ovt/lo\134\054w\134:er\040x,upperdir=/tmp/ovt/up,workdir=/tmp/ovt/work,uuid=on
70 66 0:42 / /tmp/ovt/merged rw,relatime shared:5 master:1 - overlay overlay rw,lowerdir=/tmp/ovt/up:/tmp/ovt/lo\134\054w\134:er\040x,upperdir=/tmp/ovt/work2,workdir=/tmp/ovt/work3,uuid=on
71 43 0:43 / /mnt/with\040space rw - overlay overlay rw,lowerdir=/a\040b,upperdir=/c\134\134d,workdir=/w";

    #[test]
    fn escapes_and_several_lowerdirs() {
        let e = parse(SAMPLE);
        assert_eq!(e.len(), 4);
        let o = e[1].overlay().unwrap();
        assert_eq!(o.lowerdirs, vec![PathBuf::from("/tmp/ovt/lo,w:er x")]);
        assert_eq!(o.upperdir.as_deref(), Some(Path::new("/tmp/ovt/up")));
        let top = top_mount_at(&e, Path::new("/tmp/ovt/merged")).unwrap();
        assert_eq!(top.id, 70);
        let o = top.overlay().unwrap();
        assert_eq!(o.lowerdirs, vec![PathBuf::from("/tmp/ovt/up"), PathBuf::from("/tmp/ovt/lo,w:er x")]);
        assert_eq!(e[3].mount_point, PathBuf::from("/mnt/with space"));
        let o = e[3].overlay().unwrap();
        assert_eq!(o.lowerdirs, vec![PathBuf::from("/a b")]);
        assert_eq!(o.upperdir.as_deref(), Some(Path::new(r"/c\d")));
        assert!(e[0].overlay().is_none());
    }

    #[test]
    fn escaping_round_trip() {
        let p = Path::new("/x/lo,w:er\\y");
        assert_eq!(escape_overlay_path(p), r"/x/lo\,w\:er\\y");
        assert_eq!(split_escaped(&escape_overlay_path(p), ':'), vec![p.to_string_lossy().to_string()]);
    }
}
