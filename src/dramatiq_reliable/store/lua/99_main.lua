-- The functions: run a batch, and describe the registered op schema.

-- kind -> {{priority, section, fn}, ...} in priority order; kind -> section -> {priority, fields};
-- kind -> section -> {types = {field = type}, required = {field, ...}} (what the check reads).
local HANDLERS, SCHEMA, CHECKS

-- Index the handlers ``on`` listed (once per load of the library: its first call).
local function index()
  HANDLERS, SCHEMA, CHECKS = {}, {}, {}
  for _, h in ipairs(REGISTERED) do
    HANDLERS[h.kind] = HANDLERS[h.kind] or {}
    table.insert(HANDLERS[h.kind], {h.priority, h.section, h.fn})
    if h.fields then
      SCHEMA[h.kind] = SCHEMA[h.kind] or {}
      SCHEMA[h.kind][h.section] = {priority = h.priority, fields = h.fields}
      local types, required = {}, {}
      for name, spec in pairs(h.fields) do
        types[name] = string.match(spec, '^(%a+)')
        if string.sub(spec, -1) ~= '?' then table.insert(required, name) end
      end
      CHECKS[h.kind] = CHECKS[h.kind] or {}
      CHECKS[h.kind][h.section] = {types = types, required = required}
    end
  end
  for _, list in pairs(HANDLERS) do
    table.sort(list, function(a, b) return a[1] < b[1] end)
  end
end

-- Why ``section`` does not match its handler's fields (``spec``, from CHECKS; nil when it does).
local function check(section, spec)
  if type(section) ~= 'table' then return 'not an object' end
  local types = spec.types
  for name, value in pairs(section) do
    local want = types[name]
    if not want then return 'unknown field ' .. tostring(name) end
    if want ~= 'any' and type(value) ~= want then
      return 'field ' .. name .. ' must be a ' .. want .. ', not a ' .. type(value)
    end
  end
  for _, name in ipairs(spec.required) do
    if section[name] == nil then return 'missing field ' .. name end
  end
  return nil
end

-- One op: check every section it carries (phase 1), then run its handlers (phase 2).
local function run_op(op)
  if type(op) ~= 'table' then return {error = 'an op must be an object'} end
  local list = HANDLERS[op.k]
  if not list then return {error = 'unknown op kind: ' .. tostring(op.k)} end
  if type(op.id) ~= 'string' then return {error = 'op ' .. op.k .. ' without a string id'} end
  if op.at_ms ~= nil and type(op.at_ms) ~= 'number' then return {error = 'op ' .. op.k .. ': at_ms must be a number'} end
  local checks = CHECKS[op.k]
  for name, section in pairs(op) do
    if name ~= 'k' and name ~= 'id' and name ~= 'at_ms' then
      local spec = checks[name]
      if not spec then
        return {error = 'op ' .. op.k .. ' takes no section ' .. tostring(name), section = name}
      end
      local why = check(section, spec)
      if why then return {error = op.k .. '.' .. name .. ': ' .. why, section = name} end
    end
  end
  local ctx = {op = op, res = {}}
  OP = {direct = DIRECT[op.k]}
  if OP.direct then OP.snap, OP.undo = {}, {} end
  local failed
  for _, h in ipairs(list) do
    local section = op[h[2]]
    if section ~= nil then
      local ok, err = pcall(h[3], ctx, section)
      if not ok then
        failed = {error = op.k .. '.' .. h[2] .. ': ' .. tostring(err), section = h[2]}
        break
      end
    end
  end
  local done = OP
  OP = nil
  if failed then
    -- Nothing of the op is applied: its queue is dropped, its direct writes and records undone.
    local undo = done.undo or {}
    for i = #undo, 1, -1 do
      local u = undo[i]
      if u[2] then redis.call('RESTORE', u[1], u[3], u[2], 'REPLACE') else redis.call('DEL', u[1]) end
    end
    restore_records(done.recs)
    return failed
  end
  local queue = done.queue
  if queue then
    for _, w in ipairs(queue) do redis.call(unpack(w, 1, w.n)) end
  end
  if done.commit then
    for _, fn in ipairs(done.commit) do fn() end
  end
  return ctx.res
end

local function store_time()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

redis.register_function(LIB .. '_apply', function(_, args)
  if not HANDLERS then index() end
  P = args[1]
  B = cjson.decode(args[2])
  NOW = tonumber(B.now_ms) or store_time()
  for _, reset in ipairs(RESET) do reset() end
  local results = {}
  if type(B.ops) == 'table' then
    for i, op in ipairs(B.ops) do results[i] = run_op(op) end
  end
  save_all()
  for _, flush in ipairs(FLUSH) do flush() end
  cleanup()
  if #results == 0 then return '[]' end
  return cjson.encode(results)
end)

redis.register_function(LIB .. '_kinds', function()
  if not HANDLERS then index() end
  local out = {}
  for kind, sections in pairs(SCHEMA) do
    out[kind] = {}
    for section, spec in pairs(sections) do
      out[kind][section] = {priority = spec.priority, fields = spec.fields}
    end
  end
  return cjson.encode(out)
end)

redis.register_function(LIB .. '_source', function() return SOURCE end)
