-- write.lua: put, delete and rollback of one state, and the guard alone. The guard
-- and the serial/lineage comparison mirror src/check.rs (`guard`, `history`); the
-- document was validated in Rust, which passes what it found as arguments.
--
-- KEYS[1], ARGV[1]  see prelude
-- ARGV[2]   op: 'put', 'delete', 'rollback', or 'guard' (only check the guard)
-- ARGV[3]   guard: 'lock', 'unlocked' or 'admin'
-- ARGV[4]   lock guard: the lock ID's digest
-- ARGV[5]   lock guard: the token; unlocked guard: fence_seen
-- ARGV[6]   force: '1' skips the serial/lineage check and marks the version forced
-- ARGV[7]   the document's serial (put, rollback)
-- ARGV[8]   the document's lineage (put, rollback)
-- ARGV[9]   md5 of the stored bytes
-- ARGV[10]  size of the stored bytes
-- ARGV[11]  now, ms
-- ARGV[12]  keep_versions (>= 1)
-- ARGV[13]  the document (put, rollback)
-- ARGV[14]  rollback: max_serial as read when the document was rewritten ('' none);
--           changed since, the reply is 'retry' (the serial must be past the max)
--
-- Reply (JSON, tag r): ok {meta} | fenced {fence, record} | serial {stored} |
-- lineage {stored} | not_found | retry | collision. `fence` and `stored` serials
-- are decimal strings.

local c = collision()
if c then return c end

local op = ARGV[2]
local kind = ARGV[3]
local fence = hget('fence') or '0'

local function fenced()
  return '{"r":"fenced","fence":"' .. fence .. '","record":' .. (hget('lock') or 'null') .. '}'
end

local token, lock_id = nil, nil
if kind == 'unlocked' then
  if numcmp(fence, ARGV[5]) > 0 then return fenced() end
elseif kind == 'lock' then
  local digest, held = hget('lock_digest'), hget('lock_token')
  if digest ~= ARGV[4] or held ~= ARGV[5] or held ~= fence then return fenced() end
  token = held
  lock_id = hget('lock_pub')
elseif kind ~= 'admin' then
  return redis.error_reply('write.lua: unknown guard ' .. kind)
end
if op == 'guard' then
  return '{"r":"ok"}'
end

local cur = tonumber(hget('cur') or '0')
local serial, lineage = ARGV[7], ARGV[8]
local forced, deleted = ARGV[6] == '1', false

if op == 'put' then
  if cur > 0 and not forced then
    local stored_serial, stored_lineage = hget('cur_serial'), hget('cur_lineage')
    if stored_lineage ~= '' and lineage ~= '' and stored_lineage ~= lineage then
      return '{"r":"lineage","stored":' .. cjson.encode(stored_lineage) .. '}'
    end
    if numcmp(serial, stored_serial) < 0 then
      return '{"r":"serial","stored":"' .. stored_serial .. '"}'
    end
  end
elseif op == 'delete' then
  if cur == 0 then return '{"r":"not_found"}' end
  serial, lineage = hget('cur_serial'), hget('cur_lineage')
  forced, deleted = false, true
elseif op == 'rollback' then
  if (hget('max_serial') or '') ~= ARGV[14] then return '{"r":"retry"}' end
  forced = true
else
  return redis.error_reply('write.lua: unknown op ' .. op)
end

-- Append the version.
local v = redis.call('HINCRBY', META, 'last', 1)
local first = tonumber(hget('first') or '1')
local meta = '{"version":' .. fmt(v)
  .. ',"serial":' .. serial
  .. ',"lineage":' .. cjson.encode(lineage)
  .. ',"md5":"' .. ARGV[9] .. '"'
  .. ',"size":' .. ARGV[10]
  .. ',"token":' .. (token or 'null')
  .. ',"lock_id":' .. (lock_id and cjson.encode(lock_id) or 'null')
  .. ',"written_at_ms":' .. ARGV[11]
  .. ',"forced":' .. tostring(forced)
  .. ',"deleted":' .. tostring(deleted) .. '}'
redis.call('HSET', VM, fmt(v), meta)
redis.call('HSET', META, 'name', NAME)
if deleted then
  redis.call('HSET', META, 'cur', '0')
  redis.call('HDEL', META, 'cur_serial', 'cur_lineage')
else
  redis.call('SET', vkey(v), ARGV[13])
  redis.call('HSET', META, 'cur', fmt(v), 'cur_serial', serial, 'cur_lineage', lineage)
  local max = hget('max_serial')
  if not max or numcmp(serial, max) > 0 then
    redis.call('HSET', META, 'max_serial', serial)
  end
end

-- Trim the oldest past keep_versions: the kept ones are always first..v.
local keep = tonumber(ARGV[12])
while v - first + 1 > keep do
  redis.call('HDEL', VM, fmt(first))
  redis.call('DEL', vkey(first))
  first = first + 1
end
redis.call('HSET', META, 'first', fmt(first))

return '{"r":"ok","meta":' .. meta .. '}'
