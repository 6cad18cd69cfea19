-- mailguard hit: count one request of (ns, key) in a sliding window.
-- Applies mailguard.core.slide (and the jail: a refusal blocks and forgets the
-- window); tests/test_store_conformance.py holds it to that.  (lib.lua first.)
--
-- KEYS[1]  the window: a list of the allowed requests' times, oldest first
-- KEYS[2]  the block hash of the same (ns, key) (only given when jail > 0)
-- ARGV     now, limit, window, jail, kind, key
--
-- Returns one string: 'code remaining wait' for OK (0), 'code 0 wait until t'
-- for OVER (1) (until: when the request that frees a slot leaves the window;
-- t: the time the wait counts from), and 'code 0 wait now since until reason'
-- for JAILED (2) and BLOCKED (3).

local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local jail = tonumber(ARGV[4])

if jail > 0 then
  local b = redis.call('HMGET', KEYS[2], 'until', 'since', 'reason')
  if b[1] and tonumber(b[1]) > now then
    return '3 0 ' .. num(wait_until(tonumber(b[1]), now)) .. ' ' .. num(now) .. ' '
      .. b[2] .. ' ' .. b[1] .. ' ' .. (b[3] or '')
  elseif b[1] then
    redis.call('DEL', KEYS[2])   -- ended: deleted on read (blocks have no TTL)
  end
end

local log = KEYS[1]
local t = now          -- a clock that steps back is clamped to the newest time
local count = 0
local oldest = 0
local newest = redis.call('LINDEX', log, -1)
if newest then
  newest = tonumber(newest)
  if t < newest then t = newest end
  local cutoff = t - window
  if newest <= cutoff then
    redis.call('DEL', log)   -- the whole window has passed
  else
    count = redis.call('LLEN', log)
    oldest = tonumber(redis.call('LINDEX', log, 0))
    while oldest <= cutoff do  -- the newest is live, so this stops
      redis.call('LPOP', log)
      count = count - 1
      oldest = tonumber(redis.call('LINDEX', log, 0))
    end
  end
end

if count > 0 and count >= limit then
  if jail > 0 then
    redis.call('DEL', log)   -- counting starts from zero after the release
    local untl = now + jail
    redis.call('HSET', KEYS[2], 'kind', ARGV[5], 'key', ARGV[6], 'reason', 'rate',
      'since', num(now), 'until', num(untl))
    redis.call('PERSIST', KEYS[2])   -- no TTL: never evicted (see RedisStore, Blocks)
    return '2 0 ' .. ARGV[4] .. ' ' .. num(now) .. ' ' .. num(now) .. ' ' .. num(untl) .. ' rate'
  end
  -- the request whose leaving frees a slot: the oldest, or later when the
  -- limit went down since these were counted
  local first = oldest
  if count > limit then first = tonumber(redis.call('LINDEX', log, count - limit)) end
  local untl = leaves(first, window)
  return '1 0 ' .. num(wait_until(untl, t)) .. ' ' .. num(untl) .. ' ' .. num(t)
end

redis.call('RPUSH', log, num(t))
redis.call('PEXPIRE', log, ttl(t + window - now))
if count == 0 then
  return '0 ' .. (limit - 1) .. ' ' .. ARGV[3]
end
return '0 ' .. (limit - count - 1) .. ' ' .. num(oldest + window - t)
