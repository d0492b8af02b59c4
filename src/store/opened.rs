//! A store opened from a spec, whichever kind it is: what the CLI's commands and each
//! served connection work on, so both go through the same engine.

use crate::format::Realisation;
use crate::spec::{StoreKind, StoreSpec};
use crate::store::gc::GcTarget;
use crate::store::local::ingest::IngestTarget;
use crate::store::local::{LocalConfig, LocalStore};
use crate::store::overlay::{OpenOptions, OverlayPolicy, OverlayStore};
use crate::store::{Result, Store, StoreError};

pub enum Opened {
    Local(LocalStore),
    Overlay(OverlayStore),
}

impl Opened {
    /// Opens the store `spec` describes; an overlay gets `policy` (a local store has no
    /// hooks, so a policy there is only warned about).
    pub fn open(spec: &StoreSpec, policy: Box<dyn OverlayPolicy>) -> Result<Opened> {
        match spec.kind {
            StoreKind::Local => {
                if let Some(p) = &spec.policy {
                    tracing::warn!("policy '{}' is not used: policies apply to local-overlay stores", p.display());
                }
                Ok(Opened::Local(LocalStore::open(LocalConfig::from_spec(spec))?))
            }
            StoreKind::LocalOverlay => Ok(Opened::Overlay(OverlayStore::open_with_policy(spec, OpenOptions::default(), policy)?)),
            StoreKind::Daemon => Err(StoreError::Other("a daemon store can only be used as a lower store".into())),
        }
    }

    /// Hook failures whose safe default changed what an operation did.
    pub fn consequential_policy_failures(&self) -> usize {
        match self {
            Opened::Local(_) => 0,
            Opened::Overlay(o) => o.policy().failures().iter().filter(|f| f.changed_outcome).count(),
        }
    }

    pub fn store(&self) -> &dyn Store {
        match self {
            Opened::Local(s) => s,
            Opened::Overlay(s) => s,
        }
    }

    pub fn ingest(&mut self) -> &mut dyn IngestTarget {
        match self {
            Opened::Local(s) => s,
            Opened::Overlay(s) => s,
        }
    }

    pub fn gc_target(&mut self) -> &mut dyn GcTarget {
        match self {
            Opened::Local(s) => s,
            Opened::Overlay(s) => s,
        }
    }

    /// The store holding the database rows (for an overlay: the upper store, whose real
    /// directory is the mount, so files are checked through it).
    pub fn registry(&mut self) -> &mut LocalStore {
        match self {
            Opened::Local(s) => s,
            Opened::Overlay(s) => s.upper_mut(),
        }
    }

    /// Registers realisations (an overlay copies up what they need first).
    pub fn register_realisations(&self, batch: &[Realisation]) -> Result<()> {
        match self {
            Opened::Local(s) => s.register_realisations(batch),
            Opened::Overlay(s) => s.register_realisations(batch),
        }
    }
}
