-- remount-command.lua: remount through an external command.
--
-- For setups where the overlay is mounted by something else (a systemd mount unit, a
-- container runtime) and must be remounted the same way. The command runs without a
-- shell; its output is logged. Returning false would fall back to the built-in remount.

local COMMAND = { "mount", "-o", "remount" }

local policy = {}

function policy.remount(ctx)
  local argv = {}
  for i, a in ipairs(COMMAND) do argv[i] = a end
  argv[#argv + 1] = ctx.store_dir
  local r = overlay.exec(argv)
  if r.status ~= 0 then
    error(string.format("'%s' failed with status %d: %s", table.concat(argv, " "), r.status, r.stderr))
  end
  log.info("remounted " .. ctx.store_dir .. " (" .. ctx.reason .. ")")
  return true
end

return policy
