-- Shards of a store on a Redis Cluster (``store/cluster.py``). Sections "wd", "idem", "ctl".
--
-- There, each shard is a whole store under a prefix of its own (a hash tag: the call lives in
-- one slot), holding the records of its jobs, their indexes and dead letters, the leases and
-- markers of its idempotency keys, and the Watchdog's run hash of each process for its jobs;
-- the fleet's slot holds the rest (Watchdog liveness, cron, alert throttles, operator
-- controls). These handlers are a shard's part, or the fleet's, of what one Redis does in one
-- call. A shard keeps its own wd:dead (processes the fleet found dead, kept ``keep_ms``), so
-- that a claim there takes over the lease of a dead process at once.

-- The fleet's sweep found these processes dead (or one says goodbye, ``bye``): mark the jobs
-- they ran in this shard abandoned and release their leases (``leases``: those they held, for
-- the caller to release in the shards of their keys). ``house``: also run the sweep's
-- housekeeping here (expired dead letters; processes dead for longer than ``keep_ms`` forgotten).
on('shard_sweep', 30, 'wd',
  {procs = 'table', bye = 'boolean?', house = 'boolean?', keep_ms = 'number?', hist = 'number?'},
  function(ctx, s)
  if s.house then
    for _, housekeeping in ipairs(SWEEPS) do housekeeping() end
    if s.keep_ms then
      local old = redis.call('ZRANGEBYSCORE', K.wd('dead'), '-inf', NOW - s.keep_ms, 'LIMIT', 0, WD_MAX)
      for _, proc in ipairs(old) do
        redis.call('DEL', wd_run(proc))
        redis.call('ZREM', K.wd('dead'), proc)
      end
    end
  end
  local out, leases = {}, {}
  for _, proc in ipairs(s.procs) do
    -- Leases of keys in other shards: the caller releases them there.
    local items = redis.call('HGETALL', wd_run(proc))
    for i = 1, #items, 2 do
      local meta = decode(items[i + 1]) or {}
      if meta.lk and meta.lt then table.insert(leases, {id = items[i], lk = meta.lk, lt = meta.lt}) end
    end
    local why = 'abandoned: its worker ' .. proc .. ' stopped heartbeating; the broker will deliver it again'
    if s.bye then
      why = 'abandoned: its worker ' .. proc .. ' shut down before it finished; the broker will deliver it again'
    end
    wd_abandon(proc, why, s, out)
    if s.bye and redis.call('EXISTS', wd_run(proc)) == 0 then
      redis.call('ZREM', K.wd('dead'), proc)
    else
      redis.call('ZADD', K.wd('dead'), NOW, proc)
    end
  end
  if #out > 0 then ctx.res.abandoned = out end
  if #leases > 0 then ctx.res.leases = leases end
end)

-- A process found dead beats again: the jobs it runs in this shard run again.
on('shard_revive', 30, 'wd', {proc = 'string', hist = 'number?'}, function(ctx, s)
  local proc = s.proc
  redis.call('ZREM', K.wd('dead'), proc)
  ctx.res.back = wd_revive_runs(proc, s)
end)

-- A job starts in a shard before its process's first beat: the fleet knows the process from now.
on('shard_register', 30, 'wd', {proc = 'string', abandon_ms = 'number'}, function(ctx, s)
  redis.call('ZADD', K.wd('procs'), 'NX', NOW + s.abandon_ms, s.proc)
end)

-- A process that stopped with jobs still running in some shard: dead, its broker messages to put back.
on('shard_bury', 30, 'wd', {proc = 'string'}, function(ctx, s)
  wd_bury(s.proc, '', s, {})
end)

-- A claim found the lease held by ``owner``, a process the fleet's slot knows is gone: take it over.
on('shard_takeover', 10, 'idem', {key = 'string', token = 'string', owner = 'string', lease_ms = 'number'},
  function(ctx, s)
  local lk = ikey('lease', s.key)
  local held = redis.call('GET', lk)
  if held and held ~= s.owner then
    ctx.res.outcome = 'busy'
    ctx.res.retry_in = math.max(redis.call('PTTL', lk), 100)
    ctx.res.owner = held
    return
  end
  redis.call('SET', lk, s.token, 'PX', s.lease_ms)
  local proc = lease_holder(s.owner) or '?'
  ctx.res.outcome = 'run'
  ctx.res.took = proc
  ctx.res.detail = 'taken over from dead process ' .. proc
end)

-- A reservation refused for ``holder``, a job whose record (in its own shard) has ended: take it.
on('shard_reserve', 10, 'idem', {key = 'string', ttl_ms = 'number', holder = 'string'}, function(ctx, s)
  local uk = ikey('unique', s.key)
  local held = redis.call('GET', uk)
  if held and held ~= s.holder and held ~= ctx.op.id then
    ctx.res.outcome = 'refused'
    ctx.res.holder = held
    return
  end
  redis.call('SET', uk, ctx.op.id, 'PX', s.ttl_ms)
  ctx.res.outcome = 'reserved'
end)

-- The fleet's log entry of a cancel or a retry-now that a shard applied to the job's record.
on('shard_ctl', 80, 'ctl', {kind = 'string'}, function(ctx, s)
  ctx.res.seq = ctl_log(s.kind, ctx.op.id)
end)
