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
-- order, and their writes wait in the op's write queue (``W``): they are applied once every
-- handler of the op returned. A handler that raises (a stored value of an unexpected shape, a
-- key of the wrong type) discards the queue and the op's changes to the records it loaded, and
-- the result names its section: nothing of the op was applied. The few periodic kinds whose
-- handlers read back what they wrote (``DIRECT``: the heartbeat's sweep, alerts due, cron's
-- sweep) write at once and keep a ``DUMP`` of each key before its first write, restored if a
-- later step raises. A server error while the queue is applied (out of memory) aborts the call.

local P, B, NOW
local DAY = 86400000
local TERMINAL = {done = true, failed = true, skipped = true, cancelled = true}

-- Per-call state is reset by the functions in RESET at the start of every call.
local RESET = {}
-- Housekeeping run by the fleet's sweep (the Watchdog's heartbeat that wins the sweep lock).
local SWEEPS = {}
-- Run after the ops of every call, in order: the record saves, counters, cleanups.
local FLUSH = {}
-- Kinds whose handlers write at once, each key's prior value kept for a rollback (see above).
local DIRECT = {beat = true, bye = true, alerts_due = true, cron_sweep = true}

-- Every key the library touches is built here (a later cluster layout changes only this table).
local K = {}
function K.job(id) return P .. 'job:' .. id end
-- A job is in one index of its (status, actor); listings by status merge the indexes of every
-- actor in ``jobs:actors``, listings by actor those of every status.
function K.jobs(status, actor) return P .. 'jobs:s:' .. status .. ':' .. actor end
function K.actors() return P .. 'jobs:actors' end
function K.gc() return P .. 'jobs:gc' end
-- Library v2's indexes, read only to move their entries (see ``migrate_v2`` in 10_jobs.lua).
function K.v2_status(status) return P .. 'jobs:status:' .. status end
function K.v2_actor(actor) return P .. 'jobs:actor:' .. actor end
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

-- The op being applied (see ``run_op`` in 99_main.lua): its write queue, the records it loaded
-- as they were before it, its undo log (DIRECT kinds), what to do once it succeeded. nil
-- between ops, where writes (the end-of-call saves and housekeeping) go straight to Redis.
local OP

-- A write of one key (its first argument): queued in the op, or done now.
local function W(...)
  local op = OP
  if not op then return redis.call(...) end
  if not op.direct then
    local queue = op.queue
    if not queue then queue = {}; op.queue = queue end
    queue[#queue + 1] = {n = select('#', ...), ...}
    return nil
  end
  local key = select(2, ...)
  if not op.snap[key] then
    op.snap[key] = true
    local dump = redis.call('DUMP', key)
    if dump then
      op.undo[#op.undo + 1] = {key, dump, math.max(redis.call('PTTL', key), 0)}
    else
      op.undo[#op.undo + 1] = {key}
    end
  end
  return redis.call(...)
end

-- ``SET key value NX PX ms`` at once (its answer decides what the op does next): true if it
-- was set; a rollback deletes it again.
local function W_setnx(key, value, px)
  if not redis.call('SET', key, value, 'NX', 'PX', px) then return false end
  if OP then
    OP.undo = OP.undo or {}
    OP.undo[#OP.undo + 1] = {key}
  end
  return true
end

-- Run ``fn`` once the op succeeded (merges of per-call totals, flags for the end of the call).
local function on_commit(fn)
  if not OP then return fn() end
  local commit = OP.commit
  if not commit then commit = {}; OP.commit = commit end
  commit[#commit + 1] = fn
end

-- The stored form of a job record is compact: its times ``start``, ``fin`` and those of its
-- events (``e``, [ms, status, detail]) count from ``enq`` (from 0 when it has none), and
-- ``worker`` is left out when the latest start's event ("attempt N on <worker>") names it.
-- Handlers see the full form (``ev``, times since the epoch, ``worker``). A record stored with
-- ``ev`` (library v2) holds times since the epoch; it is stored compact at its next write.

-- The worker named by the latest start's event, if any.
local function begun_worker(ev)
  for i = #ev, 1, -1 do
    local x = ev[i]
    if type(x) == 'table' and x[2] == 'running' and type(x[3]) == 'string' then
      local w = string.match(x[3], '^attempt %d+ on (.+)$') or string.match(x[3], '^redelivered: attempt %d+ on (.+)$')
      if w then
        if w == '?' then return nil end
        return w
      end
    end
  end
  return nil
end

local function unstored(rec)
  if type(rec) == 'table' and type(rec.e) == 'table' then
    local base = tonumber(rec.enq) or 0
    for _, x in ipairs(rec.e) do
      if type(x) == 'table' and type(x[1]) == 'number' then x[1] = x[1] + base end
    end
    rec.ev, rec.e = rec.e, nil
    if type(rec.start) == 'number' then rec.start = rec.start + base end
    if type(rec.fin) == 'number' then rec.fin = rec.fin + base end
    if rec.worker == nil then rec.worker = begun_worker(rec.ev) end
  end
  return rec
end

-- The record's stored JSON (converted in place for the encoding, then back).
local function stored(rec)
  local base = tonumber(rec.enq) or 0
  local ev = type(rec.ev) == 'table' and rec.ev or {}
  local start, fin, worker = rec.start, rec.fin, rec.worker
  local shift = base ~= 0 and ev or {}
  for _, x in ipairs(shift) do
    if type(x) == 'table' and type(x[1]) == 'number' then x[1] = x[1] - base end
  end
  rec.ev, rec.e = nil, ev
  if type(start) == 'number' then rec.start = start - base end
  if type(fin) == 'number' then rec.fin = fin - base end
  if worker ~= nil and worker == begun_worker(ev) then rec.worker = nil end
  local ok, json = pcall(cjson.encode, rec)
  for _, x in ipairs(shift) do
    if type(x) == 'table' and type(x[1]) == 'number' then x[1] = x[1] + base end
  end
  rec.ev, rec.e, rec.start, rec.fin, rec.worker = ev, nil, start, fin, worker
  if ok then return json end
  return nil
end

-- Record cache: each job record is read at most once per call and written once at the end.
local REC, ORDER
RESET[#RESET + 1] = function() REC = {}; ORDER = {} end

local function load(id)
  local e = REC[id]
  if e then
    if OP then
      local recs = OP.recs
      if not recs then recs = {}; OP.recs = recs end
      if recs[id] == nil then
        -- Loaded by an earlier op of this call: for a rollback, what it was if that op changed
        -- it (else it is read again). Handlers replace a record's fields, never change a value
        -- in place, the history aside: a copy one level deep (two for ``ev``) is enough.
        if e.dirty and e.rec then
          local rec = {}
          for k, v in pairs(e.rec) do rec[k] = v end
          if type(rec.ev) == 'table' then
            local ev = {}
            for i, x in ipairs(rec.ev) do ev[i] = x end
            rec.ev = ev
          end
          recs[id] = {rec = rec, new = e.new}
        else
          recs[id] = false
        end
      end
    end
    return e
  end
  local raw = redis.call('GET', K.job(id))
  e = {id = id, dirty = false, new = false}
  local rec = unstored(decode(raw))
  if rec and type(rec.status) == 'string' then
    e.rec = rec
    e.st0 = rec.status
    e.a0 = rec.actor or '?'
  end
  REC[id] = e
  table.insert(ORDER, id)
  if OP then
    -- A rollback forgets it (the next load reads it again).
    OP.recs = OP.recs or {}
    OP.recs[id] = false
  end
  return e
end

-- Undo what the failed op did to the records it loaded.
local function restore_records(recs)
  for id, snap in pairs(recs or {}) do
    if snap == false then
      REC[id] = nil
    else
      local e = REC[id]
      e.rec, e.dirty, e.new = snap.rec, true, snap.new
    end
  end
end

local function touch(e) e.dirty = true end

-- Indexes written by this call (terminal ones are checked for records past their retention).
local WRITTEN, ACTORS_SEEN
RESET[#RESET + 1] = function() WRITTEN = {}; ACTORS_SEEN = {} end

local function save_all()
  local ttls = type(B.ttl_ms) == 'table' and B.ttl_ms or {}
  for _, id in ipairs(ORDER) do
    local e = REC[id]
    if e and e.dirty and e.rec then
      local rec = e.rec
      local st = rec.status
      local actor = rec.actor or '?'
      local json = stored(rec)
      if json then
        local ttl = tonumber(ttls[st]) or (TERMINAL[st] and 8 * DAY) or 30 * DAY
        redis.call('SET', K.job(id), json, 'PX', ttl)
        if e.st0 ~= st or e.a0 ~= actor then
          if e.st0 then redis.call('ZREM', K.jobs(e.st0, e.a0), id) end
          redis.call('ZADD', K.jobs(st, actor), NOW, id)
          WRITTEN[st .. '\t' .. actor] = {st, actor}
          -- An actor with a record in an index stays in jobs:actors (the cleanup drops only
          -- actors without any): only a record new to the indexes, or to the actor, adds it.
          if (not e.st0 or e.a0 ~= actor) and not ACTORS_SEEN[actor] then
            ACTORS_SEEN[actor] = true
            redis.call('SADD', K.actors(), actor)
          end
        end
        if e.new and type(rec.keys) == 'table' then
          local score = rec.enq or NOW
          for name, value in pairs(rec.keys) do
            redis.call('ZADD', K.key(name, value), score, id)
          end
        end
        e.st0 = st
        e.a0 = actor
      end
      e.new = false
      e.dirty = false
    end
  end
end

-- Remove a record and every index entry that points to it (at the end of a call).
local function forget(id, rec, status, actor)
  if rec and type(rec.keys) == 'table' then
    for name, value in pairs(rec.keys) do redis.call('ZREM', K.key(name, value), id) end
  end
  redis.call('ZREM', K.jobs(status, actor), id)
  redis.call('DEL', K.job(id))
end
