-- sweep.lua: ends, on one bucket, whatever is due by Redis's clock: leases past
-- their expiry (their queues are handed on), reservations past their deadline,
-- waiter entries whose server stopped looking after them, and kept answers past
-- their retention. Idempotent: several servers may sweep the same bucket.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-5] common (see prelude)
-- ARGV[6]   most items of each kind to handle in this call
--
-- Reply (JSON): next = the earliest due time left in the bucket (µs, '' if none),
-- more = true when the limit was hit; plus ev/ho/now.

local limit = tonumber(ARGV[6])
local more = false

local due = redis.call('ZRANGEBYSCORE', K_DUE, '-inf', fmt(NOW), 'LIMIT', 0, limit)
if #due == limit then more = true end
for _, sk in ipairs(due) do
  if redis.call('EXISTS', k_lock(sk)) == 0 then
    redis.call('ZREM', K_DUE, sk)
  end
  settle(sk)
  gc(sk)
end

local edl = redis.call('ZRANGEBYSCORE', K_EDL, '-inf', fmt(NOW), 'LIMIT', 0, limit)
if #edl == limit then more = true end
for _, id in ipairs(edl) do
  local sk = redis.call('HGET', K_EIDX, id)
  local e = sk and remove_entry(sk, id)
  if e then
    emit('queue.left', sk, e.owner, nil, id)
    if e.kind == 'w' then wake(id, 't') end
    settle(sk)
    gc(sk)
  else
    redis.call('ZREM', K_EDL, id)
    redis.call('HDEL', K_EIDX, id)
  end
end

local ans = redis.call('ZRANGEBYSCORE', K_ANSDUE, '-inf', fmt(NOW), 'LIMIT', 0, limit)
if #ans == limit then more = true end
for _, k in ipairs(ans) do
  redis.call('HDEL', K_ANS, k)
  redis.call('ZREM', K_ANSDUE, k)
end

local next
for _, k in ipairs({ K_DUE, K_EDL, K_ANSDUE }) do
  local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  if first[2] then
    local t = tonumber(first[2])
    if not next or t < next then next = t end
  end
end
return reply({ next = next and fmt(next) or '', more = more })
