-- rollup.lua: the leader's metric roll-up: cluster-wide totals from every live
-- node's counters (sent with its heartbeat) plus those of nodes gone, and the lock
-- store's figures the leader read. Fenced: only the current leader under its epoch
-- writes (the leader key is in this same slot).
--
-- KEYS[1]  `P{cluster}:` (see common.lua)
-- ARGV[1]  node id
-- ARGV[2]  its epoch
-- ARGV[3]  store figures JSON: { active_locks, queue_depth }, strings
--
-- Reply (JSON): r = 'ok' with rollup, or 'stale' (not the leader under that epoch).

local l = leader()
if not l or l.id ~= ARGV[1] or l.epoch ~= ARGV[2] then
  return cjson.encode({ r = 'stale', now = fmt(NOW) })
end
local store = cjson.decode(ARGV[3])
local handoffs = tonumber(redis.call('HGET', K_RETIRED, 'handoffs') or '0')
local expiries = tonumber(redis.call('HGET', K_RETIRED, 'expiries') or '0')
local nodes = live_nodes()
for _, n in ipairs(nodes) do
  handoffs = handoffs + (tonumber(n.handoffs) or 0)
  expiries = expiries + (tonumber(n.expiries) or 0)
end
local r = {
  nodes = tostring(#nodes), handoffs = fmt(handoffs), expiries = fmt(expiries),
  active_locks = store.active_locks or '0', queue_depth = store.queue_depth or '0',
  at = fmt(NOW), epoch = ARGV[2], by = ARGV[1],
}
redis.call('DEL', K_ROLLUP)
for k, v in pairs(r) do redis.call('HSET', K_ROLLUP, k, v) end
return cjson.encode({ r = 'ok', rollup = r, now = fmt(NOW) })
