-- Settles one request, once: its hold and concurrency slots go, its cost is added to this
-- replica's spend, unused pool units go back. A second settle of the same request id does
-- nothing (a retried settle never charges twice).
-- KEYS: 1 settled marker, 2 spend hash, 3 holds hash, 4 hold expiries, then ARGV[5]
-- concurrency zsets, then pools.
-- ARGV: 1 request id, 2 replica, 3 cost micros, 4 channel, 5 nc, 6 np, then (capacity,
-- refill per second, units back) per pool.
-- Returns {settled now (0/1), spent, held}.
local rid = ARGV[1]
local now = now_ms()
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) then
  local spent, held = standing(KEYS[2], KEYS[3], KEYS[4], now)
  return {0, spent, held}
end
redis.call('HDEL', KEYS[3], rid)
redis.call('ZREM', KEYS[4], rid)
local cost = tonumber(ARGV[3])
if cost ~= 0 then redis.call('HINCRBY', KEYS[2], ARGV[2], cost) end
local nc, np = tonumber(ARGV[5]), tonumber(ARGV[6])
for i = 1, nc do redis.call('ZREM', KEYS[4 + i], rid) end
for j = 1, np do
  local a = 7 + (j - 1) * 3
  local cap, rate, back = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if back > 0 then
    local k = KEYS[4 + nc + j]
    local s = redis.call('HMGET', k, 'level', 'at')
    local level = math.min(cap, (tonumber(s[1]) or cap) + (now - (tonumber(s[2]) or now)) * rate / 1000)
    redis.call('HSET', k, 'level', tostring(math.min(cap, level + back)), 'at', now)
  end
end
redis.call('PUBLISH', ARGV[4], rid)
local spent, held = standing(KEYS[2], KEYS[3], KEYS[4], now)
return {1, spent, held}
