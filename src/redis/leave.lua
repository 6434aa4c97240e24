-- KEYS: lock, q, qx, qc
-- ARGV: waiterId, channel
-- A waiter gives up (deadline, or no longer wanted): leaves the queue and, if the lock is free,
-- wakes whoever is now first.
local lock, q, qx, qc = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
drop_waiter(q, qx, qc, ARGV[1])
if redis.call('EXISTS', lock) == 0 then
  wake_head(q, qc, ARGV[2])
end
return 1
