-- Per-minute counters for the support page's charts. Section "st" of ``finish``.
--
-- Written in the op of a job's final write, so they cost no round trip of their own. One hash
-- per minute, ``stats:m:<minute>`` (minute = ms // 60000), expiring ``ret`` ms (default 25 h)
-- after its first write:
--   "a\t<actor>\tdone"    attempts that ended done
--   "a\t<actor>\tfailed"  attempts that raised (retried or not)
--   "a\t<actor>\tdead"    jobs that failed for good (dead-lettered)
--   "w\t<queue>"          longest wait in the queue (ms) of a job that ended this minute
--
-- ``st`` section fields: ``a`` (actor), ``q`` (queue), ``o`` (outcome: done, retrying,
-- failed, skipped, deferred), ``w`` (ms the message waited in its queue), ``ret`` (ms kept).

local ST_DEFAULT_RET = 25 * 3600000
local ST_EXPIRING = {}

local function st_key(minute) return P .. 'stats:m:' .. minute end

local function st_counts(outcome)
  if outcome == 'done' then return {'done'} end
  if outcome == 'retrying' then return {'failed'} end
  if outcome == 'failed' then return {'failed', 'dead'} end
  return {}
end

on('finish', 70, 'st', function(ctx, s)
  local counts = st_counts(s.o)
  if #counts == 0 then return end
  -- A write replayed after an outage counts in the minute it happened (``op.at``).
  local key = st_key(math.floor((tonumber(ctx.op.at) or NOW) / 60000))
  local actor = tostring(s.a or '?')
  for _, name in ipairs(counts) do
    redis.call('HINCRBY', key, 'a\t' .. actor .. '\t' .. name, 1)
  end
  local wait = tonumber(s.w)
  if wait and s.q then
    local field = 'w\t' .. tostring(s.q)
    local cur = redis.call('HGET', key, field)
    if not cur or wait > tonumber(cur) then redis.call('HSET', key, field, math.floor(wait)) end
  end
  if not ST_EXPIRING[key] then
    ST_EXPIRING[key] = true
    redis.call('PEXPIRE', key, tonumber(s.ret) or ST_DEFAULT_RET, 'NX')
  end
end)
