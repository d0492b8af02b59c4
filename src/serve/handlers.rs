//! The requests that do more than read a row: garbage collection and roots, verify,
//! and uploads (AddToStore, AddMultipleToStore).

use std::collections::{BTreeMap, BTreeSet};

use super::connection::{Conn, Failure, OpResult};
use super::protocol::*;
use super::trust::Trust;
use crate::format::hash::{Hash, HashAlgo};
use crate::format::StorePath;
use crate::store::daemon::wire::{self, read_bool, read_string, read_u64, write_string, write_u64, WireError};
use crate::store::gc::{Collector, GcAction, GcOptions};
use crate::store::local::ingest;
use crate::store::PathInfo;

impl Conn<'_> {
    /// Runs `f`, then `STDERR_LAST`.
    pub(super) fn last_after(&mut self, f: impl FnOnce(&mut Self) -> crate::store::Result<()>) -> OpResult {
        f(self)?;
        self.last()?;
        Ok(())
    }

    pub(super) fn derivation_output_map(&self, drv: &StorePath) -> OpResult<BTreeMap<String, Option<StorePath>>> {
        let known = self.store.store().derivation_outputs(drv)?;
        let mut all: BTreeMap<String, Option<StorePath>> = known.into_iter().map(|(k, v)| (k, Some(v))).collect();
        // Outputs a .drv declares without a known path (floating CA) are listed empty.
        if let Ok(text) = crate::store::fs::tree::read_small_file(&self.store.store().real_path(drv), crate::store::local::MAX_DRV_SIZE) {
            if let Ok(outputs) = crate::format::derivation::parse_outputs(&text) {
                for o in outputs {
                    all.entry(o.name).or_insert(None);
                }
            }
        }
        Ok(all)
    }

    pub(super) fn set_options(&mut self) -> OpResult {
        let r = &mut self.r;
        let _keep_failed = read_u64(r)?;
        let _keep_going = read_u64(r)?;
        let _try_fallback = read_u64(r)?;
        let _verbosity = read_u64(r)?;
        let _max_build_jobs = read_u64(r)?;
        let _max_silent_time = read_u64(r)?;
        read_u64(r)?; // obsolete useBuildHook
        let _verbose_build = read_u64(r)?;
        read_u64(r)?; // obsolete logType
        read_u64(r)?; // obsolete printBuildTrace
        let _build_cores = read_u64(r)?;
        let _use_substitutes = read_u64(r)?;
        if self.minor >= 12 {
            let n = read_map_count(r)?;
            for _ in 0..n {
                let name = read_string(r)?;
                let _value = read_string(r)?;
                tracing::debug!("client setting '{name}' ignored");
            }
        }
        Ok(())
    }

    /// `auto/<hash of the link>` in the store's gcroots, pointing at the client's link,
    /// as Nix records indirect roots.
    pub(super) fn add_indirect_root(&mut self, link: &str) -> OpResult {
        if !link.starts_with('/') {
            return Err(Failure::Op(format!("indirect root '{}' is not an absolute path", hl(link))));
        }
        let state = &self.spec.state;
        let digest = Hash::new(HashAlgo::Sha1, &sha1_of(link.as_bytes()));
        let auto = state.join("gcroots").join("auto");
        std::fs::create_dir_all(&auto).map_err(|e| Failure::Op(format!("creating '{}': {e}", auto.display())))?;
        let root = auto.join(digest.to_nix32());
        let tmp = auto.join(format!(".tmp-{}-{}", std::process::id(), digest.to_nix32()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(link, &tmp)
            .and_then(|_| std::fs::rename(&tmp, &root))
            .map_err(|e| Failure::Op(format!("creating indirect root '{}': {e}", root.display())))
    }

    pub(super) fn find_roots(&mut self) -> OpResult<crate::store::local::roots::Roots> {
        let opts = GcOptions { action: GcAction::Collect, max_freed: None, dry_run: true, keep_derivations: true, keep_outputs: false };
        let mut notice = |_: &str| {};
        let report = Collector { target: self.store.gc_target(), notice: &mut notice }.run(&opts)?;
        Ok(report.roots)
    }

    pub(super) fn collect_garbage(&mut self) -> OpResult {
        let action = read_u64(&mut self.r)?;
        let paths = self.read_paths()?;
        let ignore_liveness = read_bool(&mut self.r)?;
        let max_freed = read_u64(&mut self.r)?;
        for _ in 0..3 {
            read_u64(&mut self.r)?; // obsolete
        }
        if ignore_liveness {
            return Err(Failure::Op("you are not allowed to ignore liveness".into()));
        }
        // Stricter than nix-daemon, which lets any allowed user collect: on a shared
        // overlay, deleting is for trusted users.
        if matches!(action, GC_DELETE_DEAD | GC_DELETE_SPECIFIC) {
            self.require_trusted("delete store paths (only trusted users may collect garbage on this store)")?;
        }
        let (gc_action, dry_run, return_live) = match action {
            GC_RETURN_LIVE => (GcAction::Collect, true, true),
            GC_RETURN_DEAD => (GcAction::Collect, true, false),
            GC_DELETE_DEAD => (GcAction::Collect, false, false),
            GC_DELETE_SPECIFIC => (GcAction::DeleteSpecific(paths), false, false),
            other => return Err(Failure::Wire(WireError::Malformed(format!("unknown GC action {other}")))),
        };
        let opts = GcOptions {
            action: gc_action,
            max_freed: (max_freed != u64::MAX && max_freed != 0).then_some(max_freed),
            dry_run,
            keep_derivations: self.spec.gc.keep_derivations,
            keep_outputs: self.spec.gc.keep_outputs,
        };
        let report = {
            let mut lines: Vec<String> = Vec::new();
            let mut notice = |m: &str| lines.push(m.to_string());
            let report = Collector { target: self.store.gc_target(), notice: &mut notice }.run(&opts);
            for l in lines {
                self.log(&l)?;
            }
            report?
        };
        self.last()?;
        let sd = self.store_dir();
        let listed: Vec<String> = if dry_run {
            let set = if return_live { &report.live } else { &report.dead };
            set.iter().map(|p| sd.display(p)).collect()
        } else {
            report.deleted.iter().map(|p| sd.display(p)).chain(report.garbage.iter().cloned()).collect()
        };
        wire::write_strings(&mut self.w, listed.iter().map(String::as_str))?;
        write_u64(&mut self.w, report.bytes_freed)?;
        write_u64(&mut self.w, 0)?; // obsolete
        Ok(())
    }

    pub(super) fn verify(&mut self, check_contents: bool) -> OpResult<bool> {
        let infos = self.store.registry().db().all_infos()?;
        let mut lines: Vec<String> = Vec::new();
        let (report, _fixes) = {
            let mut notice = |m: &str| lines.push(m.to_string());
            let mut v = crate::store::local::verify::Verifier { store: self.store.store(), check_contents, notice: &mut notice };
            v.run(infos, None)?
        };
        for l in lines.iter().chain(report.messages.iter()) {
            self.log(l)?;
        }
        Ok(report.errors > 0)
    }

    /// AddToStore, protocol 1.25 form: name, content-address method, references, repair,
    /// then the data (a NAR or the flat contents) as a framed stream.
    pub(super) fn add_to_store(&mut self) -> OpResult {
        if self.minor < 25 {
            return Err(Failure::Wire(WireError::Malformed("AddToStore needs protocol 1.25 or newer".into())));
        }
        let name = read_string(&mut self.r)?;
        let method = read_string(&mut self.r)?;
        let refs: BTreeSet<StorePath> = self.read_paths()?.into_iter().collect();
        let _repair = read_bool(&mut self.r)?;
        let method = ingest::CaMethod::parse(&method)
            .ok_or_else(|| Failure::Wire(WireError::Malformed(format!("content-address method '{method}'"))))?;
        let mut framed = FramedReader::new(&mut self.r);
        let result = ingest::add_ca(self.store.ingest(), &name, method, &refs, &mut framed);
        let drained = framed.drain();
        drained?;
        let info = result?;
        self.last()?;
        let shown = self.store_dir().display(&info.path);
        write_string(&mut self.w, &shown)?;
        self.write_info(&info)?;
        Ok(())
    }

    /// AddMultipleToStore: a framed stream holding a count, then per path its info and
    /// its NAR. All of them are registered in one transaction, or none.
    pub(super) fn add_multiple(&mut self) -> OpResult {
        let mut framed = FramedReader::new(&mut self.r);
        let n = read_map_count(&mut framed)?;
        let mut uploads = Vec::new();
        let result = (|| -> OpResult<()> {
            // Infos interleave with NARs, so each NAR is read (restored) as its info arrives.
            let store = &mut self.store;
            let trust = self.trust;
            let sd = store.store().store_dir().clone();
            let mut staged = ingest::Staging::new(store.ingest());
            for _ in 0..n {
                let mut info = read_info_from(&mut framed, &sd)?;
                check_upload(trust, &sd, &mut info)?;
                staged.stage(info.clone(), &mut framed)?;
                uploads.push(info.path);
            }
            staged.commit()?;
            Ok(())
        })();
        // A broken stream ends the connection (whatever the store said): check it first.
        framed.drain()?;
        result?;
        Ok(())
    }
}

/// What an upload may be: anything from a trusted client; from others only what proves
/// itself, a content-addressed path whose address names it (its content is checked when
/// it is restored), and never marked `ultimate`. Signatures are not checked yet, so a
/// signed input-addressed path is refused too.
pub(super) fn check_upload(trust: Trust, sd: &crate::format::StoreDir, info: &mut PathInfo) -> OpResult {
    if trust == Trust::Trusted {
        return Ok(());
    }
    info.ultimate = false;
    if info.ca_names_path(sd) {
        Ok(())
    } else {
        Err(Failure::Op(format!("cannot add path '{}' because it lacks a signature by a trusted key", hl(&sd.display(&info.path)))))
    }
}
