-- JobState: the job record. Section "job".

-- Creation fields: used when the record does not exist yet (``enq_ms`` is stored as ``enq``).
local CREATION = {actor = 'actor', queue = 'queue', maxr = 'maxr', enq_ms = 'enq', args = 'args'}

local function event(rec, status, detail, hist)
  local ev = rec.ev
  if type(ev) ~= 'table' then ev = {}; rec.ev = ev end
  table.insert(ev, {NOW, status, detail or ''})
  local cap = tonumber(hist) or 50
  while #ev > cap do table.remove(ev, 1) end
end

local function fill(rec, s)
  for field, stored in pairs(CREATION) do
    if rec[stored] == nil and s[field] ~= nil then rec[stored] = s[field] end
  end
  if (rec.keys == nil or next(rec.keys) == nil) and type(s.keys) == 'table' and next(s.keys) ~= nil then
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

local function set_status(e, status, detail, s)
  e.rec.status = status
  event(e.rec, status, detail, s.hist)
  touch(e)
end

on('enqueue', 20, 'job',
  {actor = 'string?', queue = 'string?', maxr = 'number?', enq_ms = 'number?', args = 'string?', keys = 'table?',
    hist = 'number?', detail = 'string?', due_ms = 'number?'},
  function(ctx, s)
  local e = load(ctx.op.id)
  if not e.rec then
    e = ensure(ctx.op.id, s, 'queued')
    if s.due_ms then e.rec.due = s.due_ms end
    set_status(e, 'queued', s.detail, s)
  else
    -- The worker started it before this write landed: keep the history whole.
    local ev = e.rec.ev
    if type(ev) == 'table' and (#ev == 0 or ev[1][2] ~= 'queued') then
      table.insert(ev, 1, {s.enq_ms or NOW, 'queued', s.detail or 'enqueued'})
      local cap = tonumber(s.hist) or 50
      while #ev > cap do table.remove(ev, 1) end
    end
    local had_keys = type(e.rec.keys) == 'table' and next(e.rec.keys) ~= nil
    fill(e.rec, s)
    if not had_keys and not e.new and type(e.rec.keys) == 'table' then
      -- The record was created (and indexed) by the start, without the keys this write brings.
      for name, value in pairs(e.rec.keys) do
        redis.call('ZADD', K.key(name, value), e.rec.enq or NOW, ctx.op.id)
      end
    end
    touch(e)
  end
end)

on('start', 20, 'job',
  {actor = 'string?', queue = 'string?', maxr = 'number?', enq_ms = 'number?', args = 'string?', keys = 'table?',
    hist = 'number?', detail = 'string?', att = 'number', worker = 'string?'},
  function(ctx, s)
  local id = ctx.op.id
  local e = ensure(id, s, 'running')
  local rec = e.rec
  local prev = rec.status
  local att = tonumber(s.att) or 1
  local again = (not e.new) and (prev == 'running' or prev == 'stuck' or prev == 'abandoned')
    and (rec.att or 0) >= att
  if prev == 'retrying' and not e.new then
    -- The "due" write of the delay's end may arrive after this start: keep the history whole.
    event(rec, 'queued', 'due: attempt ' .. att, s.hist)
  end
  rec.att = math.max(rec.att or 0, att)
  rec.start = NOW
  rec.worker = s.worker
  rec.next = nil
  rec.fin = nil
  rec.stack = nil
  local detail = 'attempt ' .. rec.att .. ' on ' .. (s.worker or '?')
  if again then detail = 'redelivered: ' .. detail end
  set_status(e, 'running', detail, s)
end)

on('finish', 20, 'job',
  {actor = 'string?', queue = 'string?', maxr = 'number?', enq_ms = 'number?', args = 'string?', keys = 'table?',
    hist = 'number?', detail = 'string?', outcome = 'string', att = 'number?', err = 'table?', dup = 'string?',
    next_ms = 'number?'},
  function(ctx, s)
  local e = ensure(ctx.op.id, s, s.outcome == 'deferred' and 'queued' or 'running')
  local rec = e.rec
  local att = tonumber(s.att)
  if att and (rec.att or 0) > att then
    -- The late result of an older attempt; a newer one has started since. Keep its status.
    event(rec, rec.status, 'late result of attempt ' .. att .. ': ' .. s.outcome, s.hist)
    touch(e)
    return
  end
  local out = s.outcome
  if out == 'deferred' then
    -- Put back without running (its key was busy, or the store was down): the status stays.
    event(rec, rec.status, s.detail, s.hist)
    touch(e)
    return
  end
  if out == 'skipped' and s.dup == ctx.op.id then
    -- A redelivery of a job that already completed: it keeps its status.
    event(rec, 'skipped', s.detail, s.hist)
    touch(e)
    return
  end
  if att then rec.att = math.max(rec.att or 0, att) end
  if s.err then rec.err = s.err end
  rec.stack = nil
  if out == 'done' then
    rec.fin = NOW
    rec.next = nil
  elseif out == 'retrying' then
    rec.next = s.next_ms
    rec.fin = nil
  elseif out == 'failed' then
    rec.fin = NOW
    rec.next = nil
  elseif out == 'skipped' then
    rec.fin = NOW
    if s.dup then rec.dup = s.dup end
  end
  rec.wp = nil  -- the Watchdog's process: only while it runs
  set_status(e, out, s.detail, s)
end)

on('due', 20, 'job', {hist = 'number?', detail = 'string?'}, function(ctx, s)
  local e = load(ctx.op.id)
  if e.rec and e.rec.status == 'retrying' then
    set_status(e, 'queued', s.detail or ('due: attempt ' .. ((e.rec.att or 0) + 1)), s)
  end
end)

-- Drop records whose terminal status is older than their retention, with their index entries.
local function cleanup()
  if type(B.retention_ms) ~= 'table' then return end
  local limit = tonumber(B.limit) or 100
  for status, retention in pairs(B.retention_ms) do
    if limit <= 0 then return end
    local ids = redis.call('ZRANGEBYSCORE', K.status(status), '-inf', NOW - retention,
      'LIMIT', 0, limit)
    for _, id in ipairs(ids) do
      local rec = decode(redis.call('GET', K.job(id)))
      if rec and rec.status ~= status then
        redis.call('ZREM', K.status(status), id)  -- stale entry only
      else
        forget(id, rec)
        redis.call('ZREM', K.status(status), id)
      end
      limit = limit - 1
    end
  end
end
