-- tick.lua: one heartbeat of a node, and the election, in one step.
--
-- 1. Nodes whose registration lapsed (no heartbeat for the node TTL) are declared
--    dead: listed in `dead` with the instant, their counters retired.
-- 2. This node registers (or renews) itself for the node TTL.
-- 3. Leadership: the holder renews its lease (PEXPIRE); when there is no leader and
--    this node campaigns, it takes the lead with a new epoch (`INCR epoch`), which
--    only goes up. Redis expires the leader key when its lease is not renewed.
--
-- KEYS[1]  `P{cluster}:` (see common.lua)
-- ARGV[1]  node id
-- ARGV[2]  node info JSON: { address, version, started_at (µs) }, strings
-- ARGV[3]  node TTL, ms
-- ARGV[4]  leader lease, ms
-- ARGV[5]  '1' to campaign (take the lead when it is free), '0' not
-- ARGV[6]  how long dead nodes are remembered, ms
-- ARGV[7]  this node's counters JSON: { handoffs, expiries }, strings
--
-- Reply (JSON): role = 'elected' | 'leader' | 'follower', leader (id or absent),
-- epoch (the leader's), now, revived = true when this node had been declared dead,
-- and for a leader: dead = { node id: µs declared dead }.

local id = ARGV[1]
local info = cjson.decode(ARGV[2])
local ttl_us = tonumber(ARGV[3]) * 1000
local lease_ms = tonumber(ARGV[4])
local campaign = ARGV[5] == '1'
local keep_us = tonumber(ARGV[6]) * 1000
local counters = cjson.decode(ARGV[7])

-- 1. The dead (this node too, if it was away longer than its TTL: the waiters it
-- queued before then are removed, it carries on with new ones).
local lapsed = redis.call('ZRANGEBYSCORE', K_NODES, '-inf', fmt(NOW))
for _, n in ipairs(lapsed) do
  redis.call('ZREM', K_NODES, n)
  redis.call('ZADD', K_DEAD, fmt(NOW), n)
  retire(n)
end
redis.call('ZREMRANGEBYSCORE', K_DEAD, '-inf', fmt(NOW - keep_us))

-- 2. Register.
local revived = redis.call('ZSCORE', K_NODES, id) == false
  and redis.call('ZSCORE', K_DEAD, id) ~= false
redis.call('HSET', k_node(id),
  'id', id, 'address', info.address or '', 'version', info.version or '',
  'started_at', info.started_at or '', 'heartbeat', fmt(NOW),
  'handoffs', counters.handoffs or '0', 'expiries', counters.expiries or '0')
-- Gone by itself even if no node prunes it (then its counters are not retired).
redis.call('PEXPIRE', k_node(id), fmt(tonumber(ARGV[3]) * 3))
redis.call('ZADD', K_NODES, fmt(NOW + ttl_us), id)

-- 3. Lead.
local l = leader()
local role
if l and l.id == id then
  redis.call('PEXPIRE', K_LEADER, lease_ms)
  role = 'leader'
elseif not l and campaign then
  local epoch = redis.call('INCR', K_EPOCH)
  redis.call('HSET', K_LEADER, 'id', id, 'epoch', fmt(epoch), 'since', fmt(NOW))
  redis.call('PEXPIRE', K_LEADER, lease_ms)
  l = leader()
  role = 'elected'
else
  role = 'follower'
end

local r = {
  role = role, now = fmt(NOW), revived = revived,
  leader = l and l.id or nil, epoch = l and l.epoch or nil,
}
if role ~= 'follower' then
  local dead = {}
  local d = redis.call('ZRANGE', K_DEAD, 0, -1, 'WITHSCORES')
  for i = 1, #d, 2 do dead[d[i]] = d[i + 1] end
  r.dead = dead
end
return cjson.encode(r)
