-- A client's spend (every replica's) and holds in flight, expired holds dropped first.
-- KEYS: 1 spend hash, 2 holds hash, 3 hold expiries. Returns {spent, held}.
local spent, held = standing(KEYS[1], KEYS[2], KEYS[3], now_ms())
return {spent, held}
