-- Cron: claims of ticks, so that each tick of a schedule is enqueued once however many
-- schedulers run. Section "cron"; keys ``cron:tick:<name>:<fire>``, ``cron:pending:<name>``
-- and ``cron:last:<name>`` (see the key layout in ``store/redis.py``). Fire times are
-- milliseconds since the epoch; a tick is {st, job, by, lease, deadline, at, n}:
--   st     pending (claimed, not yet enqueued) | sent | skipped | missed
--   by     the scheduler holding the claim;  lease  when its claim lapses (while pending)
--   deadline  fire time + misfire grace: past it, a pending tick is given up as missed
--   n      how many times another scheduler took the tick over

local CRON = {LAST_TTL = 400 * DAY}

function CRON.fire(x) return string.format('%.0f', tonumber(x)) end
function CRON.tkey(name, fire) return K.cron('tick', name .. ':' .. fire) end
function CRON.pkey(name) return K.cron('pending', name) end
function CRON.lkey(name) return K.cron('last', name) end

-- Write a tick: kept ``keep`` ms when given, else as long as it already was.
function CRON.put(k, t, keep)
  local ttl = keep
  if not ttl then
    ttl = redis.call('PTTL', k)
    if ttl <= 0 then ttl = 60000 end
  end
  W('SET', k, cjson.encode(t), 'PX', ttl)
end

-- The latest tick of a schedule: replaced by a later tick, updated by its own, never by an older one.
function CRON.last(name, fire, t)
  local lk = CRON.lkey(name)
  local old = decode(redis.call('GET', lk))
  if old and (tonumber(old.fire) or 0) > tonumber(fire) then return end
  local rec = {fire = tonumber(fire), job = t.job, st = t.st, by = t.by, at = NOW}
  W('SET', lk, cjson.encode(rec), 'PX', CRON.LAST_TTL)
end

-- Claim a tick; only the claimer enqueues it.
on('cron_claim', 10, 'cron',
  {name = 'string', fire_ms = 'number', job = 'string', by = 'string', lease_ms = 'number', grace_ms = 'number',
    keep_ms = 'number'},
  function(ctx, s)
  local fire = CRON.fire(s.fire_ms)
  local k = CRON.tkey(s.name, fire)
  local t = decode(redis.call('GET', k))
  if t then
    ctx.res.outcome = 'taken'
    ctx.res.by = t.by
    ctx.res.st = t.st
    return
  end
  t = {st = 'pending', job = s.job, by = s.by, lease = NOW + s.lease_ms, deadline = tonumber(fire) + s.grace_ms,
    at = NOW}
  CRON.put(k, t, s.keep_ms)
  W('ZADD', CRON.pkey(s.name), t.lease, fire)
  W('PEXPIRE', CRON.pkey(s.name), s.keep_ms)
  CRON.last(s.name, fire, t)
  ctx.res.outcome = 'claimed'
end)

-- The tick's message was enqueued (st 'sent') or refused as a duplicate (st 'skipped').
on('cron_confirm', 10, 'cron', {name = 'string', fire_ms = 'number', by = 'string', st = 'string'},
  function(ctx, s)
  local fire = CRON.fire(s.fire_ms)
  local k = CRON.tkey(s.name, fire)
  W('ZREM', CRON.pkey(s.name), fire)
  local t = decode(redis.call('GET', k))
  if not t then
    ctx.res.outcome = 'gone'
    return
  end
  ctx.res.outcome = (t.by == s.by) and 'confirmed' or 'late'
  ctx.res.by = t.by
  if t.st == 'sent' then return end
  t.st = s.st
  t.by = s.by
  t.lease = nil
  t.at = NOW
  CRON.put(k, t)
  CRON.last(s.name, fire, t)
end)

-- The enqueue failed: let any scheduler (this one included) try again after ``retry`` ms.
on('cron_release', 10, 'cron', {name = 'string', fire_ms = 'number', by = 'string', retry_ms = 'number'},
  function(ctx, s)
  local fire = CRON.fire(s.fire_ms)
  local k = CRON.tkey(s.name, fire)
  local t = decode(redis.call('GET', k))
  if not t then return end
  if t.st ~= 'pending' or t.by ~= s.by then return end
  t.lease = NOW + s.retry_ms
  CRON.put(k, t)
  W('ZADD', CRON.pkey(s.name), t.lease, fire)
  ctx.res.outcome = 'released'
end)

-- Pending ticks whose claim lapsed: take them over for ``by`` (retake), or give them up
-- once past their deadline (missed).
on('cron_sweep', 10, 'cron', {names = 'table', by = 'string', lease_ms = 'number', limit = 'number'},
  function(ctx, s)
  local out = {}
  for _, name in ipairs(s.names) do
    local pk = CRON.pkey(name)
    for _, fire in ipairs(redis.call('ZRANGEBYSCORE', pk, '-inf', NOW, 'LIMIT', 0, s.limit)) do
      local k = CRON.tkey(name, fire)
      local t = decode(redis.call('GET', k))
      if not t or t.st ~= 'pending' then
        W('ZREM', pk, fire)
      elseif NOW > (tonumber(t.deadline or t.dl) or 0) then
        W('ZREM', pk, fire)
        t.st = 'missed'
        t.lease = nil
        t.at = NOW
        CRON.put(k, t)
        CRON.last(name, fire, t)
        table.insert(out, {o = 'missed', name = name, fire = tonumber(fire), job = t.job, by = t.by})
      else
        local prev = t.by
        t.by = s.by
        t.lease = NOW + s.lease_ms
        t.at = NOW
        if prev ~= s.by then t.n = (t.n or 0) + 1 end
        CRON.put(k, t)
        W('ZADD', pk, t.lease, fire)
        table.insert(out, {o = 'retake', name = name, fire = tonumber(fire), job = t.job, by = prev})
      end
    end
  end
  ctx.res.ticks = out
end)

-- The latest tick of each schedule named.
on('cron_read', 10, 'cron', {names = 'table'}, function(ctx, s)
  local out = {}
  for _, name in ipairs(s.names) do
    local last = decode(redis.call('GET', CRON.lkey(name)))
    if last then out[name] = last end
  end
  ctx.res.last = out
end)
