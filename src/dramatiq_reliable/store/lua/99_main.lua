-- Dispatcher: run each op's handlers in priority order, then write records and clean up.

for _, list in pairs(HANDLERS) do
  table.sort(list, function(a, b) return a[1] < b[1] end)
end

local results = {}
for i, op in ipairs(B.ops) do
  local ctx = {op = op, res = {}}
  local list = HANDLERS[op.k]
  if not list then
    ctx.res.error = 'unknown op kind: ' .. tostring(op.k)
  else
    for _, h in ipairs(list) do
      local section = op[h[2]]
      if section ~= nil then
        local ok, err = pcall(h[3], ctx, section)
        if not ok then
          ctx.res.error = tostring(err)
          break
        end
      end
    end
  end
  results[i] = ctx.res
end

save_all()
cleanup()
if #results == 0 then return '[]' end
return cjson.encode(results)
