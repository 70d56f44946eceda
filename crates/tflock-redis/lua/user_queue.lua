-- user_queue.lua: GetUserQueue on one bucket (read only): the whole queue of every
-- resource where `username` has an entry, so the client can place them in grant
-- order (tflock_core::queue) and keep that user's.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   username
--
-- Reply (JSON): queues = list of { sk, entries }; plus ev/ho/now.

local user = ARGV[7]
local raw = redis.call('HGETALL', K_EIDX)
local seen, queues = {}, {}
for i = 1, #raw, 2 do
  local id, sk = raw[i], raw[i + 1]
  if not seen[sk] then
    local e = redis.call('HGET', k_entries(sk), id)
    if e and cjson.decode(e).user == user then
      seen[sk] = true
      queues[#queues + 1] = { sk = sk, entries = all_entries(sk) }
    end
  end
end
return reply({ queues = queues })
