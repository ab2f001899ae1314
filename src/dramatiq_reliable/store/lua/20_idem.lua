-- Idempotency: completed keys, leases, unique keys, step checkpoints. Section "idem".

local ikey = K.idem

-- The process holding a lease, from its token ``<job id>|<process>|<n>``.
local function lease_holder(token) return string.match(token, '^[^|]*|([^|]+)|') end

-- Whether the process holding lease ``lk`` (token ``token``) is gone, and in how many ms it
-- will count as gone if it is not. A process the Watchdog knows is gone once its deadline is
-- past (or the sweep buried it). One it does not know (no Watchdog there, or forgotten) is gone
-- once its lease went unrenewed for the claiming process's abandon_after (at least half the
-- lease: renewals come every third of it); a claimer without a Watchdog waits for the expiry.
local function holder_gone(lk, token, claimer, lease_ms)
  local proc = lease_holder(token)
  if not proc then return false, nil end
  local deadline = tonumber(redis.call('ZSCORE', K.wd('procs'), proc))
  if deadline then
    if deadline < NOW then return true, proc end
    return false, proc, deadline - NOW
  end
  if redis.call('ZSCORE', K.wd('dead'), proc) then return true, proc end
  local me = claimer and decode(redis.call('HGET', K.wd('info'), claimer))
  local ab = me and tonumber(me.ab)
  if not ab then return false, proc end
  local limit = math.max(ab, math.floor(lease_ms / 2))
  local age = lease_ms - redis.call('PTTL', lk)
  if age > limit then return true, proc end
  return false, proc, limit - age
end

-- Check a delivery before it runs: done already? held by a running delivery? Else take the lease.
-- A lease whose holder process is gone (killed with its job) is taken over at once: its own
-- redelivery need not wait for the lease to expire.
on('claim', 10, 'idem', {key = 'string', token = 'string', lease_ms = 'number', rec = 'number?', a = 'string?'},
  function(ctx, s)
  -- ``rec``: JobState keeps this job's record at least ``ttl``; its ``done`` index (of actor
  -- ``a``), else its ``done`` status, is the marker.
  local done
  if s.rec and s.a then
    done = redis.call('ZSCORE', K.jobs('done', s.a), ctx.op.id)
  elseif s.rec then
    local mine = load(ctx.op.id).rec
    done = mine and mine.status == 'done'
  end
  if done then
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
  if not W_setnx(lk, s.token, s.lease_ms) then
    local owner = redis.call('GET', lk) or ''
    local gone, proc, wait = holder_gone(lk, owner, lease_holder(s.token), s.lease_ms)
    if not gone then
      local retry_in = redis.call('PTTL', lk)
      -- Check again when the holder would count as gone, if that comes before the lease expires.
      if wait and wait + 50 < retry_in then retry_in = wait + 50 end
      ctx.res.outcome = 'busy'
      ctx.res.retry_in = math.max(retry_in, 100)
      ctx.res.owner = owner
      return
    end
    W('SET', lk, s.token, 'PX', s.lease_ms)
    ctx.res.took = proc
    ctx.res.detail = 'taken over from dead process ' .. proc
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
  {outcome = 'string', key = 'string?', token = 'string?', ttl_ms = 'number?', rec = 'number?', ukey = 'string?',
    once = 'number?'},
  function(ctx, s)
  local id = ctx.op.id
  if s.key and s.outcome == 'done' then
    if not (s.rec and recorded_done(ctx)) then W('SET', ikey('done', s.key), id, 'PX', s.ttl_ms or DAY) end
    if s.once then W('DEL', ikey('once', s.key)) end
  end
  if s.key and s.token then
    local lk = ikey('lease', s.key)
    if redis.call('GET', lk) == s.token then W('DEL', lk) end
  end
  if s.ukey and s.outcome ~= 'retrying' and s.outcome ~= 'deferred' then
    local uk = ikey('unique', s.ukey)
    if redis.call('GET', uk) == id then W('DEL', uk) end
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
  W('SET', uk, id, 'PX', s.ttl_ms)
  ctx.res.outcome = 'reserved'
end)

-- Release a reservation whose enqueue did not happen.
on('unreserve', 10, 'idem', {key = 'string'}, function(ctx, s)
  local uk = ikey('unique', s.key)
  if redis.call('GET', uk) == ctx.op.id then W('DEL', uk) end
end)

-- unique=True: the enqueue happened; hold the key until the job ends (or ``ttl``).
on('confirm', 10, 'idem', {key = 'string', ttl_ms = 'number'}, function(ctx, s)
  local uk = ikey('unique', s.key)
  if redis.call('GET', uk) == ctx.op.id then W('PEXPIRE', uk, s.ttl_ms) end
end)

-- The heartbeat: extend the leases this process holds; report the ones it lost.
on('renew', 10, 'idem', {leases = 'table', lease_ms = 'number'}, function(ctx, s)
  local lost = {}
  for key, token in pairs(s.leases) do
    local lk = ikey('lease', key)
    if redis.call('GET', lk) == token then
      W('PEXPIRE', lk, s.lease_ms)
    else
      table.insert(lost, key)
    end
  end
  ctx.res.lost = lost
end)
