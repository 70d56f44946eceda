-- names.lua: the index of state names, a zset (score 0, so ZRANGE orders members by
-- their bytes, as Rust orders strings). It lives in its own slot on a Cluster, so it
-- cannot be changed by a state's own script: a name is added before the first write
-- of that state runs (an entry without data is harmless: listing skips it), so the
-- index never misses a state that has data.
--
-- KEYS[1]   `<key_prefix>tfstate:names`
-- ARGV[1]   op: 'add' or 'list'
-- ARGV[2]   add: the name
--
-- Reply: add: 'ok'; list: a JSON array of the names.

if ARGV[1] == 'add' then
  redis.call('ZADD', KEYS[1], 'NX', 0, ARGV[2])
  return 'ok'
elseif ARGV[1] == 'list' then
  local names = redis.call('ZRANGE', KEYS[1], 0, -1)
  if #names == 0 then return '[]' end
  return cjson.encode(names)
end
return redis.error_reply('names.lua: unknown op ' .. ARGV[1])
