-- sweep.lua: ends, on one bucket, whatever is due by Redis's clock: leases past
-- their expiry (their queues are handed on), reservations past their deadline,
-- waiter entries whose server stopped looking after them, and kept answers past
-- their retention. Idempotent: running it twice, or from two servers, is safe.
--
-- Run by a cluster leader it is fenced: it does nothing and answers stale when a
-- leader with a higher epoch has acted on the bucket (`fence` in the prelude), and it
-- also removes the waiter entries of servers declared dead.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   most items of each kind to handle in this call
-- ARGV[8]   the leader's epoch, or '' for an unfenced sweep (a backend sweeping by
--           itself, without a cluster manager)
-- ARGV[9]   servers declared dead, as a JSON object: node id -> how long ago it was
--           declared dead (µs, a duration, as a string); '' or '{}' for none. Waiter
--           entries those servers made before then are removed (their callers are gone).
--
-- One clock per comparison. The registry that declares nodes dead is on another slot,
-- so on Redis Cluster on another primary with its own clock; an entry's `enq` is on
-- this bucket's clock. Comparing `enq` with the registry's instant would compare two
-- clocks: a registry ahead of this primary would reap the waiters a revived node
-- queued after it came back, one behind would keep a dead node's waiters. So no
-- instant crosses servers: the registry's decision travels as an age (its own `now`
-- minus its own death time, plus the time elapsed since on the leader's monotonic
-- clock), and this script places the death on its own clock, `NOW - age`, before
-- comparing it with `enq`. Skew between servers cancels out; what is left is the
-- latency of the calls that carried the age (milliseconds), not the skew.
--
-- Reply (JSON): next = the earliest due time left in the bucket (µs, '' if none),
-- more = true when the limit was hit, done = items handled, stale (with fence) when
-- refused; plus ev/ho/now.

local limit = tonumber(ARGV[7])
local more = false
local done = 0

if ARGV[8] ~= '' then
  local higher = fence(tonumber(ARGV[8]))
  if higher then
    return reply({ stale = true, fence = fmt(higher), next = '', more = false, done = 0 })
  end
end

local due = redis.call('ZRANGEBYSCORE', K_DUE, '-inf', fmt(NOW), 'LIMIT', 0, limit)
if #due == limit then more = true end
for _, sk in ipairs(due) do
  if redis.call('EXISTS', k_lock(sk)) == 0 then
    redis.call('ZREM', K_DUE, sk)
  end
  settle(sk)
  gc(sk)
  done = done + 1
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
    done = done + 1
  else
    redis.call('ZREM', K_EDL, id)
    redis.call('HDEL', K_EIDX, id)
  end
end

if ARGV[9] ~= '' and ARGV[9] ~= '{}' then
  local dead = cjson.decode(ARGV[9])
  local served = redis.call('HGETALL', K_ENODE)
  local reaped = 0
  for i = 1, #served, 2 do
    local id, node = served[i], served[i + 1]
    local age = dead[node]
    if age then
      local died = NOW - tonumber(age)
      if reaped >= limit then
        more = true
        break
      end
      local sk = redis.call('HGET', K_EIDX, id)
      local raw = sk and redis.call('HGET', k_entries(sk), id)
      if not raw then
        redis.call('HDEL', K_ENODE, id)
      elseif tonumber(cjson.decode(raw).enq) < died then
        local e = remove_entry(sk, id)
        emit('queue.left', sk, e.owner, nil, id)
        wake(id, 't')
        settle(sk)
        gc(sk)
        reaped = reaped + 1
        done = done + 1
      end
    end
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
return reply({ next = next and fmt(next) or '', more = more, done = done })
