-- lazy-copy-up.lua: never cache lower metadata on queries.
--
-- Nix copies the closure of every lower path a validity check touches into the upper
-- database. With a large, read-mostly lower store that grows the upper database for
-- nothing; this policy declines those optional copies. Copies that a new path's
-- references need still happen (the engine does not ask), so the upper database stays
-- closure-complete.

local policy = {}

function policy.copy_up(info, reason)
  if reason == "query" then
    log.debug("not caching " .. info.path)
    return false
  end
  return true
end

return policy
