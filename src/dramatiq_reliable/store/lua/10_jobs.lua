-- JobState: the job record. Section "job".
--
-- An op replayed after a store outage carries ``op.at``, the time (ms) it was made: its events
-- and times take that time, and its events go in the history where that time puts them.

local CREATION = {'actor', 'queue', 'maxr', 'enq', 'args'}

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
  for _, f in ipairs(CREATION) do
    if rec[f] == nil and s[f] ~= nil then rec[f] = s[f] end
  end
  if (rec.keys == nil or next(rec.keys) == nil) and type(s.keys) == 'table' and next(s.keys) ~= nil then
    rec.keys = s.keys
  end
end

-- Load the record of op.id, creating it (in ``status``) from the section's fields if missing.
local function ensure(id, s, status)
  local e = load(id)
  if not e.rec then
    e.rec = {status = status, att = 0, keys = {}, ev = {}}
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

on('enqueue', 20, 'job', function(ctx, s)
  local e = load(ctx.op.id)
  if not e.rec then
    e = ensure(ctx.op.id, s, 'queued')
    if s.due then e.rec.due = s.due end
    set_status(e, 'queued', s.detail, s, tonumber(ctx.op.at))
  else
    -- A worker started or put it back before this write landed: keep the history whole.
    local ev = e.rec.ev
    local first = type(ev) == 'table' and ev[1] or nil
    if type(ev) == 'table' and not (first and first[2] == 'queued' and string.sub(first[3] or '', 1, 8) == 'enqueued') then
      table.insert(ev, 1, {s.enq or NOW, 'queued', s.detail or 'enqueued'})
      local cap = tonumber(s.hist) or 50
      while #ev > cap do table.remove(ev, 1) end
    end
    local had_keys = type(e.rec.keys) == 'table' and next(e.rec.keys) ~= nil
    fill(e.rec, s)
    if not had_keys and not e.new and type(e.rec.keys) == 'table' then
      -- The record was created (and indexed) by the start, without the keys this write brings.
      for name, value in pairs(e.rec.keys) do
        redis.call('ZADD', index_key_name(name, value), e.rec.enq or NOW, ctx.op.id)
      end
    end
    touch(e)
  end
end)

on('start', 20, 'job', function(ctx, s)
  begin(ensure(ctx.op.id, s, 'running'), s, s.hist, tonumber(ctx.op.at))
end)

-- ``began`` (att, worker, at): the start of this attempt, carried by its end when both were
-- buffered during a store outage.
on('finish', 20, 'job', function(ctx, s)
  local at = tonumber(ctx.op.at)
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
  if type(s.began) == 'table' then begin(e, s.began, s.hist, tonumber(s.began.at) or at) end
  if out == 'skipped' and s.dup == ctx.op.id then
    -- A redelivery of a job that already completed: it keeps its status.
    event(rec, 'skipped', s.detail, s.hist, at)
    touch(e)
    return
  end
  if att then rec.att = math.max(rec.att or 0, att) end
  if s.err then rec.err = s.err end
  rec.stack = nil
  if out == 'done' then
    rec.fin = at or NOW
    rec.next = nil
  elseif out == 'retrying' then
    rec.next = s.next
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

on('due', 20, 'job', function(ctx, s)
  local e = load(ctx.op.id)
  if e.rec and e.rec.status == 'retrying' then
    set_status(e, 'queued', s.detail or ('due: attempt ' .. ((e.rec.att or 0) + 1)), s, tonumber(ctx.op.at))
  end
end)

-- Drop records whose terminal status is older than their retention, with their index entries.
local function cleanup()
  if type(B.cleanup) ~= 'table' then return end
  local limit = tonumber(B.limit) or 100
  for status, retention in pairs(B.cleanup) do
    if limit <= 0 then return end
    local ids = redis.call('ZRANGEBYSCORE', P .. 'jobs:status:' .. status, '-inf', NOW - retention,
      'LIMIT', 0, limit)
    for _, id in ipairs(ids) do
      local raw = redis.call('GET', jkey(id))
      local rec = raw and cjson.decode(raw) or nil
      if rec and rec.status ~= status then
        redis.call('ZREM', P .. 'jobs:status:' .. status, id)  -- stale entry only
      else
        forget(id, rec)
        redis.call('ZREM', P .. 'jobs:status:' .. status, id)
      end
      limit = limit - 1
    end
  end
end
