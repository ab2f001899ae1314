-- JobState: the job record. Section "job".
--
-- An op replayed after a store outage carries ``op.at_ms``, the time it was made (by its
-- sender's clock: it dates events for people, it decides nothing): its events and times take
-- that time, and its events go in the history where that time puts them.

-- Creation fields: used when the record does not exist yet (``enq_ms`` is stored as ``enq``).
local CREATION = {actor = 'actor', queue = 'queue', maxr = 'maxr', enq_ms = 'enq', args = 'args'}

local function op_time(op) return tonumber(op.at_ms) end

-- Add an event (at ``at`` in time order, else now, last). ``status`` nil: as the job was then.
local function event(rec, status, detail, hist, at)
  local ev = rec.ev
  if type(ev) ~= 'table' then ev = {}; rec.ev = ev end
  local i = #ev + 1
  if at then
    while i > 1 and (tonumber(ev[i - 1][1]) or 0) > at do i = i - 1 end
  end
  if status == nil then
    -- Appended: the status now; else that of the event before (a job starts queued).
    if i > #ev then status = rec.status elseif i > 1 then status = ev[i - 1][2] else status = 'queued' end
  end
  table.insert(ev, i, {at or NOW, status, detail or ''})
  local cap = tonumber(hist) or 50
  while #ev > cap do table.remove(ev, 1) end
end

local function fill(rec, s)
  for field, stored in pairs(CREATION) do
    if rec[stored] == nil and s[field] ~= nil then rec[stored] = s[field] end
  end
  if (rec.keys == nil or next(rec.keys) == nil) and type(s.keys) == 'table' and next(s.keys) ~= nil then
    for name, value in pairs(s.keys) do
      if type(name) ~= 'string' or type(value) ~= 'string' then
        error('keys: ' .. tostring(name) .. ' must map to a string, not a ' .. type(value), 0)
      end
    end
    rec.keys = s.keys
  end
end

-- Load the record of op.id, creating it (in ``status``) from the section's fields if missing.
local function ensure(id, s, status)
  local e = load(id)
  if not e.rec then
    e.rec = {status = status, att = 0, ev = {}}
    e.new = true
    fill(e.rec, s)
  end
  return e
end

local function set_status(e, status, detail, s, at)
  e.rec.status = status
  event(e.rec, status, detail, s.hist, at)
  touch(e)
end

-- A delivery begins (``s``: att, worker): ``running``, "redelivered" if it was running already.
local function begin(e, s, hist, at)
  local rec = e.rec
  local prev = rec.status
  local att = tonumber(s.att) or 1
  local again = (not e.new) and (prev == 'running' or prev == 'stuck' or prev == 'abandoned')
    and (rec.att or 0) >= att
  if prev == 'retrying' and not e.new then
    -- The "due" write of the delay's end may arrive after this start: keep the history whole.
    event(rec, 'queued', 'due: attempt ' .. att, hist, at)
  end
  rec.att = math.max(rec.att or 0, att)
  rec.start = at or NOW
  rec.worker = s.worker
  rec.next = nil
  rec.fin = nil
  rec.stack = nil
  local detail = 'attempt ' .. rec.att .. ' on ' .. (s.worker or '?')
  if again then detail = 'redelivered: ' .. detail end
  set_status(e, 'running', detail, {hist = hist}, at)
end

on('enqueue', 20, 'job',
  {actor = 'string?', queue = 'string?', maxr = 'number?', enq_ms = 'number?', args = 'string?', keys = 'table?',
    hist = 'number?', detail = 'string?', due_ms = 'number?'},
  function(ctx, s)
  local e = load(ctx.op.id)
  if not e.rec then
    e = ensure(ctx.op.id, s, 'queued')
    if s.due_ms then e.rec.due = s.due_ms end
    set_status(e, 'queued', s.detail, s, op_time(ctx.op))
  else
    -- A worker started or put it back before this write landed: keep the history whole.
    local ev = e.rec.ev
    local first = type(ev) == 'table' and ev[1] or nil
    if type(ev) == 'table'
      and not (first and first[2] == 'queued' and string.sub(first[3] or '', 1, 8) == 'enqueued') then
      table.insert(ev, 1, {s.enq_ms or NOW, 'queued', s.detail or 'enqueued'})
      local cap = tonumber(s.hist) or 50
      while #ev > cap do table.remove(ev, 1) end
    end
    local had_keys = type(e.rec.keys) == 'table' and next(e.rec.keys) ~= nil
    fill(e.rec, s)
    if not had_keys and not e.new and type(e.rec.keys) == 'table' then
      -- The record was created (and indexed) by the start, without the keys this write brings.
      for name, value in pairs(e.rec.keys) do
        W('ZADD', K.key(name, value), e.rec.enq or NOW, ctx.op.id)
      end
    end
    touch(e)
  end
end)

on('start', 20, 'job',
  {actor = 'string?', queue = 'string?', maxr = 'number?', enq_ms = 'number?', args = 'string?', keys = 'table?',
    hist = 'number?', detail = 'string?', att = 'number', worker = 'string?'},
  function(ctx, s)
  begin(ensure(ctx.op.id, s, 'running'), s, s.hist, op_time(ctx.op))
end)

-- ``began`` (att, worker, at_ms): the start of this attempt, carried by its end when both were
-- buffered during a store outage.
on('finish', 20, 'job',
  {actor = 'string?', queue = 'string?', maxr = 'number?', enq_ms = 'number?', args = 'string?', keys = 'table?',
    hist = 'number?', detail = 'string?', outcome = 'string', att = 'number?', err = 'table?', dup = 'string?',
    next_ms = 'number?', began = 'table?'},
  function(ctx, s)
  local at = op_time(ctx.op)
  local e = ensure(ctx.op.id, s, s.outcome == 'deferred' and 'queued' or 'running')
  local rec = e.rec
  local att = tonumber(s.att)
  if att and (rec.att or 0) > att then
    -- The late result of an older attempt; a newer one has started since. Keep its status.
    event(rec, rec.status, 'late result of attempt ' .. att .. ': ' .. s.outcome, s.hist, at)
    touch(e)
    return
  end
  local out = s.outcome
  if out == 'deferred' then
    -- Put back without running (its key was busy, or the store was down): the status stays.
    event(rec, nil, s.detail, s.hist, at)
    touch(e)
    return
  end
  if type(s.began) == 'table' then begin(e, s.began, s.hist, tonumber(s.began.at_ms) or at) end
  if out == 'skipped' and s.dup == ctx.op.id then
    -- A redelivery of a job that already completed: it keeps its status.
    event(rec, 'skipped', s.detail, s.hist, at)
    touch(e)
    return
  end
  if att then rec.att = math.max(rec.att or 0, att) end
  if s.err then rec.err = s.err end
  rec.stack = nil
  rec.wp = nil  -- the Watchdog's process: only while it runs
  if out == 'done' then
    rec.fin = at or NOW
    rec.next = nil
  elseif out == 'retrying' then
    rec.next = s.next_ms
    rec.fin = nil
  elseif out == 'failed' then
    rec.fin = at or NOW
    rec.next = nil
  elseif out == 'skipped' then
    rec.fin = at or NOW
    if s.dup then rec.dup = s.dup end
  end
  set_status(e, out, s.detail, s, at)
end)

on('due', 20, 'job', {hist = 'number?', detail = 'string?'}, function(ctx, s)
  local e = load(ctx.op.id)
  if e.rec and e.rec.status == 'retrying' then
    set_status(e, 'queued', s.detail or ('due: attempt ' .. ((e.rec.att or 0) + 1)), s, op_time(ctx.op))
  end
end)

-- Drop records whose terminal status is older than their retention, with their index entries:
-- in the indexes this call added to (so the cleanup keeps pace with what ends), and in every
-- index once per GC_EVERY ms in the fleet (indexes nothing writes to any more); at most
-- ``limit`` records per call.
local GC_EVERY = 1000

local function clean_index(status, actor, retention, limit)
  local k = K.jobs(status, actor)
  local ids = redis.call('ZRANGEBYSCORE', k, '-inf', NOW - retention, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local rec = decode(redis.call('GET', K.job(id)))
    if rec and (rec.status ~= status or (rec.actor or '?') ~= actor) then
      redis.call('ZREM', k, id)  -- stale entry only
    else
      forget(id, rec, status, actor)
    end
  end
  return #ids
end

local STATUSES = {'queued', 'running', 'retrying', 'done', 'failed', 'skipped', 'cancelled', 'stuck', 'abandoned'}

-- Library v2 indexed a job in ``jobs:status:<status>`` and ``jobs:actor:<actor>``: each gc pass
-- moves up to ``limit`` of those entries into the (status, actor) indexes, so the records kept
-- from before an upgrade stay listed (and are cleaned up in time).
local function migrate_v2(limit)
  local olds = {}
  for i, status in ipairs(STATUSES) do olds[i] = K.v2_status(status) end
  if redis.call('EXISTS', unpack(olds)) == 0 then return limit end
  for i, status in ipairs(STATUSES) do
    if limit <= 0 then return limit end
    local items = redis.call('ZRANGE', olds[i], 0, limit - 1, 'WITHSCORES')
    for j = 1, #items, 2 do
      local id = items[j]
      local rec = decode(redis.call('GET', K.job(id)))
      redis.call('ZREM', olds[i], id)
      if rec and rec.status == status then
        local actor = rec.actor or '?'
        redis.call('ZADD', K.jobs(status, actor), 'NX', items[j + 1], id)
        redis.call('ZREM', K.v2_actor(actor), id)
        redis.call('SADD', K.actors(), actor)
      end
      limit = limit - 1
    end
  end
  if redis.call('EXISTS', unpack(olds)) == 0 then
    -- All moved: what the actor indexes still hold are records that expired.
    for _, actor in ipairs(redis.call('SMEMBERS', K.actors())) do redis.call('DEL', K.v2_actor(actor)) end
  end
  return limit
end

local function cleanup()
  if type(B.retention_ms) ~= 'table' then return end
  local limit = tonumber(B.limit) or 100
  for _, w in pairs(WRITTEN) do
    local retention = tonumber(B.retention_ms[w[1]])
    if retention and limit > 0 then limit = limit - clean_index(w[1], w[2], retention, limit) end
  end
  if limit <= 0 then return end
  local last = tonumber(redis.call('GET', K.gc())) or 0
  if last <= NOW and NOW - last < GC_EVERY then return end  -- (a clock set back runs it now)
  redis.call('SET', K.gc(), NOW)
  limit = migrate_v2(limit)
  for _, actor in ipairs(redis.call('SMEMBERS', K.actors())) do
    for status, retention in pairs(B.retention_ms) do
      if limit > 0 and tonumber(retention) then limit = limit - clean_index(status, actor, tonumber(retention), limit) end
    end
    local names = {}
    for i, status in ipairs(STATUSES) do names[i] = K.jobs(status, actor) end
    if redis.call('EXISTS', unpack(names)) == 0 then redis.call('SREM', K.actors(), actor) end
  end
end
