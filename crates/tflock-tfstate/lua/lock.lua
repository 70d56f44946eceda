-- lock.lua: record or clear the lock record of one state (the fence never goes
-- down).
--
-- KEYS[1], ARGV[1]  see prelude
-- ARGV[2]   op: 'record' or 'clear'
-- ARGV[3]   the lock's token
-- ARGV[4]   record: the record's JSON
-- ARGV[5]   record: its id_digest
-- ARGV[6]   record: its public_id
--
-- Reply (JSON, tag r): ok | stale {fence} | collision.

local c = collision()
if c then return c end

local op, token = ARGV[2], ARGV[3]
if op == 'record' then
  local fence = hget('fence') or '0'
  if numcmp(token, fence) < 0 then
    return '{"r":"stale","fence":"' .. fence .. '"}'
  end
  redis.call('HSET', META, 'name', NAME, 'fence', token, 'lock', ARGV[4],
    'lock_digest', ARGV[5], 'lock_token', token, 'lock_pub', ARGV[6])
  return '{"r":"ok"}'
elseif op == 'clear' then
  if hget('lock_token') == token then
    redis.call('HDEL', META, 'lock', 'lock_digest', 'lock_token', 'lock_pub')
  end
  return '{"r":"ok"}'
end
return redis.error_reply('lock.lua: unknown op ' .. op)
