//! The Lua state a policy runs in: Lua 5.4 with only the pure parts of the standard
//! library, text chunks only, `require` confined to the policy's own directory, an
//! instruction budget per hook call and a memory limit.

use std::cell::{Cell, RefCell};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use mlua::{ChunkMode, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};

/// How often (in VM instructions) the budget is checked. Small enough that a loop whose
/// every turn calls a slow C function (a long `string.find`, `string.rep`) is stopped
/// soon after the clock runs out: such a turn is a few instructions.
const BUDGET_GRANULARITY: u32 = 256;

/// Per-state bookkeeping shared with the instruction hook: instructions and wall-clock
/// time of the current hook call. Instructions alone miss time spent in C functions.
pub struct Budget {
    pub used: Cell<u64>,
    pub limit: Cell<u64>,
    pub started: Cell<std::time::Instant>,
    pub wall: Cell<std::time::Duration>,
}

impl Budget {
    /// Starts a hook call's budget afresh.
    pub fn reset(&self) {
        self.used.set(0);
        self.started.set(std::time::Instant::now());
    }
}

/// Files the policy loaded (the policy and every module it required), for watching.
pub type LoadedFiles = Rc<RefCell<Vec<PathBuf>>>;

/// Builds the sandboxed state. `dir` is the only directory `require` reads from.
pub fn new_state(
    dir: &Path,
    instructions: u64,
    wall: std::time::Duration,
    memory_bytes: usize,
    loaded: LoadedFiles,
) -> mlua::Result<(Lua, Rc<Budget>)> {
    let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE | StdLib::OS;
    let lua = Lua::new_with(libs, LuaOptions::new())?;
    lua.set_memory_limit(memory_bytes)?;
    let budget = Rc::new(Budget {
        used: Cell::new(0),
        limit: Cell::new(instructions),
        started: Cell::new(std::time::Instant::now()),
        wall: Cell::new(wall),
    });
    let b = budget.clone();
    lua.set_hook(HookTriggers::new().every_nth_instruction(BUDGET_GRANULARITY), move |_lua, debug| {
        let used = b.used.get() + BUDGET_GRANULARITY as u64;
        b.used.set(used);
        if used > b.limit.get() {
            let src = debug.source().short_src.map(|s| s.to_string()).unwrap_or_default();
            return Err(mlua::Error::RuntimeError(format!(
                "{src}:{}: instruction budget exceeded ({} instructions; raise [policy-limits] instructions if this is intended)",
                debug.curr_line(),
                b.limit.get()
            )));
        }
        if b.started.get().elapsed() > b.wall.get() {
            let src = debug.source().short_src.map(|s| s.to_string()).unwrap_or_default();
            return Err(mlua::Error::RuntimeError(format!(
                "{src}:{}: time limit exceeded ({} s; raise [policy-limits] wall-clock-secs if this is intended)",
                debug.curr_line(),
                b.wall.get().as_secs_f64()
            )));
        }
        Ok(VmState::Continue)
    });
    let g = lua.globals();
    for name in ["dofile", "loadfile", "collectgarbage", "print"] {
        g.raw_set(name, Value::Nil)?;
    }
    // `os`: only the clock.
    let os: Table = g.get("os")?;
    let safe_os = lua.create_table()?;
    for f in ["time", "clock", "date", "difftime"] {
        safe_os.set(f, os.get::<Value>(f)?)?;
    }
    g.set("os", safe_os)?;
    // No bytecode in, none out.
    let string: Table = g.get("string")?;
    string.raw_set("dump", Value::Nil)?;
    let load = lua.create_function(|lua, (chunk, name): (mlua::String, Option<String>)| {
        let f = lua
            .load(chunk.as_bytes().to_vec())
            .set_mode(ChunkMode::Text)
            .set_name(name.unwrap_or_else(|| "=(load)".into()))
            .into_function();
        match f {
            Ok(f) => Ok((Value::Function(f), Value::Nil)),
            Err(e) => Ok((Value::Nil, Value::String(lua.create_string(e.to_string())?))),
        }
    })?;
    g.set("load", load)?;
    install_require(&lua, dir, loaded)?;
    Ok((lua, budget))
}

/// Resolves `a.b` to `<dir>/a/b.lua`, refusing anything that would leave `dir`.
fn module_path(dir: &Path, name: &str) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') || name.contains("..") {
        return Err(format!("module '{name}' is outside the policy's directory (use dotted names of files next to the policy)"));
    }
    let rel: PathBuf = name.split('.').collect::<PathBuf>().with_extension("lua");
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("module '{name}' is outside the policy's directory"));
    }
    let p = dir.join(rel);
    let real = fs::canonicalize(&p).map_err(|_| format!("module '{name}' not found (looked for '{}')", p.display()))?;
    let real_dir = fs::canonicalize(dir).map_err(|e| e.to_string())?;
    if !real.starts_with(&real_dir) {
        return Err(format!("module '{name}' resolves outside the policy's directory"));
    }
    Ok(real)
}

/// Refuses a policy file or directory that someone other than root or this process's
/// user could change: policies run with the store's privileges (mount, `overlay.exec`),
/// so a policy others can write is a way in. Links are judged by what they point to.
pub fn check_trusted(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).map_err(|e| format!("'{}': {e}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    let what = if meta.is_dir() { "directory" } else { "file" };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "policy {what} '{}' belongs to uid {}, not to root or this user (uid {me}); a policy runs with the store's privileges, so only they may own it",
            path.display(),
            meta.uid()
        ));
    }
    // A sticky directory (a tmpfs root, /tmp) lets nobody replace another's files, and
    // every file a policy loads is checked itself.
    let sticky_dir = meta.is_dir() && meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o022 != 0 && !sticky_dir {
        return Err(format!(
            "policy {what} '{}' is writable by its group or by others (mode {:o}); a policy runs with the store's privileges: `chmod go-w '{}'`",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        ));
    }
    Ok(())
}

fn install_require(lua: &Lua, dir: &Path, loaded: LoadedFiles) -> mlua::Result<()> {
    let cache = lua.create_table()?;
    let dir = dir.to_path_buf();
    let require = lua.create_function(move |lua, name: String| {
        if let Ok(v) = cache.get::<Value>(name.as_str()) {
            if !v.is_nil() {
                return Ok(v);
            }
        }
        let at = lua
            .inspect_stack(1)
            .map(|d| format!("{}:{}: ", d.source().short_src.map(|s| s.to_string()).unwrap_or_default(), d.curr_line()))
            .unwrap_or_default();
        let path = module_path(&dir, &name).map_err(|e| mlua::Error::RuntimeError(format!("{at}{e}")))?;
        let text = fs::read(&path).map_err(|e| mlua::Error::RuntimeError(format!("require '{name}': {e}")))?;
        if let Some(parent) = path.parent() {
            check_trusted(parent).map_err(|e| mlua::Error::RuntimeError(format!("{at}require '{name}': {e}")))?;
        }
        check_trusted(&path).map_err(|e| mlua::Error::RuntimeError(format!("{at}require '{name}': {e}")))?;
        loaded.borrow_mut().push(path.clone());
        let v: Value = lua
            .load(text)
            .set_mode(ChunkMode::Text)
            .set_name(chunk_name(&path))
            .eval()
            .map_err(|e| mlua::Error::RuntimeError(with_full_path(super::lua_message(&e), &path)))?;
        let v = if v.is_nil() { Value::Boolean(true) } else { v };
        cache.set(name.as_str(), v.clone())?;
        Ok(v)
    })?;
    lua.globals().set("require", require)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_S: std::time::Duration = std::time::Duration::from_secs(10);

    fn state(dir: &Path) -> Lua {
        new_state(dir, 10_000_000, TEN_S, 16 << 20, Rc::default()).unwrap().0
    }

    #[test]
    fn policies_others_can_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("p.lua");
        fs::write(&f, "return {}").unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        check_trusted(&f).unwrap();
        check_trusted(t.path()).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(check_trusted(&f).unwrap_err().contains("writable by its group or by others"));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_trusted(t.path()).unwrap_err().contains("policy directory"));
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        check_trusted(t.path()).unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&f, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            assert!(check_trusted(&f).unwrap_err().contains("belongs to uid 65534"));
        }
        // A module that others can write is refused by require.
        fs::write(t.path().join("m.lua"), "return 1").unwrap();
        fs::set_permissions(t.path().join("m.lua"), fs::Permissions::from_mode(0o646)).unwrap();
        let e = state(t.path()).load("return require('m')").eval::<Value>().unwrap_err();
        assert!(e.to_string().contains("writable by its group or by others"), "{e}");
    }

    #[test]
    fn escapes_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let lua = state(t.path());
        for code in [
            "os.execute('true')",
            "io.open('/etc/passwd')",
            "debug.getinfo(1)",
            "dofile('/etc/passwd')",
            "loadfile('/etc/passwd')",
            "require('..evil')",
            "require('/etc/passwd')",
            "package.loadlib('x', 'y')",
        ] {
            assert!(lua.load(code).exec().is_err(), "{code} should fail");
        }
        // Bytecode is refused by load.
        let r: (Value, Value) = lua.load("return load('\\27Lua')").eval().unwrap();
        assert!(r.0.is_nil());
        assert!(lua.load("return string.dump").eval::<Value>().unwrap().is_nil());
    }

    #[test]
    fn budget_stops_a_loop() {
        let t = tempfile::tempdir().unwrap();
        let (lua, budget) = new_state(t.path(), 1_000_000, TEN_S, 16 << 20, Rc::default()).unwrap();
        let e = lua.load("while true do end").exec().unwrap_err();
        assert!(e.to_string().contains("instruction budget exceeded"), "{e}");
        budget.used.set(0);
        lua.load("local x = 0 for i = 1, 1000 do x = x + i end").exec().unwrap();
    }

    /// Slow C calls in a loop run few instructions; the clock stops them.
    #[test]
    fn wall_clock_stops_slow_c_calls_in_a_loop() {
        let t = tempfile::tempdir().unwrap();
        let wall = std::time::Duration::from_millis(300);
        let (lua, budget) = new_state(t.path(), u64::MAX, wall, 64 << 20, Rc::default()).unwrap();
        budget.reset();
        let started = std::time::Instant::now();
        let e = lua.load("local s = string.rep('a', 5000) while true do string.find(s, '.-b') end").exec().unwrap_err();
        assert!(e.to_string().contains("time limit exceeded"), "{e}");
        // A slow call that started before the limit finishes; the next check stops it.
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
    }

    #[test]
    fn memory_is_limited() {
        let t = tempfile::tempdir().unwrap();
        let (lua, _) = new_state(t.path(), u64::MAX, TEN_S, 4 << 20, Rc::default()).unwrap();
        let e = lua.load("local t = {} for i = 1, 1e8 do t[i] = string.rep('x', 100) .. i end").exec().unwrap_err();
        assert!(matches!(e, mlua::Error::MemoryError(_)), "{e}");
    }

    #[test]
    fn require_reads_only_the_policy_dir() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("lib")).unwrap();
        fs::write(t.path().join("lib/util.lua"), "return { answer = 42 }").unwrap();
        let loaded: LoadedFiles = Rc::default();
        let (lua, _) = new_state(t.path(), 1_000_000, TEN_S, 16 << 20, loaded.clone()).unwrap();
        let n: i64 = lua.load("return require('lib.util').answer").eval().unwrap();
        assert_eq!(n, 42);
        assert_eq!(loaded.borrow().len(), 1);
        std::os::unix::fs::symlink("/etc", t.path().join("etc")).unwrap();
        assert!(lua.load("return require('etc.passwd')").exec().is_err());
    }
}

/// Lua cuts a chunk's name to 59 bytes in its messages (`...epdeep/policy.lua:3:`),
/// which hides where a file is; a long path is named by its file name instead, and
/// [`with_full_path`] puts the whole path back into a load error.
pub fn chunk_name(path: &std::path::Path) -> String {
    let shown = path.display().to_string();
    if shown.len() <= 55 {
        format!("@{shown}")
    } else {
        format!("={}", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(shown))
    }
}

/// A message about the chunk [`chunk_name`] named, starting with the whole path.
pub fn with_full_path(message: String, path: &std::path::Path) -> String {
    match chunk_name(path).strip_prefix('=') {
        Some(short) if message.starts_with(&format!("{short}:")) => format!("{}{}", path.display(), &message[short.len()..]),
        _ => message,
    }
}
