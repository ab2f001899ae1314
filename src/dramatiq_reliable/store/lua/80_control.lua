-- Operator controls: pause/resume an actor or a queue, cancel a job, retry a job now. Section "ctl".
--
-- Keys (under the prefix):
--   ctl:paused  hash  "actor:<name>" | "queue:<name>" -> JSON {since (ms), by}
--   ctl:log     zset  "c:<job id>" (cancelled) | "n:<job id>" (retry now) -> sequence number
--   ctl:seq     string  the last sequence number given out
--
-- Workers read the paused set and the log entries past the last sequence they saw in their
-- heartbeat (``ctl_beat``), so checking a delivery costs no store call of its own. The log keeps
-- the latest CTL_KEEP entries.

local CTL_KEEP = 100000

local function ctl_log(kind, id)
  local seq = (tonumber(redis.call('GET', K.ctl('seq'))) or 0) + 1
  W('SET', K.ctl('seq'), seq)
  W('ZADD', K.ctl('log'), seq, kind .. ':' .. id)
  W('ZREMRANGEBYRANK', K.ctl('log'), 0, -(CTL_KEEP + 1))
  return seq
end

local function ctl_paused()
  local out = {}
  local items = redis.call('HGETALL', K.ctl('paused'))
  for i = 1, #items, 2 do
    out[items[i]] = decode(items[i + 1]) or {since = 0}
  end
  return out
end

-- A worker's heartbeat: the paused set, and the log past ``after`` (at most ``max`` entries).
on('ctl_beat', 80, 'ctl', {after = 'number', max = 'number?'}, function(ctx, s)
  ctx.res.paused = ctl_paused()
  local after = tonumber(s.after) or 0
  local items = redis.call('ZRANGEBYSCORE', K.ctl('log'), '(' .. after, '+inf', 'WITHSCORES', 'LIMIT', 0,
    tonumber(s.max) or 10000)
  local log = {}
  local seq = after
  for i = 1, #items, 2 do
    table.insert(log, items[i])
    seq = math.max(seq, tonumber(items[i + 1]))
  end
  ctx.res.log = log
  ctx.res.seq = seq
  ctx.res.more = #log >= (tonumber(s.max) or 10000)
end)

-- Pause (``on``) or resume a target ("actor:<name>" or "queue:<name>").
on('pause', 80, 'ctl', {target = 'string', on = 'boolean', by = 'string?'}, function(ctx, s)
  local key = K.ctl('paused')
  local cur = decode(redis.call('HGET', key, s.target))
  if s.on then
    if cur then
      ctx.res.changed = false
      ctx.res.since = cur.since
      ctx.res.by = cur.by
    else
      W('HSET', key, s.target, cjson.encode({since = NOW, by = s.by}))
      ctx.res.changed = true
      ctx.res.since = NOW
    end
  else
    if cur then
      W('HDEL', key, s.target)
      ctx.res.changed = true
      ctx.res.since = cur.since
    else
      ctx.res.changed = false
    end
  end
end)

on('paused', 80, 'ctl', {}, function(ctx, s)
  ctx.res.paused = ctl_paused()
end)

-- Cancel a job that has not finished: ``cancelled`` now; workers skip its deliveries and stop it
-- at its next ``dr.once`` step (or interrupt it) if it runs.
on('cancel', 80, 'ctl', {by = 'string?', hist = 'number?'}, function(ctx, s)
  local e = load(ctx.op.id)
  local rec = e.rec
  if not rec then
    ctx.res.state = 'unknown'
    return
  end
  local prev = rec.status
  ctx.res.state = prev
  if TERMINAL[prev] then return end
  local detail = 'cancelled by ' .. (s.by or '?')
  if prev == 'running' or prev == 'stuck' then
    detail = detail .. '; its worker is asked to stop it'
  else
    detail = detail .. ' (was ' .. prev .. '); it will not run'
  end
  rec.fin = NOW
  rec.next = nil
  set_status(e, 'cancelled', detail, s)
  ctx.res.state = 'cancelled'
  ctx.res.was = prev
  ctx.res.seq = ctl_log('c', ctx.op.id)
end)

-- Run a job waiting for its next retry now: the worker that holds its delayed message releases it.
on('retry_now', 80, 'ctl', {by = 'string?', hist = 'number?'}, function(ctx, s)
  local e = load(ctx.op.id)
  local rec = e.rec
  if not rec then
    ctx.res.state = 'unknown'
    return
  end
  ctx.res.state = rec.status
  if rec.status ~= 'retrying' then return end
  rec.next = NOW
  event(rec, 'retrying', 'retry now, asked by ' .. (s.by or '?'), s.hist)
  touch(e)
  ctx.res.state = 'now'
  ctx.res.seq = ctl_log('n', ctx.op.id)
end)

-- A cancelled job that starts anyway (its worker had not heard of the cancel yet) stays
-- cancelled, and its worker is told; an attempt that fails after the cancel is not retried.
-- (These read the ``job`` section that 10_jobs.lua declares: no fields of their own.)
on('start', 10, 'job', nil, function(ctx, s)
  local e = load(ctx.op.id)
  if e.rec and e.rec.status == 'cancelled' then ctx.ctl_fin = e.rec.fin or NOW end
end)

on('start', 25, 'job', nil, function(ctx, s)
  if not ctx.ctl_fin then return end
  local e = load(ctx.op.id)
  e.rec.fin = ctx.ctl_fin
  set_status(e, 'cancelled', 'it started before its worker heard of the cancel; asked to stop', s)
  ctx.res.cancelled = true
end)

on('finish', 10, 'job', nil, function(ctx, s)
  local e = load(ctx.op.id)
  if e.rec and e.rec.status == 'cancelled' then ctx.ctl_fin = e.rec.fin or NOW end
end)

on('finish', 25, 'job', nil, function(ctx, s)
  if not ctx.ctl_fin then return end
  local e = load(ctx.op.id)
  if s.outcome == 'cancelled' then
    e.rec.fin = ctx.ctl_fin
    touch(e)
  elseif e.rec.status == 'retrying' then
    e.rec.next = nil
    e.rec.fin = ctx.ctl_fin
    set_status(e, 'cancelled', 'not retried: the job was cancelled', s)
  end
end)

-- The fleet for ``dramatiq-reliable workers`` and the page: each process the Watchdog knows (live
-- and recently dead), what it is, and the jobs it runs (at most ``max`` each) with their start.
on('workers', 80, 'ctl', {max = 'number?'}, function(ctx, s)
  local most = tonumber(s.max) or 100
  local out = {}
  local function add(proc, score, alive)
    local jobs = {}
    local items = redis.call('HGETALL', K.wd_run(proc))
    for i = 1, math.min(#items, 2 * most), 2 do
      local meta = wd_decode(items[i + 1])
      local rec = unstored(decode(redis.call('GET', K.job(items[i])))) or {}
      table.insert(jobs, {id = items[i], a = meta.a or rec.actor, q = meta.q or rec.queue, start = rec.start,
        att = rec.att, st = rec.status})
    end
    table.insert(out, {proc = proc, score = tonumber(score), alive = alive, info = wd_info(proc),
      n = #items / 2, jobs = jobs})
  end
  local live = redis.call('ZRANGE', K.wd('procs'), 0, -1, 'WITHSCORES')
  for i = 1, #live, 2 do add(live[i], live[i + 1], true) end
  local dead = redis.call('ZRANGE', K.wd('dead'), 0, -1, 'WITHSCORES')
  for i = 1, #dead, 2 do add(dead[i], dead[i + 1], false) end
  ctx.res.procs = out
  ctx.res.pending = redis.call('SMEMBERS', K.wd('pending'))
  ctx.res.now_ms = NOW
end)
