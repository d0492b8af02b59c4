//! The `overlay` and `log` tables policies see, and the plain tables passed to hooks.
//! Store queries are bound to the store only while a hook runs (a scoped borrow), so a
//! policy cannot hold on to the store beyond the call.

use std::path::Path;

use mlua::{Lua, Scope, Table, Value};

use crate::policy::host::PolicyHost;
use crate::spec::StoreSpec;
use crate::store::gc::DeadPath;
use crate::store::PathInfo;

/// The functions that need a store, in the order the LuaLS stub lists them.
pub const SCOPED_FUNCTIONS: &[&str] =
    &["path_info", "in_lower", "in_upper", "references", "referrers", "closure_size", "remount", "mount", "umount", "exec"];
pub const LOG_FUNCTIONS: &[&str] = &["debug", "info", "warn", "error"];

fn where_called(lua: &Lua) -> String {
    lua.inspect_stack(1)
        .map(|d| {
            let src = d.source().short_src.map(|s| s.to_string()).unwrap_or_default();
            format!("{src}:{}", d.curr_line())
        })
        .unwrap_or_default()
}

fn join_args(args: mlua::Variadic<Value>) -> String {
    args.iter()
        .map(|v| match v {
            Value::String(s) => s.to_string_lossy().to_string(),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `overlay.config`, `log.*`, `print`, and placeholders for the scoped functions.
pub fn install_static(lua: &Lua, spec: Option<&StoreSpec>, file: &Path) -> mlua::Result<()> {
    let overlay = lua.create_table()?;
    if let Some(spec) = spec {
        overlay.set("config", spec_table(lua, spec)?)?;
    } else {
        overlay.set("config", lua.create_table()?)?;
    }
    overlay.set("policy_file", file.display().to_string())?;
    lua.globals().set("overlay", overlay)?;
    uninstall_scoped(lua)?;
    let log = lua.create_table()?;
    macro_rules! level {
        ($name:literal, $mac:ident) => {
            log.set(
                $name,
                lua.create_function(|lua, args: mlua::Variadic<Value>| {
                    let at = where_called(lua);
                    tracing::$mac!(target: "overlay_store::policy", "{at}: {}", join_args(args));
                    Ok(())
                })?,
            )?;
        };
    }
    level!("debug", debug);
    level!("info", info);
    level!("warn", warn);
    level!("error", error);
    lua.globals().set("print", log.get::<Value>("info")?)?;
    lua.globals().set("log", log)
}

/// Replaces the scoped functions with ones that explain they need a running hook.
pub fn uninstall_scoped(lua: &Lua) -> mlua::Result<()> {
    let overlay: Table = lua.globals().get("overlay")?;
    for name in SCOPED_FUNCTIONS {
        let msg = format!("overlay.{name} can only be called while a hook runs (not when the policy file is loaded)");
        overlay.set(
            *name,
            lua.create_function(move |_, _: mlua::MultiValue| -> mlua::Result<()> { Err(mlua::Error::RuntimeError(msg.clone())) })?,
        )?;
    }
    Ok(())
}

fn bad(name: &str, e: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::RuntimeError(format!("overlay.{name}: {e}"))
}

pub fn install_scoped<'scope, 'env>(lua: &Lua, scope: &'scope Scope<'scope, 'env>, host: &'env dyn PolicyHost) -> mlua::Result<()> {
    let overlay: Table = lua.globals().get("overlay")?;
    overlay.set(
        "path_info",
        scope.create_function(move |lua, p: String| {
            let sp = host.parse(&p).map_err(|e| bad("path_info", e))?;
            match host.path_info(&sp).map_err(|e| bad("path_info", e))? {
                Some(i) => Ok(Value::Table(info_table(lua, host, &i)?)),
                None => Ok(Value::Nil),
            }
        })?,
    )?;
    overlay.set(
        "in_lower",
        scope.create_function(move |_, p: String| {
            host.in_lower(&host.parse(&p).map_err(|e| bad("in_lower", e))?).map_err(|e| bad("in_lower", e))
        })?,
    )?;
    overlay.set(
        "in_upper",
        scope.create_function(move |_, p: String| {
            host.in_upper(&host.parse(&p).map_err(|e| bad("in_upper", e))?).map_err(|e| bad("in_upper", e))
        })?,
    )?;
    overlay.set(
        "references",
        scope.create_function(move |_, p: String| {
            let sp = host.parse(&p).map_err(|e| bad("references", e))?;
            let info = host.path_info(&sp).map_err(|e| bad("references", e))?;
            Ok(info.map(|i| i.references.iter().map(|r| host.display(r)).collect::<Vec<_>>()))
        })?,
    )?;
    overlay.set(
        "referrers",
        scope.create_function(move |_, p: String| {
            let sp = host.parse(&p).map_err(|e| bad("referrers", e))?;
            Ok(host.referrers(&sp).map_err(|e| bad("referrers", e))?.iter().map(|r| host.display(r)).collect::<Vec<_>>())
        })?,
    )?;
    overlay.set(
        "closure_size",
        scope.create_function(move |_, p: String| {
            let sp = host.parse(&p).map_err(|e| bad("closure_size", e))?;
            host.closure_size(&sp).map_err(|e| bad("closure_size", e))
        })?,
    )?;
    overlay.set("remount", scope.create_function(move |_, ()| host.remount().map(|_| true).map_err(|e| bad("remount", e)))?)?;
    overlay.set("mount", scope.create_function(move |_, ()| host.mount().map(|_| true).map_err(|e| bad("mount", e)))?)?;
    overlay.set("umount", scope.create_function(move |_, ()| host.umount().map(|_| true).map_err(|e| bad("umount", e)))?)?;
    overlay.set(
        "exec",
        scope.create_function(move |lua, argv: Table| {
            let argv: Vec<String> = argv
                .sequence_values::<String>()
                .collect::<mlua::Result<_>>()
                .map_err(|e| bad("exec", format!("argv must be a list of strings ({e})")))?;
            let r = host.exec(&argv).map_err(|e| bad("exec", e))?;
            let t = lua.create_table()?;
            t.set("status", r.status)?;
            t.set("stdout", r.stdout)?;
            t.set("stderr", r.stderr)?;
            Ok(t)
        })?,
    )?;
    Ok(())
}

/// A path info as a plain table: `path, nar_hash, nar_size, references, deriver,
/// registration_time, ultimate, signatures, ca`.
pub fn info_table(lua: &Lua, host: &dyn PolicyHost, i: &PathInfo) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("path", host.display(&i.path))?;
    t.set("nar_hash", i.nar_hash.to_nix32_string())?;
    t.set("nar_size", i.nar_size)?;
    t.set("references", i.references.iter().map(|r| host.display(r)).collect::<Vec<_>>())?;
    t.set("deriver", i.deriver.as_ref().map(|d| host.display(d)))?;
    t.set("registration_time", i.registration_time)?;
    t.set("ultimate", i.ultimate)?;
    t.set("signatures", i.sigs.iter().cloned().collect::<Vec<_>>())?;
    t.set("ca", i.ca.as_ref().map(|c| c.to_string()))?;
    Ok(t)
}

/// A GC candidate: `path, nar_size, registration_time, deriver, references, in_lower`.
pub fn candidate_table(lua: &Lua, host: &dyn PolicyHost, d: &DeadPath, in_lower: bool) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 6)?;
    t.raw_set("path", host.display(&d.path))?;
    t.raw_set("nar_size", d.nar_size)?;
    t.raw_set("registration_time", d.registration_time)?;
    t.raw_set("deriver", d.deriver.as_ref().map(|p| host.display(p)))?;
    t.raw_set("references", d.references.iter().map(|r| host.display(r)).collect::<Vec<_>>())?;
    t.raw_set("in_lower", in_lower)?;
    Ok(t)
}

/// The store spec as a table with the TOML key names (underscored), lower stores nested.
pub fn spec_table(lua: &Lua, s: &StoreSpec) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let p = |x: &Path| x.display().to_string();
    t.set("type", s.kind.to_string())?;
    t.set("store_dir", p(&s.store_dir))?;
    t.set("root", s.root.as_deref().map(p))?;
    t.set("real", p(&s.real))?;
    t.set("state", p(&s.state))?;
    t.set("upper_layer", s.upper_layer.as_deref().map(p))?;
    t.set("check_mount", s.check_mount)?;
    t.set("read_only", s.read_only)?;
    t.set("remount_hook", s.remount_hook.as_deref().map(p))?;
    t.set("policy", s.policy.as_deref().map(p))?;
    t.set("socket", s.socket.as_deref().map(p))?;
    if let Some(l) = &s.lower_store {
        t.set("lower_store", spec_table(lua, l)?)?;
    }
    if let Some(m) = &s.mount {
        let mt = lua.create_table()?;
        mt.set("workdir", p(&m.workdir))?;
        mt.set("options", m.options.clone())?;
        t.set("mount", mt)?;
    }
    let gc = lua.create_table()?;
    gc.set("keep_derivations", s.gc.keep_derivations)?;
    gc.set("keep_outputs", s.gc.keep_outputs)?;
    t.set("gc", gc)?;
    Ok(t)
}
