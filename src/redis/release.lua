-- KEYS: lock, q, qx, qc
-- ARGV: lockId, token ('*': any, for a grant whose reply never reached us), channel
-- Compare-and-delete, then wakes the first waiter. Returns 1 when released, 0 when not ours.
local cur = redis.call('HMGET', KEYS[1], 'lockId', 'token')
if cur[1] ~= ARGV[1] or (ARGV[2] ~= '*' and cur[2] ~= ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1])
purge(KEYS[2], KEYS[3], KEYS[4], now_ms())
wake_head(KEYS[2], KEYS[4], ARGV[3])
return 1
