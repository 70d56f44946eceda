-- abandon.lua: a waiting TryLock's caller went away (its future was dropped, or the
-- backend closed under it). Its entry goes; an unconfirmed grant to it is released
-- at once and handed on, unless the call had a request id, in which case the claim
-- window stays open for a retry to take the grant over.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   storage key
-- ARGV[8]   entry id
-- ARGV[9]   '1' when the call had a request id
--
-- Reply (JSON): r = 'removed', 'released' or 'none'; plus ev/ho/now.

local sk, id, has_rid = ARGV[7], ARGV[8], ARGV[9] == '1'
redis.call('DEL', k_wake(id))
local e = remove_entry(sk, id)
if e then
  emit('queue.left', sk, e.owner, nil, id)
  settle(sk)
  gc(sk)
  return reply({ r = 'removed' })
end
if not has_rid then
  local l = read_lock(sk)
  if l and l.entry == id then
    release(sk, l, 'lock.released')
    return reply({ r = 'released' })
  end
end
return reply({ r = 'none' })
