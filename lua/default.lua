-- default.lua: Nix's own behaviour, written out as a policy.
--
-- A policy file returns a table of hooks; every hook is optional and a missing one means
-- "do what Nix does". This file defines each hook to do exactly that, so it is the
-- reference to copy from when writing your own. The engine stays the guard whatever a
-- hook answers: live paths are never deleted, closures never left incomplete, and a hook
-- that errors or runs past its budget falls back to the behaviour below.
--
-- Editors: `lua/overlay.d.lua` describes the `overlay` and `log` APIs for completion.

local policy = {}

-- copy_up(info, reason) -> boolean
-- Called before the metadata of a lower path is copied into the upper database for an
-- optional reason. Today that reason is "query": a validity check found the path in the
-- lower store, and Nix caches its closure upper so later queries stay in one database.
-- Copies a new path's references need ("reference") always happen and are not asked.
-- `info` has: path, nar_hash, nar_size, references, deriver, registration_time,
-- ultimate, signatures, ca.
function policy.copy_up(info, reason)
  return true
end

-- gc_roots() -> { store path, ... }
-- Extra roots beside gcroots/, profiles/ and temporary roots. Nix has none.
function policy.gc_roots()
  return {}
end

-- gc(candidates) -> { store path to delete, ... } [, { [path] = reason for keeping }]
-- `candidates` lists every dead path in the upper database, each with: path, nar_size,
-- registration_time, deriver, references, in_lower (true when its files are in the lower
-- store, so deleting it only forgets the copied-up row). Return the subset to delete;
-- whatever you keep, the engine also keeps what it references. Nix deletes them all.
function policy.gc(candidates)
  local delete = {}
  for _, c in ipairs(candidates) do
    delete[#delete + 1] = c.path
  end
  return delete
end

-- remount(ctx) is not defined here: with no remount hook the engine runs the spec's
-- `remount-hook` if it has one (argv[1] = ctx.store_dir, as in Nix), else remounts with
-- mount(2). Define it to remount your own way; return false to fall back to the default.

return policy
