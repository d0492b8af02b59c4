//! Lua policies: user code that narrows what the engine does (which lower metadata to
//! cache, what GC deletes, how to remount), never what keeps the store correct.
//!
//! A policy file returns a table of optional hooks (`HOOKS`). Each call runs in a
//! sandbox with an instruction budget; a hook that errors, runs out of budget or returns
//! the wrong type is logged with the policy's file and line, and the engine applies the
//! safe default (copy nothing optional, keep every path, remount the built-in way).
//! `lua/default.lua` spells out Nix's behaviour; `lua/overlay.d.lua` describes the API
//! for editors.

pub mod api;
pub mod check;
pub mod host;
pub mod sandbox;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use mlua::{ChunkMode, Function, Lua, Table, Value};

use crate::format::StorePath;
use crate::spec::{PolicyLimits, StoreSpec};
use crate::store::gc::DeadPath;
use crate::store::gc::GcChoice;
use crate::store::overlay::{CopyUpReason, OverlayPolicy, OverlayStore, PolicyFailure};
use crate::store::{PathInfo, Result as StoreResult};

pub use host::{PolicyHost, SampleHost};

/// Every hook a policy may define, with its signature (for messages and `policy check`).
pub const HOOKS: &[(&str, &str)] = &[
    ("copy_up", "copy_up(info, reason) -> boolean"),
    ("gc_roots", "gc_roots() -> { store path, ... }"),
    ("gc", "gc(candidates) -> { store path to delete, ... } [, { [path] = reason }]"),
    ("remount", "remount(ctx) -> nil | boolean"),
    ("on_reload", "on_reload(old, new)"),
    ("pivot", "pivot(plan) -> { [path] = \"copy\" | \"drop\" }"),
];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: cannot read the policy: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Untrusted(String),
    #[error("{0}")]
    Lua(String),
    #[error("{file}: the policy must return a table of hooks, it returned {got}")]
    NotATable { file: PathBuf, got: String },
    #[error("{file}: unknown hook '{name}'{hint}; hooks are: {}", HOOKS.iter().map(|h| h.0).collect::<Vec<_>>().join(", "))]
    UnknownHook { file: PathBuf, name: String, hint: String },
    #[error("{file}: hook '{name}' must be a function, it is {got}")]
    NotAFunction { file: PathBuf, name: String, got: String },
}

/// A hook call that did not produce a usable answer.
#[derive(Debug, Clone)]
pub struct HookError {
    pub hook: String,
    pub message: String,
}

/// Lua error text, without mlua's wrapping and tracebacks: `file:line: message`.
pub(crate) fn lua_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => lua_message(cause),
        mlua::Error::RuntimeError(m) | mlua::Error::SyntaxError { message: m, .. } => {
            m.split("\nstack traceback:").next().unwrap_or(m).trim().to_string()
        }
        mlua::Error::MemoryError(m) => format!("memory limit exceeded ({m}; raise [policy-limits] memory-mib if this is intended)"),
        other => other.to_string().split("\nstack traceback:").next().unwrap_or_default().trim().to_string(),
    }
}

fn type_name(v: &Value) -> String {
    v.type_name().to_string()
}

pub struct LuaPolicy {
    lua: Lua,
    budget: Rc<sandbox::Budget>,
    hooks: Table,
    file: PathBuf,
    loaded: sandbox::LoadedFiles,
    failures: RefCell<Vec<PolicyFailure>>,
}

impl LuaPolicy {
    /// Loads and validates a policy file. `spec` becomes `overlay.config`.
    pub fn load(file: &Path, limits: &PolicyLimits, spec: Option<&StoreSpec>) -> Result<LuaPolicy, PolicyError> {
        let text = std::fs::read(file).map_err(|source| PolicyError::Read { file: file.to_path_buf(), source })?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        for p in [file, dir.as_path()] {
            let p = if p.as_os_str().is_empty() { Path::new(".") } else { p };
            sandbox::check_trusted(p).map_err(PolicyError::Untrusted)?;
        }
        let loaded: sandbox::LoadedFiles = Rc::new(RefCell::new(vec![file.to_path_buf()]));
        let lua_err = |e: mlua::Error| PolicyError::Lua(lua_message(&e));
        let (lua, budget) = sandbox::new_state(
            &dir,
            limits.instructions,
            std::time::Duration::from_secs(limits.wall_clock_secs),
            (limits.memory_mib as usize).saturating_mul(1 << 20),
            loaded.clone(),
        )
        .map_err(lua_err)?;
        api::install_static(&lua, spec, file).map_err(lua_err)?;
        budget.reset();
        let value: Value = lua
            .load(text)
            .set_mode(ChunkMode::Text)
            .set_name(sandbox::chunk_name(file))
            .eval()
            .map_err(|e| PolicyError::Lua(sandbox::with_full_path(lua_message(&e), file)))?;
        let Value::Table(hooks) = value else {
            return Err(PolicyError::NotATable { file: file.to_path_buf(), got: type_name(&value) });
        };
        for pair in hooks.pairs::<Value, Value>() {
            let (k, v) = pair.map_err(lua_err)?;
            let name = match &k {
                Value::String(s) => s.to_str().map(|s| s.to_string()).unwrap_or_default(),
                other => other.type_name().to_string(),
            };
            if !HOOKS.iter().any(|(h, _)| *h == name) {
                let names: Vec<&str> = HOOKS.iter().map(|(h, _)| *h).collect();
                let hint = crate::spec::did_you_mean(&name, &names).map(|h| format!(" (did you mean '{h}'?)")).unwrap_or_default();
                return Err(PolicyError::UnknownHook { file: file.to_path_buf(), name, hint });
            }
            if !matches!(v, Value::Function(_)) {
                return Err(PolicyError::NotAFunction { file: file.to_path_buf(), name, got: type_name(&v) });
            }
        }
        Ok(LuaPolicy { lua, budget, hooks, file: file.to_path_buf(), loaded, failures: RefCell::new(Vec::new()) })
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The policy file and every module it required so far.
    pub fn files(&self) -> Vec<PathBuf> {
        self.loaded.borrow().clone()
    }

    pub fn has_hook(&self, name: &str) -> bool {
        matches!(self.hooks.raw_get::<Value>(name), Ok(Value::Function(_)))
    }

    /// Where a hook is defined, `file:line`, for messages about its return value.
    fn hook_place(&self, f: &Function) -> String {
        let info = f.info();
        format!("{}:{}", self.file.display(), info.line_defined.unwrap_or(0))
    }

    /// Calls a hook with the `overlay.*` API bound to `host` for the duration of the call.
    /// `Ok(None)` when the policy does not define it.
    pub fn call<R>(
        &self,
        host: &dyn PolicyHost,
        hook: &str,
        make_args: impl FnOnce(&Lua) -> mlua::Result<mlua::MultiValue>,
        convert: impl FnOnce(&Lua, mlua::MultiValue) -> Result<R, String>,
    ) -> Result<Option<R>, HookError> {
        let Ok(Value::Function(f)) = self.hooks.raw_get::<Value>(hook) else {
            return Ok(None);
        };
        let err = |message: String| HookError { hook: hook.to_string(), message };
        self.budget.reset();
        let result = self.lua.scope(|scope| {
            api::install_scoped(&self.lua, scope, host)?;
            let args = make_args(&self.lua)?;
            f.call::<mlua::MultiValue>(args)
        });
        let _ = api::uninstall_scoped(&self.lua);
        let values = result.map_err(|e| err(lua_message(&e)))?;
        convert(&self.lua, values).map(Some).map_err(|m| err(format!("{}: {hook} returned {m}", self.hook_place(&f))))
    }

    fn record(&self, e: &HookError, changed_outcome: bool, fallback: &str) {
        tracing::warn!(target: "overlay_store::policy", "policy hook '{}' failed: {}; {fallback}", e.hook, e.message);
        self.failures.borrow_mut().push(PolicyFailure { hook: e.hook.clone(), message: e.message.clone(), changed_outcome });
    }

    /// `on_reload(old, new)`: tells the new policy which configs it replaces.
    pub fn on_reload(&self, host: &dyn PolicyHost, old: &StoreSpec, new: &StoreSpec) {
        let r = self.call(
            host,
            "on_reload",
            |lua| Ok(mlua::MultiValue::from_vec(vec![Value::Table(api::spec_table(lua, old)?), Value::Table(api::spec_table(lua, new)?)])),
            |_, _| Ok(()),
        );
        if let Err(e) = r {
            self.record(&e, false, "ignored");
        }
    }

    /// `pivot(plan)`: per path, "copy" or "drop". Failure: `None` (use the default plan).
    pub fn pivot(&self, host: &dyn PolicyHost, plan: &[(StorePath, bool)]) -> Option<BTreeMap<StorePath, String>> {
        let r = self.call(
            host,
            "pivot",
            |lua| {
                let t = lua.create_table()?;
                for (i, (p, live)) in plan.iter().enumerate() {
                    let e = lua.create_table()?;
                    e.set("path", host.display(p))?;
                    e.set("live", *live)?;
                    t.raw_set(i + 1, e)?;
                }
                Ok(mlua::MultiValue::from_vec(vec![Value::Table(t)]))
            },
            |_, vals| {
                let v = vals.into_iter().next().unwrap_or(Value::Nil);
                let Value::Table(t) = v else { return Err(format!("{} (expected a table of path = \"copy\" | \"drop\")", type_name(&v))) };
                let mut out = BTreeMap::new();
                for pair in t.pairs::<String, String>() {
                    let (k, v) = pair.map_err(|e| format!("a malformed table ({e})"))?;
                    if v != "copy" && v != "drop" {
                        return Err(format!("'{v}' for '{k}' (expected \"copy\" or \"drop\")"));
                    }
                    let p = host.parse(&k).map_err(|e| e.to_string())?;
                    out.insert(p, v);
                }
                Ok(out)
            },
        );
        match r {
            Ok(v) => v,
            Err(e) => {
                self.record(&e, true, "using the default plan (copy live paths, drop dead ones)");
                None
            }
        }
    }
}

/// The hooks, each returning what the policy answered (`None`: not defined) or why it
/// could not be used. `OverlayPolicy` below applies the safe defaults; `policy check`
/// calls these on sample data.
impl LuaPolicy {
    pub fn hook_copy_up(&self, host: &dyn PolicyHost, info: &PathInfo, reason: CopyUpReason) -> Result<Option<bool>, HookError> {
        self.call(
            host,
            "copy_up",
            |lua| {
                Ok(mlua::MultiValue::from_vec(vec![
                    Value::Table(api::info_table(lua, host, info)?),
                    Value::String(lua.create_string(reason.as_str())?),
                ]))
            },
            |_, vals| match vals.into_iter().next().unwrap_or(Value::Nil) {
                Value::Boolean(b) => Ok(b),
                other => Err(format!("{} (expected a boolean)", type_name(&other))),
            },
        )
    }

    pub fn hook_gc_roots(&self, host: &dyn PolicyHost) -> Result<Option<Vec<StorePath>>, HookError> {
        self.call(
            host,
            "gc_roots",
            |_| Ok(mlua::MultiValue::new()),
            |_, vals| {
                let v = vals.into_iter().next().unwrap_or(Value::Nil);
                match v {
                    Value::Nil => Ok(Vec::new()),
                    Value::Table(t) => t
                        .sequence_values::<String>()
                        .map(|s| {
                            s.map_err(|e| format!("a list with a non-string ({e})")).and_then(|s| host.parse(&s).map_err(|e| e.to_string()))
                        })
                        .collect(),
                    other => Err(format!("{} (expected a list of store paths)", type_name(&other))),
                }
            },
        )
    }

    pub fn hook_gc(&self, host: &dyn PolicyHost, dead: &[DeadPath], in_lower: &[bool]) -> Result<Option<GcChoice>, HookError> {
        self.call(
            host,
            "gc",
            |lua| {
                let t = lua.create_table_with_capacity(dead.len(), 0)?;
                for (i, (d, low)) in dead.iter().zip(in_lower).enumerate() {
                    t.raw_set(i + 1, api::candidate_table(lua, host, d, *low)?)?;
                }
                Ok(mlua::MultiValue::from_vec(vec![Value::Table(t)]))
            },
            |_, vals| {
                let mut it = vals.into_iter();
                let first = it.next().unwrap_or(Value::Nil);
                let Value::Table(t) = first else {
                    return Err(format!("{} (expected a list of store paths to delete)", type_name(&first)));
                };
                let mut delete = Vec::new();
                for s in t.sequence_values::<Value>() {
                    let s = s.map_err(|e| e.to_string())?;
                    let Value::String(s) = s else {
                        return Err(format!("a list containing a {} (expected store path strings)", type_name(&s)));
                    };
                    let s = s.to_str().map_err(|e| e.to_string())?.to_string();
                    delete.push(host.parse(&s).map_err(|e| format!("a list containing '{s}': {e}"))?);
                }
                let mut reasons = BTreeMap::new();
                if let Some(Value::Table(r)) = it.next() {
                    for pair in r.pairs::<String, String>() {
                        let (k, v) = pair.map_err(|e| format!("a malformed reasons table ({e})"))?;
                        if let Ok(p) = host.parse(&k) {
                            reasons.insert(p, v);
                        }
                    }
                }
                Ok(GcChoice { delete, reasons })
            },
        )
    }

    pub fn hook_remount(&self, host: &dyn PolicyHost, store_dir: &str, reason: &str) -> Result<Option<bool>, HookError> {
        self.call(
            host,
            "remount",
            |lua| {
                let ctx = lua.create_table()?;
                ctx.set("store_dir", store_dir)?;
                ctx.set("reason", reason)?;
                Ok(mlua::MultiValue::from_vec(vec![Value::Table(ctx)]))
            },
            |_, vals| match vals.into_iter().next().unwrap_or(Value::Nil) {
                Value::Nil | Value::Boolean(true) => Ok(true),
                Value::Boolean(false) => Ok(false),
                other => Err(format!("{} (expected nothing or a boolean)", type_name(&other))),
            },
        )
    }
}

impl LuaPolicy {
    /// `remount(ctx)` for a config change under `watch`: `ctx.old` and `ctx.new` are the
    /// configs as tables.
    pub fn hook_remount_change(&self, host: &dyn PolicyHost, old: &StoreSpec, new: &StoreSpec) -> Result<Option<bool>, HookError> {
        self.call(
            host,
            "remount",
            |lua| {
                let ctx = lua.create_table()?;
                ctx.set("store_dir", new.real.display().to_string())?;
                ctx.set("reason", "config")?;
                ctx.set("old", api::spec_table(lua, old)?)?;
                ctx.set("new", api::spec_table(lua, new)?)?;
                Ok(mlua::MultiValue::from_vec(vec![Value::Table(ctx)]))
            },
            |_, vals| match vals.into_iter().next().unwrap_or(Value::Nil) {
                Value::Nil | Value::Boolean(true) => Ok(true),
                Value::Boolean(false) => Ok(false),
                other => Err(format!("{} (expected nothing or a boolean)", type_name(&other))),
            },
        )
    }
}

impl OverlayPolicy for LuaPolicy {
    fn copy_up(&self, store: &OverlayStore, info: &PathInfo, reason: CopyUpReason) -> bool {
        match self.hook_copy_up(store, info, reason) {
            Ok(Some(b)) => b,
            Ok(None) => true,
            Err(e) => {
                self.record(&e, false, "skipping the optional copy-up");
                false
            }
        }
    }

    fn gc_roots(&self, store: &OverlayStore) -> StoreResult<Vec<StorePath>> {
        match self.hook_gc_roots(store) {
            Ok(v) => Ok(v.unwrap_or_default()),
            Err(e) => {
                self.record(&e, true, "keeping every path");
                Err(crate::store::StoreError::Other(format!("policy hook 'gc_roots' failed, so nothing was collected: {}", e.message)))
            }
        }
    }

    fn gc(&self, store: &OverlayStore, dead: Vec<DeadPath>, in_lower: &[bool]) -> StoreResult<GcChoice> {
        let all: Vec<StorePath> = dead.iter().map(|d| d.path.clone()).collect();
        match self.hook_gc(store, &dead, in_lower) {
            // The engine only ever deletes candidates: anything else the policy names is ignored.
            Ok(Some(mut c)) => {
                let allowed: std::collections::HashSet<&StorePath> = all.iter().collect();
                c.delete.retain(|p| allowed.contains(p));
                Ok(c)
            }
            Ok(None) => Ok(GcChoice { delete: all, reasons: BTreeMap::new() }),
            Err(e) => {
                self.record(&e, true, "keeping every path");
                let reasons = all.iter().map(|p| (p.clone(), format!("the gc hook failed: {}", e.message))).collect();
                Ok(GcChoice { delete: Vec::new(), reasons })
            }
        }
    }

    fn remount(&self, store: &OverlayStore, reason: &str) -> StoreResult<bool> {
        match self.hook_remount(store, &store.plan().real.display().to_string(), reason) {
            Ok(Some(handled)) => Ok(handled),
            Ok(None) => Ok(false),
            Err(e) => {
                self.record(&e, true, "falling back to remount-hook or the built-in remount");
                Ok(false)
            }
        }
    }

    fn pivot(&self, store: &OverlayStore, affected: &[(StorePath, bool)]) -> Option<BTreeMap<StorePath, String>> {
        LuaPolicy::pivot(self, store, affected)
    }

    fn failures(&self) -> Vec<PolicyFailure> {
        self.failures.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_hook_gets_a_suggestion() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("p.lua");
        for (name, want) in [("gc_root", Some("gc_roots")), ("GC", Some("gc")), ("copyup", Some("copy_up")), ("frobnicate", None)] {
            std::fs::write(&f, format!("return {{ {name} = function() end }}\n")).unwrap();
            let err = LuaPolicy::load(&f, &PolicyLimits::default(), None).err().expect("an unknown hook").to_string();
            assert!(err.contains(&format!("unknown hook '{name}'")), "{err}");
            match want {
                Some(w) => assert!(err.contains(&format!("did you mean '{w}'?")), "{err}"),
                None => assert!(!err.contains("did you mean"), "{err}"),
            }
        }
    }

    /// Every function a policy can call, and every hook, is described in the LuaLS stub.
    #[test]
    fn the_luals_stub_covers_the_api() {
        let stub = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/lua/overlay.d.lua")).unwrap();
        for f in api::SCOPED_FUNCTIONS {
            assert!(stub.contains(&format!("function overlay.{f}(")), "overlay.{f} missing from lua/overlay.d.lua");
        }
        for f in api::LOG_FUNCTIONS {
            assert!(stub.contains(&format!("function log.{f}(")), "log.{f} missing from lua/overlay.d.lua");
        }
        for (h, _) in HOOKS {
            assert!(stub.contains(&format!("@field {h} fun(")), "hook {h} missing from lua/overlay.d.lua");
        }
        assert!(stub.contains("@field config table"));
    }

    #[test]
    fn every_shipped_policy_passes_its_check() {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut files: Vec<PathBuf> = std::fs::read_dir(format!("{root}/lua")).unwrap().map(|e| e.unwrap().path()).collect();
        files.push(PathBuf::from(format!("{root}/examples/shared-lower/policy.lua")));
        for p in files {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".lua") || name.ends_with(".d.lua") {
                continue;
            }
            let results = check::check(&p, &PolicyLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!results.is_empty(), "{name} defines no hook");
            for r in results {
                assert!(r.outcome.is_ok(), "{name}: {:?}", r.outcome);
            }
        }
    }
}
