-- KEYS: lock, fence, q, qx, qc, qh, seq
-- ARGV: waiterId, channel
-- A waiter gives up (deadline, or no longer wanted): leaves the queue, gives back the lock if it
-- was handed to it meanwhile, and, if the lock is free, hands it to whoever is now first.
drop_waiter(ARGV[1])
local cur = redis.call('HGET', K.lock, 'lockId')
if cur == ARGV[1] then
  redis.call('DEL', K.lock)
  cur = false
end
if not cur then
  hand_to_head(ARGV[2])
end
return 1
