//! Accounting per layer: what the upper layer holds, what it duplicates, what could go.

use std::collections::HashSet;
use std::fs;

use crate::store::fs::tree::measure as measure_tree;
use crate::store::gc::{Collector, GcAction, GcOptions};
use crate::store::overlay::OverlayStore;
use crate::store::Result;

/// Paths and bytes (NAR sizes for registered paths, disk bytes for unclaimed entries).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Count {
    pub paths: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: u64) {
        self.paths += 1;
        self.bytes += bytes;
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OverlayStats {
    /// Rows whose files are in the upper layer only.
    pub upper_only: Count,
    /// Copied-up rows of lower paths (files in the lower store only).
    pub lower_known_upper: Count,
    /// Rows whose files are in both layers (`optimise` removes the upper copies).
    pub duplicates: Count,
    /// Rows with no files in either layer.
    pub missing: Count,
    /// Dead rows (what `gc` would delete), and of those the ones with upper files.
    pub dead: Count,
    pub dead_upper: Count,
    /// Upper-layer entries no row claims.
    pub unclaimed: Count,
    /// Bytes `gc` and `optimise` could free in the upper layer.
    pub reclaimable_bytes: u64,
}

impl OverlayStore {
    pub fn stats(&mut self, keep_derivations: bool, keep_outputs: bool) -> Result<OverlayStats> {
        let mut st = OverlayStats::default();
        let infos = self.upper.db().all_infos()?;
        let mut has_upper: HashSet<String> = HashSet::new();
        let layers = self.layers();
        for info in &infos {
            let name = info.path.basename();
            let at = layers.locate(name);
            let (up, low) = (at.in_upper(), layers.lower_has(name));
            if up {
                has_upper.insert(name.to_string());
            }
            match (up, low) {
                (true, false) => st.upper_only.add(info.nar_size),
                (false, true) => st.lower_known_upper.add(info.nar_size),
                (true, true) => st.duplicates.add(info.nar_size),
                (false, false) => st.missing.add(info.nar_size),
            }
        }
        let claimed: HashSet<&str> = infos.iter().map(|i| i.path.basename()).collect();
        if let Ok(rd) = fs::read_dir(&self.upper_layer) {
            for e in rd.filter_map(|e| e.ok()) {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with('.') || claimed.contains(n.as_str()) {
                    continue;
                }
                st.unclaimed.add(measure_tree(&e.path()));
            }
        }
        let sizes: std::collections::HashMap<_, _> = infos.iter().map(|i| (i.path.clone(), i.nar_size)).collect();
        let opts = GcOptions { action: GcAction::Collect, max_freed: None, dry_run: true, keep_derivations, keep_outputs };
        let mut quiet = |_: &str| {};
        let report = Collector { target: self, notice: &mut quiet }.run(&opts)?;
        for p in &report.skipped {
            let n = sizes.get(p).copied().unwrap_or(0);
            st.dead.add(n);
            if has_upper.contains(p.basename()) {
                st.dead_upper.add(n);
            }
        }
        st.reclaimable_bytes = st.duplicates.bytes + st.dead_upper.bytes + st.unclaimed.bytes;
        Ok(st)
    }
}
