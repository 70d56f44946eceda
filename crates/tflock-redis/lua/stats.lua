-- stats.lua: GetMetrics on one bucket (read only).
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
--
-- Reply (JSON): locks = unexpired leases, entries = queue entries; plus ev/ho/now.

return reply({
  locks = redis.call('ZCOUNT', K_DUE, '(' .. fmt(NOW), '+inf'),
  entries = redis.call('HLEN', K_EIDX),
})
