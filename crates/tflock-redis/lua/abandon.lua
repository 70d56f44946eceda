-- abandon.lua: a waiting TryLock's caller went away (its future was dropped, or the
-- backend closed under it). Its entry goes; an unconfirmed grant to it is released
-- at once and handed on, unless the call had a request id, in which case the claim
-- window stays open for a retry to take the grant over. A grant its waiter confirmed
-- (`cent`) although the answer never reached the caller is treated the same way:
-- released, or (with a request id) put back into its claim window.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   resource key
-- ARGV[8]   entry id
-- ARGV[9]   '1' when the call had a request id
--
-- Reply (JSON): r = 'removed', 'released', 'reclaimed' or 'none'; plus ev/ho/now.

local sk, id, has_rid = ARGV[7], ARGV[8], ARGV[9] == '1'
redis.call('DEL', k_wake(id))
local e = remove_entry(sk, id)
if e then
  emit('queue.left', sk, e.owner, nil, id)
  settle(sk)
  gc(sk)
  return reply({ r = 'removed' })
end
local l = read_lock(sk)
if not has_rid then
  if l and (l.entry == id or l.cent == id) then
    -- An unconfirmed grant, or one confirmed by a call whose caller went away
    -- before the answer reached it: nobody knows that lease.
    release(sk, l, 'lock.released')
    return reply({ r = 'released' })
  end
elseif l and l.cent == id then
  -- Confirmed, but the answer never reached the caller: back to the claim window it
  -- had (ending when it would have), so a retry can still take it over and a gone
  -- caller holds the queue up by at most claim_timeout.
  redis.call('HSET', k_lock(sk), 'claim', '1', 'entry', id, 'expires', l.cexp)
  redis.call('HDEL', k_lock(sk), 'cent', 'cexp')
  redis.call('ZADD', K_DUE, l.cexp, sk)
  settle(sk)
  return reply({ r = 'reclaimed' })
end
return reply({ r = 'none' })
