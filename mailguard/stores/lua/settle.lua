-- mailguard settle: end an attempt of (ns, key) begun by attempt.lua.
-- Applies mailguard.core.end_attempt, penalty and outlasts, line for line;
-- tests/test_store_conformance.py holds it to them.  (lib.lua first.)
--
-- KEYS[1]  the streak string (see attempt.lua)
-- KEYS[2]  the block hash of the same (ns, key)
-- KEYS[3]  the offences: a string 'expires count' (blocks within `memory` s)
-- ARGV     now, failed (0/1), limit, interval, block_for, reset (0/1),
--          factor, max_block, memory, kind, key
--
-- Returns one string 'code streak blocked_for now kept': code OK (0) or JAILED (2);
-- kept is 1 when a later live block was kept instead of the new one (core.outlasts).

local failed = ARGV[2] == '1'
local limit = tonumber(ARGV[3])
local interval = tonumber(ARGV[4])
local block_for = tonumber(ARGV[5])
local factor = tonumber(ARGV[7])
local max_block = tonumber(ARGV[8])
local memory = tonumber(ARGV[9])

local count, last, pending, pending_until = 0, nil, 0, 0
local state = redis.call('GET', KEYS[1])
if state then
  local c, l, p, u = string.match(state, '^(%S+) (%S+) (%S+) (%S+)$')
  count, last, pending, pending_until = tonumber(c), tonumber(l), tonumber(p), tonumber(u)
end
if pending > 0 and now < pending_until then
  pending = pending - 1
else
  pending = 0
end
if ARGV[6] == '1' or (last ~= nil and now - last > interval) then count = 0 end

local code, blocked_for, kept = 0, 0, 0
if failed then
  if count > 0 and last ~= nil and now - last <= interval then
    count = count + 1
  else
    count = 1
  end
  last = now
  if count >= limit then
    code = 2
    blocked_for = block_for
    if factor > 1 and memory > 0 then   -- repeat offenders: base * factor ^ earlier
      local earlier = 0
      local seen = redis.call('GET', KEYS[3])
      if seen then
        local e, n = string.match(seen, '^(%S+) (%S+)$')
        if tonumber(e) > now then earlier = tonumber(n) end
      end
      redis.call('SET', KEYS[3], num(now + memory) .. ' ' .. string.format('%d', earlier + 1),
        'PX', ttl(memory))
      blocked_for = block_for * factor ^ earlier
      if max_block > 0 and blocked_for > max_block then blocked_for = max_block end
    end
    local untl = now + blocked_for
    local held = tonumber(redis.call('HGET', KEYS[2], 'until') or '')
    if held ~= nil and held > now and held >= untl then
      -- a live block that ends later (an admin's, say) is never shortened
      kept = 1
    elseif untl > now then
      redis.call('HSET', KEYS[2], 'kind', ARGV[10], 'key', ARGV[11], 'reason', 'failures',
        'since', num(now), 'until', num(untl))
      redis.call('PERSIST', KEYS[2])   -- no TTL: never evicted (see RedisStore, Blocks)
    else
      redis.call('DEL', KEYS[2])   -- an empty block lifts any block, as in MemoryStore
    end
    count, last = 0, nil
  end
end

if count > 0 or pending > 0 then
  local expires = -math.huge
  if last ~= nil then expires = last + interval end
  if pending > 0 and pending_until > expires then expires = pending_until end
  redis.call('SET', KEYS[1],
    string.format('%d %s %d %s', count, last and num(last) or 'n', pending, num(pending_until)),
    'PX', ttl(expires - now))
else
  redis.call('DEL', KEYS[1])
end
return code .. ' ' .. count .. ' ' .. num(blocked_for) .. ' ' .. num(now) .. ' ' .. kept
