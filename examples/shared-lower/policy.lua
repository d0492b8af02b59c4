-- Per-machine policy for a shared lower store: keep a week of recent builds, never
-- cache shared metadata on queries (the shared disk answers those), and log remounts.
local KEEP_DAYS = 7

local policy = {}

function policy.copy_up(info, reason)
  return reason ~= "query"
end

function policy.gc(candidates)
  local cutoff = os.time() - KEEP_DAYS * 86400
  local delete, why = {}, {}
  for _, c in ipairs(candidates) do
    if c.in_lower or c.registration_time < cutoff then
      delete[#delete + 1] = c.path
    else
      why[c.path] = "built in the last week"
    end
  end
  return delete, why
end

function policy.on_reload(old, new)
  if old.lower_store.real ~= new.lower_store.real then
    log.info("now on shared store " .. new.lower_store.real)
  end
end

return policy
