"""The Lua scripts of the Redis state store (``store/redis.py``): each check and its write one atomic
step across replicas, one round trip each. Key layout and what each script guards: ``redis.py``'s
docstring; the arguments each takes: the comment above it."""

from __future__ import annotations

# the budget of one conversation is KEYS[b+1..b+4] (spent, held, dl, closed): functions over the
# offset b, so a turn's end can settle and release next to its put in one script
BUDGET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function prune(b)
  for _, rid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[b + 3], '-inf', now)) do
    redis.call('HDEL', KEYS[b + 2], rid)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[b + 3], '-inf', now)
end
local function held(b)
  local s = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[b + 2])) do s = s + tonumber(v) end
  return s
end
local function touch(b, ms)
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[b + i], ms) end
end
local function settle(b, id, actual, keep)
  prune(b)
  if redis.call('SADD', KEYS[b + 4], id) == 0 then return 0 end
  redis.call('HDEL', KEYS[b + 2], id)
  redis.call('ZREM', KEYS[b + 3], id)
  redis.call('INCRBYFLOAT', KEYS[b + 1], actual)
  touch(b, keep)
  return 1
end
-- id, amount, budget ('' = none), ttl ms, keep ms, eps: 1 held, 0 refused
local function reserve(b, id, amount, budget, ttl, keep, eps)
  prune(b)
  if redis.call('SISMEMBER', KEYS[b + 4], id) == 1 then return 0 end
  if redis.call('HEXISTS', KEYS[b + 2], id) == 1 then return 1 end
  if budget ~= '' then
    local spent = tonumber(redis.call('GET', KEYS[b + 1]) or '0')
    if spent + held(b) + tonumber(amount) > tonumber(budget) + tonumber(eps) then return 0 end
  end
  redis.call('HSET', KEYS[b + 2], id, amount)
  redis.call('ZADD', KEYS[b + 3], now + tonumber(ttl), id)
  touch(b, keep)
  return 1
end
local function release(b, id, keep)
  prune(b)
  if redis.call('SADD', KEYS[b + 4], id) == 0 then return 0 end
  local n = redis.call('HDEL', KEYS[b + 2], id)
  redis.call('ZREM', KEYS[b + 3], id)
  touch(b, keep)
  return n
end
"""
# KEYS: spent, held, dl, closed. ARGV: id, amount, budget ('' = none), ttl ms, keep ms, eps
RESERVE = BUDGET + "return reserve(0, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])"
SETTLE = BUDGET + "return settle(0, ARGV[1], ARGV[2], ARGV[3])"  # ARGV: id, actual, keep ms
RELEASE = BUDGET + "return release(0, ARGV[1], ARGV[2])"  # ARGV: id, keep ms
RESERVED = BUDGET + "prune(0) return string.format('%.17g', held(0))"
# KEYS[1]: lease, KEYS[2]: the fence counter. ARGV[1]: ttl ms. (The counter is not in the
# conversation's hash slot: one Redis, not a cluster.)
ACQUIRE_FN = """
local function acquire()
  if redis.call('EXISTS', KEYS[1]) == 1 then return false end  -- held: no token burnt
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
  return token
end
"""
ACQUIRE = ACQUIRE_FN + "return acquire()"
# KEYS: lease, fence, state[, spent, held, dl, closed of the budget]. ARGV: ttl ms, known ('' = none),
# then for a reservation: id, amount, budget ('' = none), ttl ms, keep ms, eps, seen spent.
# Returns false (held elsewhere) or {token, data (false when same), owner, spent, same, reserved (-1: not tried)}
BEGIN = BUDGET + ACQUIRE_FN + """
local token = acquire()
if not token then return false end
local st = redis.call('HMGET', KEYS[3], 'd', 'o')
local spent = false
if #KEYS > 3 then spent = redis.call('GET', KEYS[4]) end
local known = ARGV[2]
local same = known ~= '' and st[1] and string.sub(st[1], 1, #known) == known
if same and #ARGV > 2 and tonumber(spent or '0') > tonumber(ARGV[9]) + tonumber(ARGV[8]) then same = false end
if not same then return {token, st[1], st[2], spent, 0, -1} end
local reserved = -1
if #ARGV > 2 then reserved = reserve(3, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]) end
return {token, false, st[2], spent, 1, reserved}
"""
# KEYS: lease. ARGV: token, ttl ms ('' = delete)
LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""
# KEYS[s]: state. data, ttl ms, owner, has owner ('1')
PUT_FN = """
local function put(s, data, ttl, owner, has_owner)
  redis.call('DEL', KEYS[s])
  if has_owner == '1' then redis.call('HSET', KEYS[s], 'd', data, 'o', owner)
  else redis.call('HSET', KEYS[s], 'd', data) end
  redis.call('PEXPIRE', KEYS[s], ttl)
end
"""
# KEYS: state, lease. ARGV: data, ttl ms, owner ('' = none), has owner, token ('' = unfenced)
PUT = PUT_FN + """
if ARGV[5] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[5] then return 0 end
put(1, ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
"""
# KEYS: lease, state, then spent/held/dl/closed per budget (budget i at offset 2 + 4 i).
# ARGV: token, put ('1'), data, ttl ms, owner, has owner, keep ms, settle's budget ('' = none), its
# id, actual, then (budget, id) per release. The settle comes first and bills whoever holds the
# lease now (the call was made); the put only while the lease is still this token. (The budget
# keys are tagged by the episode, the state and lease by the conversation: one Redis, not a cluster.)
END = BUDGET + PUT_FN + """
local settled = 0
if ARGV[8] ~= '' then settled = settle(2 + 4 * tonumber(ARGV[8]), ARGV[9], ARGV[10], ARGV[7]) end
for i = 11, #ARGV, 2 do release(2 + 4 * tonumber(ARGV[i]), ARGV[i + 1], ARGV[7]) end
local written = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '1' then
    put(2, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
    written = 1
  end
  redis.call('DEL', KEYS[1])
end
return {written, settled}
"""
# KEYS: fin, stream, state. ARGV: conv id, episode, keep ms
FINISH = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then return 0 end
redis.call('XADD', KEYS[2], '*', 'c', ARGV[1], 'e', ARGV[2])
redis.call('DEL', KEYS[3])
return 1
"""

# the sequence number and the record change in one step: a reader never sees a new number with an old record
CONTROL = """
local s = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('HSET', KEYS[1], 'd', ARGV[1])
return s
"""

__all__ = ["RESERVE", "SETTLE", "RELEASE", "RESERVED", "ACQUIRE", "BEGIN", "LEASE", "PUT", "END", "FINISH", "CONTROL"]
