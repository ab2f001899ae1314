-- Idempotency: completed keys, leases, unique keys, step checkpoints. Section "idem".

local ikey = K.idem

-- Check a delivery before it runs: done already? held by a running delivery? Else take the lease.
on('claim', 10, 'idem', {key = 'string', token = 'string', lease_ms = 'number', rec = 'number?'},
  function(ctx, s)
  -- ``rec``: JobState keeps this job's record at least ``ttl``; its done index is the marker.
  if s.rec and redis.call('ZSCORE', K.status('done'), ctx.op.id) then
    ctx.res.outcome = 'duplicate'
    ctx.res.dup = ctx.op.id
    return
  end
  local by = redis.call('GET', ikey('done', s.key))
  if by then
    ctx.res.outcome = 'duplicate'
    ctx.res.dup = by
    return
  end
  local lk = ikey('lease', s.key)
  if not redis.call('SET', lk, s.token, 'NX', 'PX', s.lease_ms) then
    ctx.res.outcome = 'busy'
    ctx.res.retry_in = math.max(redis.call('PTTL', lk), 100)
    ctx.res.owner = redis.call('GET', lk) or ''
    return
  end
  ctx.res.outcome = 'run'
end)

-- Whether this op's JobState section makes the record ``done`` (not the late result of an older attempt).
local function recorded_done(ctx)
  local j = ctx.op.job
  if type(j) ~= 'table' or j.outcome ~= 'done' then return false end
  local rec = load(ctx.op.id).rec
  local att = tonumber(j.att)
  return not (rec and att and (tonumber(rec.att) or 0) > att)
end

-- The end of an attempt. ``key`` (with ``token``, the lease's owner) is the key the delivery
-- claimed: ``done`` completes it, and its checkpoints are dropped (the completion now answers
-- for every step). ``ukey`` is the key a ``unique`` job reserved at send: freed when the job
-- has finished, whatever the outcome, but not while it waits for a retry or was put back.
on('finish', 10, 'idem',
  {outcome = 'string', key = 'string?', token = 'string?', ttl_ms = 'number?', rec = 'number?', ukey = 'string?'},
  function(ctx, s)
  local id = ctx.op.id
  if s.key and s.outcome == 'done' then
    if not (s.rec and recorded_done(ctx)) then redis.call('SET', ikey('done', s.key), id, 'PX', s.ttl_ms or DAY) end
    redis.call('DEL', ikey('once', s.key))
  end
  if s.key and s.token then
    local lk = ikey('lease', s.key)
    if redis.call('GET', lk) == s.token then redis.call('DEL', lk) end
  end
  if s.ukey and s.outcome ~= 'retrying' and s.outcome ~= 'deferred' then
    local uk = ikey('unique', s.ukey)
    if redis.call('GET', uk) == id then redis.call('DEL', uk) end
  end
end)

-- unique=True: reserve the key for this job at enqueue, unless a pending job holds it.
on('reserve', 10, 'idem', {key = 'string', ttl_ms = 'number'}, function(ctx, s)
  local id = ctx.op.id
  local uk = ikey('unique', s.key)
  local holder = redis.call('GET', uk)
  if holder and holder ~= id then
    local rec = decode(redis.call('GET', K.job(holder)))
    local stale = false
    if rec then stale = TERMINAL[rec.status] or false end
    if not stale then
      ctx.outcome = 'refused'
      ctx.res.outcome = 'refused'
      ctx.res.holder = holder
      return
    end
  end
  redis.call('SET', uk, id, 'PX', s.ttl_ms)
  ctx.res.outcome = 'reserved'
end)

-- Release a reservation whose enqueue did not happen.
on('unreserve', 10, 'idem', {key = 'string'}, function(ctx, s)
  local uk = ikey('unique', s.key)
  if redis.call('GET', uk) == ctx.op.id then redis.call('DEL', uk) end
end)

-- unique=True: the enqueue happened; hold the key until the job ends (or ``ttl``).
on('confirm', 10, 'idem', {key = 'string', ttl_ms = 'number'}, function(ctx, s)
  local uk = ikey('unique', s.key)
  if redis.call('GET', uk) == ctx.op.id then redis.call('PEXPIRE', uk, s.ttl_ms) end
end)

-- The heartbeat: extend the leases this process holds; report the ones it lost.
on('renew', 10, 'idem', {leases = 'table', lease_ms = 'number'}, function(ctx, s)
  local lost = {}
  for key, token in pairs(s.leases) do
    local lk = ikey('lease', key)
    if redis.call('GET', lk) == token then
      redis.call('PEXPIRE', lk, s.lease_ms)
    else
      table.insert(lost, key)
    end
  end
  ctx.res.lost = lost
end)
