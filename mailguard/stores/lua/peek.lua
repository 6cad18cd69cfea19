-- mailguard peek: how many requests of (ns, key) lie in the last `window` seconds.
-- Mirrors mailguard.core.log_count.  Read-only.  (lib.lua first.)
--
-- KEYS[1]  the window list written by hit.lua (oldest first, never decreasing)
-- ARGV     now, window
-- Returns the count (an integer).

local cutoff = now - tonumber(ARGV[2])
local times = redis.call('LRANGE', KEYS[1], 0, -1)
local n = 0
for i = #times, 1, -1 do
  if tonumber(times[i]) > cutoff then
    n = n + 1
  else
    break
  end
end
return n
