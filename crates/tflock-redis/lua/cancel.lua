-- cancel.lua: CancelQueueEntry: removes an entry by id; a blocked waiter is told.
--
-- KEYS[1]   bucket prefix (see prelude); the bucket is the id's first two digits
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   entry id
-- ARGV[8]   resource key the entry must still wait in, or '' for any: checked in
--           this same step (an entry granted or moved since is not found)
--
-- Reply (JSON): r = 'nf', or 'ok' with entry = its view (position before removal);
-- plus ev/ho/now.

local id, expected = ARGV[7], ARGV[8]
local sk = redis.call('HGET', K_EIDX, id)
if not sk then return reply({ r = 'nf' }) end
if expected ~= nil and expected ~= '' and sk ~= expected then return reply({ r = 'nf' }) end
local pos = position(sk, id)
local e = remove_entry(sk, id)
if not e then
  redis.call('HDEL', K_EIDX, id)
  return reply({ r = 'nf' })
end
emit('queue.left', sk, e.owner, nil, id)
if e.kind == 'w' then wake(id, 'c') end
gc(sk)
return reply({ r = 'ok', entry = entry_view(sk, e, pos) })
