---@meta
-- LuaLS definitions for overlay-store policies: put this directory on your editor's
-- `workspace.library` to get completion and type checks. Nothing here runs.

---A path's metadata, as `overlay.path_info` returns it and `copy_up` receives it.
---@class PathInfo
---@field path string full store path, /nix/store/<hash>-<name>
---@field nar_hash string "sha256:<nix32>"
---@field nar_size integer bytes
---@field references string[] store paths, the path itself included if it refers to itself
---@field deriver string|nil the .drv that built it
---@field registration_time integer seconds since the epoch
---@field ultimate boolean built locally
---@field signatures string[]
---@field ca string|nil content address

---A dead upper-database path, as `gc` receives it.
---@class GcCandidate
---@field path string
---@field nar_size integer
---@field registration_time integer
---@field deriver string|nil
---@field references string[]
---@field in_lower boolean its files are in the lower store: deleting it only forgets the row

---@class RemountContext
---@field store_dir string the mount point (the store's real directory)
---@field reason string why: "gc", "delete", "optimise", "repair", "recovery", "config", "pivot"
---@field old table|nil the previous config (watch)
---@field new table|nil the new config (watch)

---@class PivotEntry
---@field path string
---@field live boolean

---@class ExecResult
---@field status integer exit status (-1 if killed by a signal)
---@field stdout string
---@field stderr string

---The hooks a policy file returns; all optional.
---@class Policy
---@field copy_up fun(info: PathInfo, reason: "query"|"reference"): boolean
---@field gc_roots fun(): string[]
---@field gc fun(candidates: GcCandidate[]): string[], table<string, string>|nil
---@field remount fun(ctx: RemountContext): boolean|nil
---@field on_reload fun(old: table, new: table)
---@field pivot fun(plan: PivotEntry[]): table<string, "copy"|"drop">

---The store the policy runs in. Queries are read-only.
---@class overlay
---@field config table the store spec, keys as in the TOML file with underscores
---@field policy_file string
overlay = {}

---Metadata of a valid path (upper database first, then the lower store), or nil.
---@param path string
---@return PathInfo|nil
function overlay.path_info(path) end

---Whether the lower store has the path.
---@param path string
---@return boolean
function overlay.in_lower(path) end

---Whether the upper database registers the path.
---@param path string
---@return boolean
function overlay.in_upper(path) end

---The references of a valid path, or nil.
---@param path string
---@return string[]|nil
function overlay.references(path) end

---The paths referring to it, in either layer.
---@param path string
---@return string[]
function overlay.referrers(path) end

---The sum of NAR sizes over the path's closure.
---@param path string
---@return integer
function overlay.closure_size(path) end

---Remounts the overlay with mount(2) MS_REMOUNT.
---@return boolean
function overlay.remount() end

---Mounts the overlay as the spec's [mount] table says.
---@return boolean
function overlay.mount() end

---Unmounts the overlay.
---@return boolean
function overlay.umount() end

---Runs a program (no shell) and captures its output.
---@param argv string[] program, then its arguments
---@return ExecResult
function overlay.exec(argv) end

---Logging into overlay-store's log, tagged with the policy's file and line.
---@class log
log = {}

---@param ... any
function log.debug(...) end

---@param ... any
function log.info(...) end

---@param ... any
function log.warn(...) end

---@param ... any
function log.error(...) end
