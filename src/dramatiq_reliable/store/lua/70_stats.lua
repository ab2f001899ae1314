-- Per-minute counters for the support page's charts. Section "st" of ``finish``.
--
-- Written in the op of a job's final write, so they cost no round trip of their own. One hash
-- per minute, ``stats:m:<minute>`` (minute = ms // 60000), expiring ``ret`` ms (default 25 h)
-- after its first write (``retention_ms``):
--   "a\t<actor>\tdone"    attempts that ended done
--   "a\t<actor>\tfailed"  attempts that raised (retried or not)
--   "a\t<actor>\tdead"    jobs that failed for good (dead-lettered)
--   "w\t<queue>"          longest wait in the queue (ms) of a job that ended this minute
--
-- ``st`` section fields: ``a`` (actor), ``q`` (queue), ``o`` (outcome: done, retrying,
-- failed, skipped, deferred), ``wait_ms`` (the message's wait in its queue), ``retention_ms``.

local ST_DEFAULT_RET = 25 * 3600000
local ST_EXPIRING
RESET[#RESET + 1] = function() ST_EXPIRING = {} end

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
  for _, name in ipairs(counts) do
    redis.call('HINCRBY', key, 'a\t' .. actor .. '\t' .. name, 1)
  end
  local wait = s.wait_ms
  if wait and s.q then
    local field = 'w\t' .. tostring(s.q)
    local cur = redis.call('HGET', key, field)
    if not cur or wait > tonumber(cur) then redis.call('HSET', key, field, math.floor(wait)) end
  end
  if not ST_EXPIRING[key] then
    ST_EXPIRING[key] = true
    redis.call('PEXPIRE', key, s.retention_ms or ST_DEFAULT_RET, 'NX')
  end
end)
