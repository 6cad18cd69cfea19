-- mailguard sweep: remove one ended block, named by the store's index of block
-- ends (a sorted set of 'until key' members scored by until).  Standalone: it
-- does not start with lib.lua, and needs no time: the index said it ended.
--
-- KEYS[1]  the block hash
-- ARGV[1]  the `until` the index holds for it, as the hash spells it
-- Deletes the hash only when it still holds that very block (a block made
-- again on the same key since has another end and is left alone); returns 1
-- when it deleted, else 0.

if redis.call('HGET', KEYS[1], 'until') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
