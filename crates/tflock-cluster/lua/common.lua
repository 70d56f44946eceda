-- common.lua: shared by the registry scripts (prepended at build time, so each is
-- still one EVALSHA). The registry lives under one hash tag, `P{cluster}:`, so one
-- script sees every node, the leader and the epoch at once, also on Redis Cluster.
--
-- KEYS[1]  `P{cluster}:`
--
-- Keys (K = KEYS[1]):
--   K..'nodes'      zset: node id -> when its registration lapses (µs)
--   K..'node:'..id  hash: id address version started_at heartbeat handoffs expiries
--   K..'dead'       zset: node id -> when it was declared dead (µs)
--   K..'leader'     hash: id epoch since; expires with the leader's lease (PEXPIRE)
--   K..'epoch'      string: the last epoch handed out (INCR); never lowered
--   K..'retired'    hash: handoffs expiries of nodes that left or died
--   K..'rollup'     hash: the leader's cluster-wide metrics
--
-- Times are µs since the epoch on this Redis's clock (`TIME`); numbers leave as
-- strings (%.0f), as in the backend's scripts.

local K = KEYS[1]
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000000 + tonumber(T[2])
local function fmt(n) return string.format('%.0f', n) end

local K_NODES = K .. 'nodes'
local K_DEAD = K .. 'dead'
local K_LEADER = K .. 'leader'
local K_EPOCH = K .. 'epoch'
local K_RETIRED = K .. 'retired'
local K_ROLLUP = K .. 'rollup'
local function k_node(id) return K .. 'node:' .. id end

-- Adds a departing node's counters to the retired totals, so roll-ups never go down.
local function retire(id)
  local c = redis.call('HMGET', k_node(id), 'handoffs', 'expiries')
  if c[1] then redis.call('HINCRBY', K_RETIRED, 'handoffs', tonumber(c[1]) or 0) end
  if c[2] then redis.call('HINCRBY', K_RETIRED, 'expiries', tonumber(c[2]) or 0) end
  redis.call('DEL', k_node(id))
end

-- The leader as a table, or nil.
local function leader()
  local l = redis.call('HMGET', K_LEADER, 'id', 'epoch', 'since')
  if not l[1] then return nil end
  return { id = l[1], epoch = l[2], since = l[3], ttl = redis.call('PTTL', K_LEADER) }
end

-- Node ids whose registration is live, each with its hash.
local function live_nodes()
  local ids = redis.call('ZRANGEBYSCORE', K_NODES, '(' .. fmt(NOW), '+inf')
  local out = {}
  for _, id in ipairs(ids) do
    local raw = redis.call('HGETALL', k_node(id))
    local n = { id = id }
    for i = 1, #raw, 2 do n[raw[i]] = raw[i + 1] end
    out[#out + 1] = n
  end
  return out
end
