-- DeadLetters: the store's copy of dead-lettered messages, and the replay transitions of the
-- job record. Section "dead" (and "job" for ``replay``, ``replay_failed``, ``dead_purge``,
-- ``dead_forget``, ``dead_import``). Keys are listed in ``store/redis.py``.
--
-- A dead-letter record: {id, actor, queue, dead, exp, att, maxr, err, msg, enc, xids, src, bad}.
-- Indexes (zsets scored by ``dead`` unless said): deads:time, deads:queue:<q>, deads:actor:<a>,
-- deads:exp (scored by ``exp``); hashes: deads:xids:<q> (Redis broker id -> job id),
-- deads:stats ("<actor>\t<error type>" -> count), deads:offset (queue -> broker count minus
-- store count at the last reconciliation); zset deads:queues (queue -> last seen).

local dkey = K.dead
local function d_queue(q) return K.deads_of('queue', q) end
local function d_actor(a) return K.deads_of('actor', a) end
local function d_xids(q) return K.deads_of('xids', q) end
-- A dead letter's key expires this long after its retention ends: the cleanup (by the sweep of
-- the Watchdog's heartbeat, or the next dead-letter op) removes it with its index entries first;
-- the key's own expiry is the backstop when nothing runs them.
local D_GRACE = DAY

local function d_kind(d)
  local etype = '?'
  if d.bad then
    etype = 'malformed'
  elseif type(d.err) == 'table' and type(d.err.type) == 'string' then
    etype = d.err.type
  end
  return (d.actor or '?') .. '\t' .. etype
end

-- Remove a dead-letter record with its index entries; returns it (or nil).
local function d_remove(id)
  W('ZREM', K.deads('time'), id)
  W('ZREM', K.deads('exp'), id)
  local d = decode(redis.call('GET', dkey(id)))
  W('DEL', dkey(id))
  if not d or type(d.queue) ~= 'string' then return nil end
  W('ZREM', d_queue(d.queue), id)
  W('ZREM', d_actor(d.actor or '?'), id)
  if type(d.xids) == 'table' then
    for _, x in ipairs(d.xids) do
      if redis.call('HGET', d_xids(d.queue), x) == id then W('HDEL', d_xids(d.queue), x) end
    end
  end
  local kind = d_kind(d)
  local left = (tonumber(redis.call('HGET', K.deads('stats'), kind)) or 0) - 1
  W('HINCRBY', K.deads('stats'), kind, -1)
  if left <= 0 then W('HDEL', K.deads('stats'), kind) end
  return d
end

local function d_save(d)
  W('SET', dkey(d.id), cjson.encode(d), 'PX', math.max(d.exp - NOW, 1) + D_GRACE)
  W('ZADD', K.deads('time'), d.dead, d.id)
  W('ZADD', K.deads('exp'), d.exp, d.id)
  W('ZADD', d_queue(d.queue), d.dead, d.id)
  W('ZADD', d_actor(d.actor or '?'), d.dead, d.id)
  W('ZADD', K.deads('queues'), NOW, d.queue)
  if type(d.xids) == 'table' then
    for _, x in ipairs(d.xids) do W('HSET', d_xids(d.queue), x, d.id) end
  end
  W('HINCRBY', K.deads('stats'), d_kind(d), 1)
end

-- Drop records past their retention (at most 100 per call): after the ops of a call that
-- applied a dead-letter op (``d_cleanup_later``), and in the fleet's sweep.
local D_CLEANED, D_WANTED
RESET[#RESET + 1] = function() D_CLEANED = false; D_WANTED = false end
local function d_cleanup()
  if D_CLEANED then return end
  D_CLEANED = true
  local ids = redis.call('ZRANGEBYSCORE', K.deads('exp'), '-inf', NOW, 'LIMIT', 0, 100)
  for _, id in ipairs(ids) do d_remove(id) end
end
local function d_cleanup_later() on_commit(function() D_WANTED = true end) end
SWEEPS[#SWEEPS + 1] = d_cleanup_later
FLUSH[#FLUSH + 1] = function() if D_WANTED then d_cleanup() end end

local function d_merge_xids(old, new)
  local out, seen = {}, {}
  for _, list in ipairs({old or {}, new or {}}) do
    if type(list) == 'table' then
      for _, x in ipairs(list) do
        if not seen[x] then seen[x] = true; table.insert(out, x) end
      end
    end
  end
  return out
end

-- Capture: the end of an attempt whose message is being dead-lettered.
on('finish', 40, 'dead',
  {actor = 'string', queue = 'string', att = 'number?', maxr = 'number?', err = 'table?', msg = 'string?', enc = 'string?',
    xid = 'string?', retention_ms = 'number'},
  function(ctx, s)
  local id = ctx.op.id
  local old = d_remove(id)
  local xids = {}
  if s.xid then xids = {s.xid} end
  if old and old.queue == s.queue then xids = d_merge_xids(old.xids, xids) end
  local d = {id = id, actor = s.actor, queue = s.queue, dead = NOW, exp = NOW + s.retention_ms, att = s.att,
    maxr = s.maxr, err = s.err, msg = s.msg, enc = s.enc, src = 'mw'}
  if #xids > 0 then d.xids = xids end
  d_save(d)
  d_cleanup_later()
end)

-- The queues of an app (declared by its actors), so their dead-letter queues are looked at
-- even before anything of theirs is dead-lettered.
on('dead_queue', 40, 'dead', {queues = 'table'}, function(ctx, s)
  for _, q in ipairs(s.queues) do W('ZADD', K.deads('queues'), NOW, q) end
end)

-- An entry found in the broker's dead-letter queue that the store did not know (dead-lettered
-- before DeadLetters was installed, or while the store was unreachable), or another broker copy
-- of a known one (its broker id is added).
on('dead_import', 20, 'job', {detail = 'string?', hist = 'number?'}, function(ctx, s)
  local e = load(ctx.op.id)
  if e.rec and not TERMINAL[e.rec.status] then
    e.rec.fin = NOW
    e.rec.next = nil
    set_status(e, 'failed', s.detail, s)
  end
end)

on('dead_import', 40, 'dead',
  {actor = 'string', queue = 'string', att = 'number?', maxr = 'number?', err = 'table?', msg = 'string?', enc = 'string?',
    xid = 'string?', retention_ms = 'number', dead_ms = 'number', bad = 'string?'},
  function(ctx, s)
  local id = ctx.op.id
  local d = decode(redis.call('GET', dkey(id)))
  if d then
    if d.queue == s.queue and s.xid then
      local before = type(d.xids) == 'table' and #d.xids or 0
      d.xids = d_merge_xids(d.xids, {s.xid})
      if #d.xids > before then
        W('SET', dkey(id), cjson.encode(d), 'KEEPTTL')
        W('HSET', d_xids(d.queue), s.xid, id)
      end
    end
    ctx.res.known = true
    return
  end
  -- Kept ``ret`` from now: the broker still holds it, however old it is.
  d = {id = id, actor = s.actor, queue = s.queue, dead = s.dead_ms, exp = NOW + s.retention_ms, att = s.att,
    maxr = s.maxr, err = s.err, msg = s.msg, enc = s.enc, src = 'broker', bad = s.bad}
  if s.xid then d.xids = {s.xid} end
  d_save(d)
  d_cleanup_later()
end)

-- Replay, step 1 (before the broker moves the message): failed -> queued, with a fresh attempt
-- count (the replay gets the whole retry budget again); the history is kept. A record in
-- another status is left as it is (a job recorded done is skipped by Idempotency).
on('replay', 20, 'job', {detail = 'string', hist = 'number?'}, function(ctx, s)
  local e = load(ctx.op.id)
  if not e.rec then return end
  local rec = e.rec
  if rec.status ~= 'failed' then
    event(rec, rec.status, s.detail .. ' (it was ' .. rec.status .. ', so its status is kept)', s.hist)
    touch(e)
    return
  end
  rec.att = 0
  rec.fin = nil
  rec.next = nil
  rec.stack = nil
  rec.start = nil
  set_status(e, 'queued', s.detail, s)
  ctx.res.requeued = true
end)

-- Replay, step 2: the broker moved it; it is no longer a dead letter.
on('replayed', 40, 'dead', {}, function(ctx, s)
  d_remove(ctx.op.id)
  d_cleanup_later()
end)

-- Replay, step 2 when the broker did not move it: back to failed (sent only for records that
-- step 1 requeued; a worker cannot have taken it).
on('replay_failed', 20, 'job', {detail = 'string?', hist = 'number?'}, function(ctx, s)
  local e = load(ctx.op.id)
  if e.rec and e.rec.status == 'queued' then
    e.rec.fin = NOW
    set_status(e, 'failed', s.detail, s)
  end
end)

on('dead_purge', 20, 'job', {detail = 'string?', hist = 'number?'}, function(ctx, s)
  local e = load(ctx.op.id)
  if e.rec and e.rec.status == 'failed' then
    event(e.rec, 'failed', s.detail, s.hist)
    touch(e)
  end
end)

on('dead_purge', 40, 'dead', {}, function(ctx, s)
  ctx.res.removed = d_remove(ctx.op.id) ~= nil
  d_cleanup_later()
end)

-- The broker no longer has it (expired, or removed by another tool): forget the copy, unless it
-- was captured less than ``older_than_ms`` ago (its nack may not have reached the broker yet).
on('dead_forget', 15, 'dead', {older_than_ms = 'number'}, function(ctx, s)
  local d = decode(redis.call('GET', dkey(ctx.op.id)))
  if not d then return end
  if (tonumber(d.dead) or 0) <= NOW - s.older_than_ms then
    d_remove(ctx.op.id)
    ctx.outcome = 'forgotten'
    ctx.res.removed = true
  end
end)

on('dead_forget', 20, 'job', {detail = 'string?', hist = 'number?'}, function(ctx, s)
  if ctx.outcome ~= 'forgotten' then return end
  local e = load(ctx.op.id)
  if e.rec and e.rec.status == 'failed' then
    event(e.rec, 'failed', s.detail, s.hist)
    touch(e)
  end
end)

-- After a reconciliation: how many more entries the broker holds than the store for a queue.
on('dead_sync', 40, 'dead', {queue = 'string', offset = 'number'}, function(ctx, s)
  W('HSET', K.deads('offset'), s.queue, s.offset)
  W('ZADD', K.deads('queues'), NOW, s.queue)
end)

-- A short lock per queue, held while a tool reads a RabbitMQ dead-letter queue (reading takes
-- its messages out until the channel closes, so two readers would each miss the other's).
on('dead_lock', 40, 'dead', {queue = 'string', token = 'string', ttl_ms = 'number'}, function(ctx, s)
  local k = K.deads_of('lock', s.queue)
  if W_setnx(k, s.token, s.ttl_ms) then
    ctx.res.ok = true
  else
    ctx.res.ok = false
    ctx.res.holder = redis.call('GET', k) or ''
  end
end)

on('dead_unlock', 40, 'dead', {queue = 'string', token = 'string'}, function(ctx, s)
  local k = K.deads_of('lock', s.queue)
  if redis.call('GET', k) == s.token then W('DEL', k) end
end)
