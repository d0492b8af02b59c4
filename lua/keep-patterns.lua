-- keep-patterns.lua: GC keeps dead paths whose names match Lua patterns.
--
-- For toolchains and caches you want to keep around without rooting them. The name is
-- the part of the store path after the hash: "/nix/store/<hash>-<name>".

local KEEP = {
  "^rustc%-",       -- compilers
  "^gcc%-",
  "%-source$",      -- fetched sources
}

local policy = {}

local function name_of(path)
  return (path:match("^.*/[0-9a-z]+%-(.*)$"))
end

function policy.gc(candidates)
  local delete, why = {}, {}
  for _, c in ipairs(candidates) do
    local name = name_of(c.path) or ""
    local matched = nil
    for _, pattern in ipairs(KEEP) do
      if name:find(pattern) then
        matched = pattern
        break
      end
    end
    if matched then
      why[c.path] = "name matches " .. matched
    else
      delete[#delete + 1] = c.path
    end
  end
  return delete, why
end

return policy
