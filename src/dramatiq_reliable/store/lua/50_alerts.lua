-- Alerts: fleet-wide throttling of notifications. Section "al".
--
-- A throttle is keyed by (kind, actor, error type): at most one notification per key per
-- window, whichever process or host the occurrences come from. An occurrence is decided in
-- the same call as the job's final write ("finish"), or on its own ("alert", for events).
-- Suppressed occurrences are counted; the next notification carries the count, or, if none
-- comes, the periodic "alerts_due" op hands out one summary per key (claimed atomically, so
-- one process sends it). With ``quiet`` set, a key quiet for a window is reported recovered.
--
-- al section of "finish" / "alert": kind actor etype queue msg keys window_ms at_ms quiet
-- (``at_ms`` is the sender's clock: compared with the batch's ``sent_ms``, never with the store's)
-- result: ctx.res.alert = {notify = 0|1, sup = n, since = ms}
-- al section of "alerts_due": limit
-- result: ctx.res.due = [{name kind actor etype q sup since seen jid msg keys(JSON) win summary|recovered}]

local ALERT_LATE = 10000   -- applied this many ms after it happened: replayed after an outage
local alert_key = K.alert

local function alert_hash(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end

local function alert_occur(ctx, s)
  local name = s.kind .. ':' .. s.actor .. ':' .. (s.etype or '')
  local key = alert_key(name)
  local win = s.window_ms
  local old = redis.call('HMGET', key, 'last', 'sup', 'since')
  local last = tonumber(old[1])
  local sup = tonumber(old[2]) or 0
  local since = tonumber(old[3])
  local late = s.at_ms ~= nil and (tonumber(B.sent_ms) or NOW) - s.at_ms > ALERT_LATE
  local jid = ctx.op.id
  if jid == '-' then jid = '' end
  local keys = '{}'
  if type(s.keys) == 'table' and next(s.keys) ~= nil then keys = cjson.encode(s.keys) end
  W('HSET', key, 'kind', s.kind, 'actor', s.actor, 'etype', s.etype or '', 'q', s.queue or '',
    'seen', NOW, 'jid', jid, 'msg', s.msg or '', 'keys', keys, 'win', win)
  if not late and (not last or NOW - last >= win) then
    ctx.res.alert = {notify = 1, sup = sup, since = since}
    W('HSET', key, 'last', NOW, 'sup', 0)
    W('HDEL', key, 'since')
    W('ZREM', K.alerts('due'), name)
  else
    -- Throttled (or too late to say anything now): counted, reported by the next notification
    -- or by the summary due when this window ends.
    sup = sup + 1
    ctx.res.alert = {notify = 0, sup = sup}
    W('HSET', key, 'sup', sup, 'since', since or NOW)
    W('ZADD', K.alerts('due'), last and (last + win) or NOW, name)
  end
  if s.quiet then W('ZADD', K.alerts('quiet'), NOW + win, name) end
  W('PEXPIRE', key, 2 * win + 60000)
end

local ALERT_FIELDS = {kind = 'string', actor = 'string', etype = 'string?', queue = 'string?', msg = 'string?',
  keys = 'table?', window_ms = 'number', at_ms = 'number?', quiet = 'boolean?'}
on('finish', 50, 'al', ALERT_FIELDS, alert_occur)
on('alert', 50, 'al', ALERT_FIELDS, alert_occur)

local function alert_entry(name, h)
  return {name = name, kind = h.kind, actor = h.actor, etype = h.etype, q = h.q, sup = tonumber(h.sup) or 0,
    since = tonumber(h.since), seen = tonumber(h.seen), jid = h.jid, msg = h.msg, keys = h.keys,
    win = tonumber(h.win)}
end

-- The heartbeat's question: which summaries and recovered notices are due? Each is handed to
-- exactly one caller (the ZREM and the reset happen in this call).
on('alerts_due', 50, 'al', {limit = 'number?'}, function(ctx, s)
  local limit = tonumber(s.limit) or 100
  local out = {}
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', K.alerts('due'), '-inf', NOW, 'LIMIT', 0, limit)) do
    W('ZREM', K.alerts('due'), name)
    local key = alert_key(name)
    local h = alert_hash(key)
    if h and (tonumber(h.sup) or 0) > 0 then
      local e = alert_entry(name, h)
      e.summary = 1
      table.insert(out, e)
      W('HSET', key, 'last', NOW, 'sup', 0)
      W('HDEL', key, 'since')
    end
  end
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', K.alerts('quiet'), '-inf', NOW, 'LIMIT', 0, limit)) do
    W('ZREM', K.alerts('quiet'), name)
    local key = alert_key(name)
    local h = alert_hash(key)
    if h then
      local e = alert_entry(name, h)
      e.recovered = 1
      table.insert(out, e)
      W('ZREM', K.alerts('due'), name)
      W('DEL', key)
    end
  end
  ctx.res.due = out
end)
