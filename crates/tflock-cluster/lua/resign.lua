-- resign.lua: a node gives up the lead (it is stopping, or a bucket refused its
-- epoch), and with `leave` also its registration (a clean stop: not declared dead).
--
-- KEYS[1]  `P{cluster}:` (see common.lua)
-- ARGV[1]  node id
-- ARGV[2]  raise the epoch counter to at least this ('' or '0': leave it). A leader
--          whose fence was refused passes the fence it met, so the next election
--          hands out a higher epoch even if Redis lost epochs (a failover of an
--          asynchronous replica).
-- ARGV[3]  '1' to leave the registry too
--
-- Reply (JSON): resigned = true when this node was the leader, left, now.

local id = ARGV[1]
local floor = tonumber(ARGV[2]) or 0
local resigned = false
local l = leader()
if l and l.id == id then
  redis.call('DEL', K_LEADER)
  resigned = true
end
if floor > 0 and (tonumber(redis.call('GET', K_EPOCH)) or 0) < floor then
  redis.call('SET', K_EPOCH, fmt(floor))
end
local left = false
if ARGV[3] == '1' and redis.call('ZREM', K_NODES, id) == 1 then
  retire(id)
  left = true
end
return cjson.encode({ resigned = resigned, left = left, now = fmt(NOW) })
