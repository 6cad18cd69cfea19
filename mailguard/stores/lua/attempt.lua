-- mailguard attempt: begin a guarded attempt (a login) of (ns, key).
-- Applies mailguard.core.begin_attempt (after the block check), line for line;
-- tests/test_store_conformance.py holds it to that function.  (lib.lua first.)
--
-- KEYS[1]  the streak: a string 'count last pending pending_until'
--          (last is 'n' when there is none)
-- KEYS[2]  the block hash of the same (ns, key)
-- ARGV     now, limit, interval, pending_ttl
--
-- Returns one string: 'code remaining wait' for OK (0) and BUSY (4), and
-- '3 0 wait now since until reason' for BLOCKED.

local b = redis.call('HMGET', KEYS[2], 'until', 'since', 'reason')
if b[1] and tonumber(b[1]) > now then
  return '3 0 ' .. num(wait_until(tonumber(b[1]), now)) .. ' ' .. num(now) .. ' '
    .. b[2] .. ' ' .. b[1] .. ' ' .. (b[3] or '')
elseif b[1] then
  redis.call('DEL', KEYS[2])   -- ended: deleted on read (blocks have no TTL)
end

local limit = tonumber(ARGV[2])
local interval = tonumber(ARGV[3])
local count, last, pending, pending_until = 0, nil, 0, 0
local state = redis.call('GET', KEYS[1])
if state then
  local c, l, p, u = string.match(state, '^(%S+) (%S+) (%S+) (%S+)$')
  count, last, pending, pending_until = tonumber(c), tonumber(l), tonumber(p), tonumber(u)
end
if last == nil or now - last > interval then count = 0 end
if pending > 0 and now >= pending_until then pending = 0 end

local code, remaining, wait = 4, 0, '1'
if count + pending < limit then
  pending = pending + 1
  pending_until = now + tonumber(ARGV[4])
  code, remaining, wait = 0, limit - count - pending, '0'
end

local expires = pending_until
if last ~= nil and last + interval > expires then expires = last + interval end
redis.call('SET', KEYS[1],
  string.format('%d %s %d %s', count, last and num(last) or 'n', pending, num(pending_until)),
  'PX', ttl(expires - now))
return code .. ' ' .. remaining .. ' ' .. wait
