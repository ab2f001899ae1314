-- dramatiq-reliable: the store's library (Redis Functions).
--
-- The files of this folder, in name order, are one library, loaded once with FUNCTION LOAD
-- (``store/_library.py`` prepends the ``#!lua name=...`` line and the version). Its handlers are
-- defined when it loads; a call only runs them. Functions (``<lib>`` is the library's name,
-- e.g. ``dramatiq_reliable_v2``):
--
--   <lib>_apply   ARGV[1] key prefix ("dr:"), ARGV[2] JSON batch (below) -> JSON results
--   <lib>_kinds   -> JSON {kind: {section: {priority, fields}}}: the op schema it registered
--   <lib>_source  -> the digest of the library's source (to tell two builds of one version apart)
--
-- A batch: {"ops": [op, ...], "retention_ms": {status: ms}, "limit": n, "ttl_ms": {status: ms},
--           "now_ms": ms (tests and tools that drive time only; the bundle never sends it)}
--   op = {"k": kind, "id": job id, <section>: {...}, ...}; see ``store/ops.py``.
-- Returns a JSON array, one result object per op.
--
-- Time: NOW is the store's clock (TIME), so leases, liveness and retention never depend on the
-- clock of the worker that sent the batch.
--
-- An op is atomic: every section of it is checked against the schema of its handler first
-- (fields, their types, no unknown field); if one is refused, nothing of the op is applied and
-- the result says {"error": why, "section": name}. Only then do its handlers run, in priority
-- order; given checked input they do not fail (a server error, such as out of memory, aborts
-- the whole call, and Redis applies nothing more).

local P, B, NOW
local DAY = 86400000
local TERMINAL = {done = true, failed = true, skipped = true, cancelled = true}

-- Per-call state is reset by the functions in RESET at the start of every call.
local RESET = {}
-- Housekeeping run by the fleet's sweep (the Watchdog's heartbeat that wins the sweep lock).
local SWEEPS = {}

-- Every key the library touches is built here (a later cluster layout changes only this table).
local K = {}
function K.job(id) return P .. 'job:' .. id end
function K.status(status) return P .. 'jobs:status:' .. status end
function K.actor(actor) return P .. 'jobs:actor:' .. actor end
function K.key(name, value) return P .. 'jobs:key:' .. name .. '=' .. value end
function K.idem(kind, key) return P .. 'idem:' .. kind .. ':' .. key end
function K.wd(name) return P .. 'wd:' .. name end
function K.wd_run(proc) return P .. 'wd:run:' .. proc end
function K.dead(id) return P .. 'dead:' .. id end
function K.deads(name) return P .. 'deads:' .. name end
function K.deads_of(kind, name) return P .. 'deads:' .. kind .. ':' .. name end
function K.alert(name) return P .. 'alert:' .. name end
function K.alerts(name) return P .. 'alerts:' .. name end
function K.cron(kind, name) return P .. 'cron:' .. kind .. ':' .. name end
function K.stats_minute(minute) return P .. 'stats:m:' .. minute end
function K.ctl(name) return P .. 'ctl:' .. name end

-- Handlers, and the schema of each (kind, section): {field = type}, type one of
-- 'string' 'number' 'table' 'boolean' 'any', with a trailing '?' when the field is optional.
-- A second handler of a (kind, section) passes nil fields: it reads the section the first declares.
-- While a library loads, Redis gives it no standard library (no table, pairs, string), so
-- ``on`` only lists the handlers; the first call indexes them (see ``index`` in 99_main.lua).
local REGISTERED = {}
local function on(kind, priority, section, fields, fn)
  REGISTERED[#REGISTERED + 1] = {kind = kind, priority = priority, section = section, fields = fields, fn = fn}
end

-- Decode stored JSON; nil when it is not JSON (a corrupt value is treated as missing).
local function decode(raw)
  if not raw then return nil end
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' then return value end
  return nil
end

-- Record cache: each job record is read at most once per call and written once at the end.
local REC, ORDER
RESET[#RESET + 1] = function() REC = {}; ORDER = {} end

local function load(id)
  local e = REC[id]
  if e then return e end
  local raw = redis.call('GET', K.job(id))
  e = {id = id, dirty = false, new = false}
  local rec = decode(raw)
  if rec and type(rec.status) == 'string' then
    e.rec = rec
    e.st0 = rec.status
  end
  REC[id] = e
  table.insert(ORDER, id)
  return e
end

local function touch(e) e.dirty = true end

local function save_all()
  local ttls = type(B.ttl_ms) == 'table' and B.ttl_ms or {}
  for _, id in ipairs(ORDER) do
    local e = REC[id]
    if e.dirty and e.rec then
      local rec = e.rec
      local st = rec.status
      local ttl = tonumber(ttls[st]) or (TERMINAL[st] and 8 * DAY) or 30 * DAY
      redis.call('SET', K.job(id), cjson.encode(rec), 'PX', ttl)
      if e.st0 ~= st then
        if e.st0 then redis.call('ZREM', K.status(e.st0), id) end
        redis.call('ZADD', K.status(st), NOW, id)
      end
      if e.new then
        local score = rec.enq or NOW
        redis.call('ZADD', K.actor(rec.actor or '?'), score, id)
        if type(rec.keys) == 'table' then
          for name, value in pairs(rec.keys) do
            redis.call('ZADD', K.key(name, value), score, id)
          end
        end
      end
      e.st0 = st
      e.new = false
      e.dirty = false
    end
  end
end

-- Remove a record and every index entry that points to it.
local function forget(id, rec)
  if rec then
    redis.call('ZREM', K.actor(rec.actor or '?'), id)
    if type(rec.keys) == 'table' then
      for name, value in pairs(rec.keys) do redis.call('ZREM', K.key(name, value), id) end
    end
    if rec.status then redis.call('ZREM', K.status(rec.status), id) end
  end
  redis.call('DEL', K.job(id))
end
