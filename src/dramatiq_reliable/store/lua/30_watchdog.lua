-- Watchdog: which worker process runs which job, process liveness, the fleet's sweep. Section "wd".
--
-- A process's beat sets its deadline (now + its abandon_after) in wd:procs. The start and the
-- finish of each job add it to and remove it from the process's wd:run hash, inside the job's
-- own op (no extra round trip). The sweep runs inside a beat that wins wd:lock (so at most one
-- per sweep interval in the fleet): it takes the processes past their deadline and marks their
-- running jobs abandoned. Its cost is O(jobs of dead processes), never O(all jobs).

-- Dead processes handled per sweep, and pending recoveries returned, at most.
local WD_MAX = 100

local wd_run = K.wd_run

local function wd_decode(raw) return decode(raw) or {} end

local function wd_info(proc) return wd_decode(redis.call('HGET', K.wd('info'), proc)) end

-- Mark the jobs a dead process was running abandoned, and release the leases it held.
local function wd_abandon(proc, why, s, out)
  local items = redis.call('HGETALL', wd_run(proc))
  for i = 1, #items, 2 do
    local id = items[i]
    local meta = wd_decode(items[i + 1])
    local e = load(id)
    local rec = e.rec
    if rec then
      if rec.wp == proc and (rec.status == 'running' or rec.status == 'stuck') then
        set_status(e, 'abandoned', why, s)
        table.insert(out, {id = id, actor = rec.actor, queue = rec.queue, att = rec.att, maxr = rec.maxr,
          keys = rec.keys, worker = rec.worker, proc = proc})
      end
    else
      table.insert(out, {id = id, actor = meta.a, queue = meta.q, proc = proc})
    end
    if meta.lk and meta.lt then
      local lk = ikey('lease', meta.lk)
      if redis.call('GET', lk) == meta.lt then W('DEL', lk) end
    end
  end
end

-- Forget a process entirely.
local function wd_forget(proc)
  W('DEL', wd_run(proc))
  W('HDEL', K.wd('info'), proc)
  W('ZREM', K.wd('dead'), proc)
  W('ZREM', K.wd('procs'), proc)
  W('SREM', K.wd('pending'), proc)
end

-- A process is dead: move it to wd:dead, queue the recovery of its broker messages, abandon its jobs.
local function wd_bury(proc, why, s, out)
  W('ZREM', K.wd('procs'), proc)
  W('ZADD', K.wd('dead'), NOW, proc)
  if wd_info(proc).bid then W('SADD', K.wd('pending'), proc) end
  wd_abandon(proc, why, s, out)
end

-- A process found dead beats again: the jobs of its run hash that were marked abandoned run
-- again (``running``). Returns how many.
local function wd_revive_runs(proc, s)
  local back = 0
  for _, id in ipairs(redis.call('HKEYS', wd_run(proc))) do
    local e = load(id)
    if e.rec and e.rec.wp == proc and e.rec.status == 'abandoned' then
      set_status(e, 'running', 'running again: its worker ' .. proc .. ' answers again', s)
      back = back + 1
    end
  end
  return back
end

local function wd_sweep(s)
  local out = {abandoned = {}, dead = {}, pending = {}, bids = {}}
  for _, housekeeping in ipairs(SWEEPS) do housekeeping() end
  local dead = redis.call('ZRANGEBYSCORE', K.wd('procs'), '-inf', NOW, 'LIMIT', 0, WD_MAX)
  for _, proc in ipairs(dead) do
    wd_bury(proc, 'abandoned: its worker ' .. proc .. ' stopped heartbeating; the broker will deliver it again',
      s, out.abandoned)
    table.insert(out.dead, proc)
  end
  local old = redis.call('ZRANGEBYSCORE', K.wd('dead'), '-inf', NOW - s.keep_ms, 'LIMIT', 0, WD_MAX)
  for _, proc in ipairs(old) do wd_forget(proc) end
  local pending = redis.call('SRANDMEMBER', K.wd('pending'), WD_MAX)
  if #pending > 0 then
    for _, proc in ipairs(pending) do
      local info = wd_info(proc)
      if info.bid then
        table.insert(out.pending, {proc = proc, bid = info.bid, broker = info.broker, ns = info.ns,
          queues = info.queues})
      else
        W('SREM', K.wd('pending'), proc)
      end
    end
    -- Every broker id this store knows dead, so a recovery can tell them from live ones.
    for _, proc in ipairs(redis.call('ZRANGE', K.wd('dead'), 0, 10 * WD_MAX)) do
      local bid = wd_info(proc).bid
      if bid then table.insert(out.bids, bid) end
    end
  end
  return out
end

-- The heartbeat of one process: push its deadline, record what it is, sweep if it wins the lock.
on('beat', 30, 'wd',
  {proc = 'string', abandon_ms = 'number', info = 'table?', sweep_ms = 'number?', keep_ms = 'number?', hist = 'number?'},
  function(ctx, s)
  local proc = s.proc
  if redis.call('ZSCORE', K.wd('dead'), proc) then
    -- Found dead earlier (frozen, or cut off from the store), yet it beats: it lives.
    W('ZREM', K.wd('dead'), proc)
    ctx.res.revived = true
    if W('SREM', K.wd('pending'), proc) == 0 and wd_info(proc).bid then ctx.res.recovered = true end
    ctx.res.back = wd_revive_runs(proc, s)
  end
  W('ZADD', K.wd('procs'), NOW + s.abandon_ms, proc)
  if s.info then W('HSET', K.wd('info'), proc, cjson.encode(s.info)) end
  ctx.res.now_ms = NOW
  if s.sweep_ms then
    -- The lock holds "<expiry ms>|<proc>"; it is free once missing or expired by the batch clock.
    local held = redis.call('GET', K.wd('lock'))
    if not held or (tonumber(string.match(held, '^(%d+)|')) or 0) <= NOW then
      W('SET', K.wd('lock'), (NOW + s.sweep_ms) .. '|' .. proc, 'PX', s.sweep_ms)
      ctx.res.sweep = wd_sweep(s)
    end
  end
end)

-- A job starts: its process runs it (holding the lease lk/lt, when Idempotency took one).
on('start', 30, 'wd', {proc = 'string', abandon_ms = 'number?', a = 'string?', q = 'string?', lk = 'string?', lt = 'string?'},
  function(ctx, s)
  local id = ctx.op.id
  local meta = {a = s.a, q = s.q, lk = s.lk, lt = s.lt}
  W('HSET', wd_run(s.proc), id, cjson.encode(meta))
  -- Until the process's first beat registers it (the beat sends no abandon_ms after that).
  if s.abandon_ms then W('ZADD', K.wd('procs'), 'NX', NOW + s.abandon_ms, s.proc) end
  local e = load(id)
  if e.rec and e.rec.status == 'running' then
    e.rec.wp = s.proc
    touch(e)
  end
end)

on('finish', 30, 'wd', {proc = 'string'}, function(ctx, s)
  W('HDEL', wd_run(s.proc), ctx.op.id)
end)

-- The process running a job found it past its stuck_after: record where its thread is.
on('stuck', 30, 'wd', {proc = 'string', att = 'number?', stack = 'table?', detail = 'string?', hist = 'number?'},
  function(ctx, s)
  local e = load(ctx.op.id)
  local rec = e.rec
  if not rec then
    ctx.res.norec = true
    return
  end
  if rec.status == 'running' and rec.wp == s.proc and (tonumber(rec.att) or 0) == (tonumber(s.att) or 0) then
    rec.stack = s.stack
    set_status(e, 'stuck', s.detail, s)
    ctx.res.marked = true
  end
end)

-- A process stops: forget it, or, if jobs are still running in it, abandon them.
on('bye', 30, 'wd', {proc = 'string', hist = 'number?'}, function(ctx, s)
  local proc = s.proc
  if redis.call('HLEN', wd_run(proc)) > 0 then
    local out = {}
    wd_bury(proc, 'abandoned: its worker ' .. proc .. ' shut down before it finished; the broker will deliver it again',
      s, out)
    ctx.res.abandoned = out
  else
    wd_forget(proc)
  end
end)

-- The broker messages of these dead processes were put back: nothing is pending for them.
on('recovered', 30, 'wd', {procs = 'table'}, function(ctx, s)
  for _, proc in ipairs(s.procs) do W('SREM', K.wd('pending'), proc) end
end)
