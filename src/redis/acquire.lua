-- KEYS: lock, fence, q, qx, qc, seq
-- ARGV: lockId, clientId, ttlMs, holderJson, tokenFloor, mode ('try' | 'wait'), waiterTtlMs
-- Grants the lock when it is free and nobody arrived before us; the fencing token is issued in
-- the same step: max(counter, floor) + 1, so it rises on every grant, even after the counter was
-- lost with a restart. 'wait' also joins (or renews our place in) the queue.
-- Returns {1, token} when granted, else {0, kind, id, clientId, pttl}: kind 'holder' (the lock is
-- held by lockId `id` on connection `clientId`) or 'waiter' (free, but waiter `id` is first).
local lock, fence, q, qx, qc, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, client = ARGV[1], ARGV[2]
local now = now_ms()
purge(q, qx, qc, now)

local cur = redis.call('HMGET', lock, 'lockId', 'client', 'token')
if cur[1] == id then
  -- Ours already: the reply to an earlier try was lost on the network.
  redis.call('HSET', lock, 'client', client)
  return {1, tonumber(cur[3])}
end

local first, first_client = head(q, qc)
if not cur[1] and (not first or first == id) then
  local token = math.max(tonumber(redis.call('GET', fence) or '0'), tonumber(ARGV[5])) + 1
  redis.call('SET', fence, string.format('%d', token))
  redis.call('HSET', lock, 'lockId', id, 'token', string.format('%d', token), 'client', client,
    'holder', ARGV[4], 'grantedAt', now)
  redis.call('PEXPIRE', lock, ARGV[3])
  if first then
    drop_waiter(q, qx, qc, id)
  end
  return {1, token}
end

if ARGV[6] == 'wait' then
  if not redis.call('ZSCORE', q, id) then
    redis.call('ZADD', q, redis.call('INCR', seq), id)
  end
  redis.call('ZADD', qx, now + tonumber(ARGV[7]), id)
  redis.call('HSET', qc, id, client)
  -- The queue's keys outlive their last waiter by a little, then vanish on their own.
  for _, k in ipairs({q, qx, qc, seq}) do
    redis.call('PEXPIRE', k, 2 * tonumber(ARGV[7]))
  end
  first, first_client = head(q, qc)
end

if cur[1] then
  return {0, 'holder', cur[1], cur[2], redis.call('PTTL', lock)}
end
return {0, 'waiter', first, first_client, 0}
