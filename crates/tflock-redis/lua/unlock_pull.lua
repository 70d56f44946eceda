-- unlock_pull.lua: UnlockByPull on one bucket: every queue entry and lease of exactly
-- this repository and pull request (matched by pull number or by the owner string
-- `{repo}#{pull}`). The client runs it on all 64 buckets.
--
-- KEYS[1]   bucket prefix (see prelude)
-- ARGV[1-6] common (see prelude)
-- ARGV[7]   repository (exact), escaped as in a resource key (keys.rs key_part)
-- ARGV[8]   pull number
-- ARGV[9]   owner string `{repo}#{pull}`
--
-- Reply (JSON): released = ended locks (public), cancelled = removed entries;
-- plus ev/ho/now.

local repo, pull, name = ARGV[7], ARGV[8], ARGV[9]
local function matches(x) return x.pull == pull or x.owner == name end

-- Resource keys of one repository are contiguous: they start with the escaped
-- repository and KSEP ('!'), and sort below it and '"' (an escaped part holds neither).
local keys = redis.call('ZRANGEBYLEX', K_IDX, '[' .. repo .. KSEP, '(' .. repo .. '"')
local released, cancelled = {}, {}

for _, sk in ipairs(keys) do
  settle(sk)
  -- Entries first, so the hand-off of a released lock cannot go to another entry of
  -- the same pull request.
  for _, e in ipairs(all_entries(sk)) do
    if matches(e) then
      remove_entry(sk, e.id)
      emit('queue.left', sk, e.owner, nil, e.id)
      if e.kind == 'w' then wake(e.id, 'c') end
      cancelled[#cancelled + 1] = { sk = sk, e = e }
    end
  end
  local l = read_lock(sk)
  if l and matches(l) then
    release(sk, l, 'lock.released')
    released[#released + 1] = lock_view(sk, l, false)
  end
  gc(sk)
end
return reply({ released = released, cancelled = cancelled })
