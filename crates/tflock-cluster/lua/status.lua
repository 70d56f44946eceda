-- status.lua: the registry as it is now (read only): live nodes, the leader and its
-- epoch, the last epoch handed out, recently dead nodes and the leader's roll-up.
--
-- KEYS[1]  `P{cluster}:` (see common.lua)
--
-- Reply (JSON): nodes = [ node hash ], leader = { id epoch since ttl } or absent,
-- epoch = last epoch handed out, dead = { id: µs }, rollup = { ... } or absent, now.

local dead = {}
local d = redis.call('ZRANGE', K_DEAD, 0, -1, 'WITHSCORES')
for i = 1, #d, 2 do dead[d[i]] = d[i + 1] end
local rollup = nil
local raw = redis.call('HGETALL', K_ROLLUP)
if #raw > 0 then
  rollup = {}
  for i = 1, #raw, 2 do rollup[raw[i]] = raw[i + 1] end
end
return cjson.encode({
  nodes = live_nodes(), leader = leader(), epoch = redis.call('GET', K_EPOCH) or '0',
  dead = dead, rollup = rollup, now = fmt(NOW),
})
