-- KEYS: lock, fence, q, qx, qc, qh, seq
-- ARGV: lockId, token ('*': any, for a grant whose reply never reached us), channel
-- Compare-and-delete, then hands the lock to the first waiter. Returns 1 when released, 0 when
-- not ours.
local cur = redis.call('HMGET', K.lock, 'lockId', 'token')
if cur[1] ~= ARGV[1] or (ARGV[2] ~= '*' and cur[2] ~= ARGV[2]) then
  return 0
end
redis.call('DEL', K.lock)
hand_to_head(ARGV[3])
return 1
