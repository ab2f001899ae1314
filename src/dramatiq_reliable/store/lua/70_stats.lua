-- Per-minute counters for the support page's charts. Section "st" of ``finish``.
--
-- Written in the op of a job's final write, so they cost no round trip of their own; summed
-- over the ops of a call and written once per call at its end. One hash per minute,
-- ``stats:m:<minute>`` (minute = ms // 60000), expiring ``ret`` ms (default 25 h) after its
-- first write (``retention_ms``):
--   "a\t<actor>\tdone"    attempts that ended done
--   "a\t<actor>\tfailed"  attempts that raised (retried or not)
--   "a\t<actor>\tdead"    jobs that failed for good (dead-lettered)
--   "w\t<queue>"          longest wait in the queue (ms) of a job that ended this minute
--
-- ``st`` section fields: ``a`` (actor), ``q`` (queue), ``o`` (outcome: done, retrying,
-- failed, skipped, deferred), ``wait_ms`` (the message's wait in its queue), ``retention_ms``.

local ST_DEFAULT_RET = 25 * 3600000
-- key -> {ret = ms, n = {field = count}, w = {field = ms}}: this call's counts, not yet written.
local ST
RESET[#RESET + 1] = function() ST = {} end

local st_key = K.stats_minute

local function st_counts(outcome)
  if outcome == 'done' then return {'done'} end
  if outcome == 'retrying' then return {'failed'} end
  if outcome == 'failed' then return {'failed', 'dead'} end
  return {}
end

on('finish', 70, 'st', {a = 'string', q = 'string?', o = 'string', wait_ms = 'number?', retention_ms = 'number?'},
  function(ctx, s)
  local counts = st_counts(s.o)
  if #counts == 0 then return end
  -- A write replayed after an outage counts in the minute it happened (``op.at_ms``).
  local key = st_key(math.floor((op_time(ctx.op) or NOW) / 60000))
  local actor = tostring(s.a or '?')
  local wait = s.wait_ms and s.q and math.floor(s.wait_ms)
  on_commit(function()
    local t = ST[key]
    if not t then
      t = {ret = s.retention_ms or ST_DEFAULT_RET, n = {}, w = {}}
      ST[key] = t
    end
    for _, name in ipairs(counts) do
      local field = 'a\t' .. actor .. '\t' .. name
      t.n[field] = (t.n[field] or 0) + 1
    end
    if wait then
      local field = 'w\t' .. tostring(s.q)
      if not t.w[field] or wait > t.w[field] then t.w[field] = wait end
    end
  end)
end)

FLUSH[#FLUSH + 1] = function()
  for key, t in pairs(ST) do
    for field, n in pairs(t.n) do redis.call('HINCRBY', key, field, n) end
    for field, wait in pairs(t.w) do
      local cur = tonumber(redis.call('HGET', key, field))
      if not cur or wait > cur then redis.call('HSET', key, field, wait) end
    end
    redis.call('PEXPIRE', key, t.ret, 'NX')
  end
end
