-- One admission, all or nothing: the client's budget (spend of every replica + holds in
-- flight), then each concurrency counter, then each pool. Time is Redis's own clock.
-- KEYS: 1 this replica's seeded marker, 2 spend hash (replica -> micros), 3 holds hash
-- (request -> micros), 4 hold expiries (zset), then ARGV[5] concurrency zsets, then pools.
-- ARGV: 1 request id, 2 micros to hold, 3 budget (-1: none), 4 ttl ms, 5 nc, nc limits,
-- np, then (capacity, refill per second, units) per pool.
-- Returns {"ok", spent, held} | {"budget", spent, held} | {"busy", i} | {"pool", j, wait ms}
-- | {"reseed"}.
local now = now_ms()
if redis.call('EXISTS', KEYS[1]) == 0 then return {'reseed'} end
local rid, reserve, limit, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local nc = tonumber(ARGV[5])
local spent, held = standing(KEYS[2], KEYS[3], KEYS[4], now)
if limit >= 0 and spent + held + reserve > limit then return {'budget', spent, held} end
for i = 1, nc do
  local k = KEYS[4 + i]
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  if redis.call('ZCARD', k) >= tonumber(ARGV[5 + i]) then return {'busy', i} end
end
local np = tonumber(ARGV[6 + nc])
local levels = {}
for j = 1, np do
  local a = 7 + nc + (j - 1) * 3
  local cap, rate, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local s = redis.call('HMGET', KEYS[4 + nc + j], 'level', 'at')
  local level = math.min(cap, (tonumber(s[1]) or cap) + (now - (tonumber(s[2]) or now)) * rate / 1000)
  if level < n then
    if rate <= 0 then return {'pool', j, 60000} end
    return {'pool', j, math.ceil((n - level) * 1000 / rate)}
  end
  levels[j] = level - n
end
for j = 1, np do redis.call('HSET', KEYS[4 + nc + j], 'level', tostring(levels[j]), 'at', now) end
for i = 1, nc do redis.call('ZADD', KEYS[4 + i], now + ttl, rid) end
if reserve > 0 then
  redis.call('HSET', KEYS[3], rid, reserve)
  redis.call('ZADD', KEYS[4], now + ttl, rid)
end
return {'ok', spent, held + reserve}
