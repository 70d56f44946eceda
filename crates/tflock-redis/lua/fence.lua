-- fence.lua: a newly elected leader claims one bucket for its epoch before it does any
-- duty there, so a former leader (paused, partitioned) that still believes in its
-- lease is refused by every duty script from then on. Idempotent.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   the leader's epoch
--
-- Reply (JSON): r = 'ok' (the fence is now at least the epoch) or 'stale' (a leader
-- with a higher epoch has claimed the bucket); fence = the stored fence; plus ev/ho/now.

local epoch = tonumber(ARGV[7])
local higher = fence(epoch)
if higher then
  return reply({ r = 'stale', fence = fmt(higher) })
end
return reply({ r = 'ok', fence = fmt(epoch) })
