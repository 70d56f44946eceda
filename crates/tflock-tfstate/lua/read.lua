-- read.lua: every read of one state, so a reply is one consistent view of it.
--
-- KEYS[1], ARGV[1]  see prelude
-- ARGV[2]   op: 'get' (the current version), 'version', 'versions', 'summary',
--           'source' (a kept, non-deleted version for a rollback, with max_serial)
-- ARGV[3]   'version', 'source': the version number
--
-- Reply: a JSON header (tag r): none | collision | versions {list} | summary
-- {current, versions, lock, fence}; or for a document (state, source) the header,
-- a newline, then the document's bytes as they are (no JSON escaping of a document
-- of up to max_state_bytes; the header has no raw newline: JSON escapes it).

local c = collision()
if c then return c end

local op = ARGV[2]
local last = tonumber(hget('last') or '0')
local first = tonumber(hget('first') or '1')

local function kept(v)
  return v ~= nil and v >= first and v <= last
end

local function document(tag, v, extra)
  local meta = kept(v) and redis.call('HGET', VM, fmt(v))
  if not meta then return '{"r":"none"}' end
  local body = redis.call('GET', vkey(v)) or ''
  return '{"r":"' .. tag .. '","meta":' .. meta .. (extra or '') .. '}\n' .. body
end

if op == 'get' then
  return document('state', tonumber(hget('cur') or '0'))
elseif op == 'version' then
  return document('state', tonumber(ARGV[3]))
elseif op == 'source' then
  local v = tonumber(ARGV[3])
  local meta = kept(v) and redis.call('HGET', VM, fmt(v))
  if not meta or string.find(meta, '"deleted":true', 1, true) then return '{"r":"none"}' end
  return document('source', v, ',"max_serial":"' .. (hget('max_serial') or '0') .. '"')
elseif op == 'versions' then
  local list = {}
  for v = last, first, -1 do
    local meta = redis.call('HGET', VM, fmt(v))
    if meta then list[#list + 1] = meta end
  end
  return '{"r":"versions","list":[' .. table.concat(list, ',') .. ']}'
elseif op == 'summary' then
  local cur = tonumber(hget('cur') or '0')
  local current = (cur > 0 and redis.call('HGET', VM, fmt(cur))) or 'null'
  local count = last - first + 1
  if count < 0 then count = 0 end
  return '{"r":"summary","current":' .. current
    .. ',"versions":' .. fmt(count)
    .. ',"lock":' .. (hget('lock') or 'null')
    .. ',"fence":"' .. (hget('fence') or '0') .. '"}'
end
return redis.error_reply('read.lua: unknown op ' .. op)
