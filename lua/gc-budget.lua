-- gc-budget.lua: GC frees at most BUDGET_BYTES, oldest dead paths first.
--
-- Keeps GC pauses short and predictable on shared machines: each run deletes the oldest
-- dead paths (by registration time) until about BUDGET_BYTES of NAR size is gone, and
-- leaves the rest for the next run. Copied-up lower rows free no upper bytes, so they are
-- always deleted.

local BUDGET_BYTES = 512 * 1024 * 1024

local policy = {}

function policy.gc(candidates)
  table.sort(candidates, function(a, b)
    if a.registration_time ~= b.registration_time then
      return a.registration_time < b.registration_time
    end
    return a.path < b.path
  end)
  local delete, why, freed = {}, {}, 0
  for _, c in ipairs(candidates) do
    if c.in_lower then
      delete[#delete + 1] = c.path
    elseif freed < BUDGET_BYTES then
      delete[#delete + 1] = c.path
      freed = freed + c.nar_size
    else
      why[c.path] = "over this run's budget of " .. BUDGET_BYTES .. " bytes"
    end
  end
  return delete, why
end

return policy
