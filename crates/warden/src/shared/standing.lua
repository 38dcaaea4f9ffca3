-- A client's spend (every replica's) and holds in flight, expired holds dropped first.
-- KEYS: 1 spend hash, 2 holds hash, 3 hold expiries. Returns {spent, held}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, r in ipairs(expired) do redis.call('HDEL', KEYS[2], r) end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now) end
local spent, held = 0, 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do spent = spent + tonumber(v) end
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do held = held + tonumber(v) end
return {spent, held}
