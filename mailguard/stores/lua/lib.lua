-- mailguard: helpers every script starts with (RedisStore prepends this file
-- to each script when it loads them).
--
-- ARGV[1] is always the time: '' to read the server's TIME (production), or
-- seconds as text from the store's injected clock (tests).  Expiries are
-- durations from now, in whole milliseconds, plus a grace: 1 ms on the
-- server's clock, 1 s with an injected clock (Redis cannot follow that
-- clock, so a test clock that stands still must not see state vanish).
local now, grace
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  grace = 1
else
  now = tonumber(ARGV[1])
  grace = 1000
end

-- A double as text that reads back as the same double.
local function num(x)
  return string.format('%.17g', x)
end

-- Milliseconds a key must live to cover `seconds` of store time.  The result
-- stays below 1e14, so Redis receives it as a plain integer.
local function ttl(seconds)
  local ms = math.ceil(seconds * 1000)
  if ms < 0 then ms = 0 elseif ms > 1e13 then ms = 1e13 end
  return ms + grace
end

-- The next double above x (Python's math.nextafter(x, math.inf)).
local function up(x)
  if x ~= x or x == math.huge then return x end
  if x == 0 then return 4.9406564584124654e-324 end
  local m, e = math.frexp(x)
  local step
  if m == -0.5 then step = math.ldexp(1, e - 54) else step = math.ldexp(1, e - 53) end
  if step == 0 then step = 4.9406564584124654e-324 end
  return x + step
end

-- mailguard.core._leaves: the first time a request made at `first` no longer counts.
local function leaves(first, window)
  local untl = first + window
  while untl - window < first do untl = up(untl) end
  return untl
end

-- mailguard.core.wait_until: seconds from `t` such that t + wait >= untl.
local function wait_until(untl, t)
  local wait = untl - t
  while t + wait < untl do wait = up(wait) end
  return wait
end
