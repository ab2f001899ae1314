-- dramatiq-reliable: batch transition script (prelude).
--
-- The script is assembled from the files of this folder in name order; see the key layout in
-- ``store/redis.py``. It runs a batch of operations ("ops"), each the transition of one job,
-- in one call, so a worker process flushes the writes of all its threads in one round trip.
--
-- ARGV[1]  key prefix, e.g. "dr:"
-- ARGV[2]  JSON batch: {"now": ms, "ops": [op, ...], "cleanup": {status: retention_ms, ...},
--                       "limit": n, "ttl": {status: ms}}
--          op = {"k": kind, "id": job id, <section>: {...}, ...}
-- returns  JSON array, one result object per op.
--
-- Sections register handlers with ``on(kind, priority, section, fn)``; for each op the
-- handlers of its kind run in priority order, each only when the op carries its section.
-- Handlers share ``ctx`` (ctx.op, ctx.res = the op's result, ctx.outcome).

local P = ARGV[1]
local B = cjson.decode(ARGV[2])
local NOW = tonumber(B.now)
local DAY = 86400000
local TERMINAL = {done = true, failed = true, skipped = true, cancelled = true}

local HANDLERS = {}
local function on(kind, priority, section, fn)
  HANDLERS[kind] = HANDLERS[kind] or {}
  table.insert(HANDLERS[kind], {priority, section, fn})
end

local function jkey(id) return P .. 'job:' .. id end

-- Record cache: each job record is read at most once per batch and written once at the end.
local REC = {}
local ORDER = {}

local function load(id)
  local e = REC[id]
  if e then return e end
  local raw = redis.call('GET', jkey(id))
  e = {id = id, dirty = false, new = false}
  if raw then
    e.rec = cjson.decode(raw)
    e.st0 = e.rec.status
  end
  REC[id] = e
  table.insert(ORDER, id)
  return e
end

local function touch(e) e.dirty = true end

local function index_key_name(name, value) return P .. 'jobs:key:' .. name .. '=' .. value end

local function save_all()
  for _, id in ipairs(ORDER) do
    local e = REC[id]
    if e.dirty and e.rec then
      local rec = e.rec
      local st = rec.status
      local ttl = (B.ttl and B.ttl[st]) or (TERMINAL[st] and 8 * DAY) or 30 * DAY
      redis.call('SET', jkey(id), cjson.encode(rec), 'PX', ttl)
      if e.st0 ~= st then
        if e.st0 then redis.call('ZREM', P .. 'jobs:status:' .. e.st0, id) end
        redis.call('ZADD', P .. 'jobs:status:' .. st, NOW, id)
      end
      if e.new then
        local score = rec.enq or NOW
        redis.call('ZADD', P .. 'jobs:actor:' .. (rec.actor or '?'), score, id)
        if type(rec.keys) == 'table' then
          for name, value in pairs(rec.keys) do
            redis.call('ZADD', index_key_name(name, value), score, id)
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
    redis.call('ZREM', P .. 'jobs:actor:' .. (rec.actor or '?'), id)
    if type(rec.keys) == 'table' then
      for name, value in pairs(rec.keys) do redis.call('ZREM', index_key_name(name, value), id) end
    end
    if rec.status then redis.call('ZREM', P .. 'jobs:status:' .. rec.status, id) end
  end
  redis.call('DEL', jkey(id))
end
