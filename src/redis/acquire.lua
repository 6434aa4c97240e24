-- KEYS: lock, fence, q, qx, qc, qh, seq
-- ARGV: lockId, clientId, ttlMs, holderJson, tokenFloor, mode ('try' | 'wait'), waiterTtlMs
-- Grants the lock when it is free and nobody arrived before us. 'wait' also joins (or renews our
-- place in) the queue when refused, in this same step: arrival order is the order of the first
-- 'wait' call. A 'try' never joins, and never jumps the queue.
-- Returns {1, token} when granted, else {0, kind, id, clientId, pttl, lastToken}: kind 'holder'
-- (the lock is held by lockId `id` on connection `clientId`) or 'waiter' (free, but waiter `id`
-- is first); lastToken is the last token granted so far, so a hand-off message with a token not
-- above it was sent before this refusal and is stale.
local id, client, ttl, holder, floor = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cur = redis.call('HMGET', K.lock, 'lockId', 'client', 'token')
if cur[1] == id then
  -- Ours already: handed to us on a release whose message we have not read yet, or the reply
  -- to an earlier call was lost on the network. The caller counts its lease from this call, so
  -- the lease starts again here (the one handed over may be nearly gone).
  redis.call('HSET', K.lock, 'client', client)
  redis.call('PEXPIRE', K.lock, ttl)
  return {1, tonumber(cur[3])}
end

-- Free, and nobody queued (the queue's keys are written and expire together, so there is
-- nothing to purge either): the uncontended grant, in as few commands as it takes.
if not cur[1] and redis.call('EXISTS', K.q) == 0 then
  return {1, grant(id, client, ttl, holder, floor)}
end

local now = now_ms()
purge(now)
local first, first_client = head()
if not cur[1] and (not first or first == id) then
  local token = grant(id, client, ttl, holder, floor)
  if first then
    drop_waiter(id)
  end
  return {1, token}
end

if ARGV[6] == 'wait' then
  if not redis.call('ZSCORE', K.q, id) then
    redis.call('ZADD', K.q, redis.call('INCR', K.seq), id)
  end
  redis.call('ZADD', K.qx, now + tonumber(ARGV[7]), id)
  redis.call('HSET', K.qc, id, client)
  redis.call('HSET', K.qh, id, ttl .. ' ' .. floor .. ' ' .. holder)
  -- The queue's keys outlive their last waiter by a little, then vanish on their own.
  for _, k in ipairs({K.q, K.qx, K.qc, K.qh, K.seq}) do
    redis.call('PEXPIRE', k, 2 * tonumber(ARGV[7]))
  end
  first, first_client = head()
end

local last = redis.call('GET', K.fence) or '0'
if cur[1] then
  return {0, 'holder', cur[1], cur[2], redis.call('PTTL', K.lock), last}
end
return {0, 'waiter', first, first_client, 0, last}
