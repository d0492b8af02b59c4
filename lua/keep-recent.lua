-- keep-recent.lua: GC keeps dead paths registered in the last N days.
--
-- Useful on developer machines: yesterday's build outputs survive a nightly GC even if
-- nothing roots them. Older dead paths are deleted as usual.

local KEEP_DAYS = 7

local policy = {}

function policy.gc(candidates)
  local cutoff = os.time() - KEEP_DAYS * 24 * 3600
  local delete, why = {}, {}
  for _, c in ipairs(candidates) do
    if c.registration_time >= cutoff then
      why[c.path] = string.format("registered less than %d days ago", KEEP_DAYS)
    else
      delete[#delete + 1] = c.path
    end
  end
  log.info(string.format("keep-recent: deleting %d of %d dead paths", #delete, #candidates))
  return delete, why
end

return policy
