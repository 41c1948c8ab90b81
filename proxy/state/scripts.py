"""The Lua scripts that make each shared-state step one atomic round trip to Redis.

Budget accounts are three keys: a hash (`sm`/`st` spent micro-dollars and tokens, `rm`/`rt` reserved),
a sorted set of reservation ids scored by their expiry, and a hash of each reservation's amounts
("MICROS TOKENS"). Expired reservations are purged by whichever call touches the account next.
Rate-limit scopes are two keys: a hash of token-bucket levels (`rl`/`ru` requests, `tl`/`tu` tokens:
level and when it was computed) and a sorted set of permits in flight scored by their expiry.
Times are the gateways' wall clocks, in seconds, passed in (so tests control them); key lifetimes are
relative (EXPIRE), computed by the caller on the same clock.
"""

# KEYS: per account (hash, reservations zset, amounts hash). ARGV: now, expires_at, id, micros, tokens,
# then per account: limit_micros (-1: none), limit_tokens (-1: none), key lifetime (seconds, 0: forever).
# Returns {denied account (1-based, 0: reserved), then per account sm, st, rm, rt after the call}.
RESERVE = """
local now, exp, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local m, t = tonumber(ARGV[4]), tonumber(ARGV[5])
local n = #KEYS / 3
local out, denied = {0}, 0
for i = 1, n do
  local a, z, h = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, rid in ipairs(gone) do
    local held = redis.call('HGET', h, rid)
    if held then
      local sp = string.find(held, ' ')
      redis.call('HINCRBY', a, 'rm', 0 - tonumber(string.sub(held, 1, sp - 1)))
      redis.call('HINCRBY', a, 'rt', 0 - tonumber(string.sub(held, sp + 1)))
      redis.call('HDEL', h, rid)
    end
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', now) end
  local v = redis.call('HMGET', a, 'sm', 'st', 'rm', 'rt')
  local sm, st, rm, rt = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0
  out[4*i-2], out[4*i-1], out[4*i], out[4*i+1] = sm, st, rm, rt
  local lm, lt = tonumber(ARGV[3*i+3]), tonumber(ARGV[3*i+4])
  if denied == 0 and ((lm >= 0 and sm + rm + m > lm) or (lt >= 0 and st + rt + t > lt)) then denied = i end
end
out[1] = denied
if denied == 0 then
  for i = 1, n do
    local a, z, h = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
    redis.call('HINCRBY', a, 'rm', m)
    redis.call('HINCRBY', a, 'rt', t)
    redis.call('ZADD', z, exp, id)
    redis.call('HSET', h, id, m .. ' ' .. t)
    local keep = tonumber(ARGV[3*i+5])
    if keep > 0 then
      redis.call('EXPIRE', a, keep)
      redis.call('EXPIRE', z, keep)
      redis.call('EXPIRE', h, keep)
    end
    out[4*i] = out[4*i] + m
    out[4*i+1] = out[4*i+1] + t
  end
end
return out
"""

# KEYS: per account (hash, zset, amounts hash where it was reserved; hash of the current period).
# ARGV: id ("" for none), micros, tokens, then per account the current hash's lifetime (seconds, 0: forever).
# Drops the reservation (unless it expired already) and adds the real cost to the current period.
# Returns per account sm, st, rm, rt of the current period.
SETTLE = """
local id, m, t = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS / 4 do
  local a, z, h, live = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  if id ~= '' then
    local held = redis.call('HGET', h, id)
    if held then
      local sp = string.find(held, ' ')
      redis.call('HINCRBY', a, 'rm', 0 - tonumber(string.sub(held, 1, sp - 1)))
      redis.call('HINCRBY', a, 'rt', 0 - tonumber(string.sub(held, sp + 1)))
      redis.call('HDEL', h, id)
      redis.call('ZREM', z, id)
    end
  end
  redis.call('HINCRBY', live, 'sm', m)
  redis.call('HINCRBY', live, 'st', t)
  local keep = tonumber(ARGV[3+i])
  if keep > 0 then redis.call('EXPIRE', live, keep) end
  local v = redis.call('HMGET', live, 'sm', 'st', 'rm', 'rt')
  for j = 1, 4 do out[4*(i-1)+j] = tonumber(v[j]) or 0 end
end
return out
"""

# KEYS: an account hash. ARGV: spent micros, spent tokens, key lifetime (seconds, 0: forever). Raises
# the spend to what a gateway knows was settled, when Redis has less (it lost its data); never adds, so
# nothing is counted twice. Returns sm, st, rm, rt.
SEED = """
local v = redis.call('HMGET', KEYS[1], 'sm', 'st')
if tonumber(ARGV[1]) > (tonumber(v[1]) or 0) then redis.call('HSET', KEYS[1], 'sm', ARGV[1]) end
if tonumber(ARGV[2]) > (tonumber(v[2]) or 0) then redis.call('HSET', KEYS[1], 'st', ARGV[2]) end
if tonumber(ARGV[3]) > 0 and redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
v = redis.call('HMGET', KEYS[1], 'sm', 'st', 'rm', 'rt')
return {tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0}
"""

# KEYS: per scope (buckets hash, permits zset), then the governor's hold key. ARGV: now, expires_at, id,
# tokens, then per scope rpm, tpm, concurrent (0: none), tokens given back by earlier requests (their
# corrections ride along with the next admission). Takes from every scope only if all have room.
# Returns {admitted (1/0), hold (seconds, governor), then per scope: wait (seconds, -1: only a finishing
# request makes room), requests level, tokens level} as strings.
ADMIT = """
local now, exp, id, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local n = (#KEYS - 1) / 2
local out, levels, ok = {'0', '0'}, {}, true
local hold = tonumber(redis.call('GET', KEYS[#KEYS]) or '0') - now
if hold > 0 then ok = false; out[2] = tostring(hold) end
for i = 1, n do
  local s, c = KEYS[2*i-1], KEYS[2*i]
  local rpm, tpm, conc, back = tonumber(ARGV[4*i+1]), tonumber(ARGV[4*i+2]), tonumber(ARGV[4*i+3]),
    tonumber(ARGV[4*i+4])
  local v = redis.call('HMGET', s, 'rl', 'ru', 'tl', 'tu')
  local wait, rl, tl = 0, -1, -1
  if rpm > 0 then
    rl = math.min(rpm, (tonumber(v[1]) or rpm) + math.max(now - (tonumber(v[2]) or now), 0) * rpm / 60)
    if rl < 1 then wait = math.max(wait, (1 - rl) * 60 / rpm) end
  end
  if tpm > 0 then
    tl = math.min(tpm, (tonumber(v[3]) or tpm) + back + math.max(now - (tonumber(v[4]) or now), 0) * tpm / 60)
    local need = math.min(tokens, tpm) - tl
    if need > 0 then wait = math.max(wait, need * 60 / tpm) end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', c, '-inf', now)
    if redis.call('ZCARD', c) >= conc then wait = -1 end
  end
  if wait ~= 0 then ok = false end
  if tpm > 0 and back ~= 0 then redis.call('HSET', s, 'tl', tostring(tl), 'tu', tostring(now)) end
  levels[i] = {rl, tl, rpm, tpm, conc}
  out[3*i] = tostring(wait)
  out[3*i+1] = tostring(rl)
  out[3*i+2] = tostring(tl)
end
if ok then
  out[1] = '1'
  for i = 1, n do
    local s, c = KEYS[2*i-1], KEYS[2*i]
    local rl, tl, rpm, tpm, conc = unpack(levels[i])
    if rpm > 0 then
      redis.call('HSET', s, 'rl', tostring(rl - 1), 'ru', tostring(now))
      out[3*i+1] = tostring(rl - 1)
    end
    if tpm > 0 then
      redis.call('HSET', s, 'tl', tostring(tl - tokens), 'tu', tostring(now))
      out[3*i+2] = tostring(tl - tokens)
    end
    redis.call('EXPIRE', s, 120)
    if conc > 0 then
      redis.call('ZADD', c, exp, id)
      redis.call('EXPIRE', c, math.ceil(exp - now) + 1)
    end
  end
end
return out
"""

# KEYS: per scope (buckets hash, permits zset). ARGV: id, tokens to give back (negative: take more),
# then per scope tpm (0: none). Frees the permit's slot and corrects the tokens taken at admission.
RELEASE = """
local id, back = ARGV[1], tonumber(ARGV[2])
for i = 1, #KEYS / 2 do
  redis.call('ZREM', KEYS[2*i], id)
  if back ~= 0 and tonumber(ARGV[2+i]) > 0 and redis.call('HEXISTS', KEYS[2*i-1], 'tl') == 1 then
    redis.call('HINCRBYFLOAT', KEYS[2*i-1], 'tl', back)
  end
end
return 1
"""

# KEYS: the governor's hold key. ARGV: hold until (epoch s), seconds from now. Keeps the later one.
HOLD = """
local till = tonumber(ARGV[1])
if till > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', math.ceil(tonumber(ARGV[2])) + 1)
end
return 1
"""


def _function(name: str, body: str) -> str:
    """A script's body as a Lua function of its own KEYS and ARGV (so two scripts run as one)."""
    return f"local function {name}(KEYS, ARGV)\n{body}\nend\n"


# A request's budget reservation and its rate-limit admission in one atomic round trip. KEYS: RESERVE's,
# then ADMIT's. ARGV: how many of the keys and arguments are RESERVE's, then RESERVE's arguments, then
# ADMIT's. The reservation comes first, as when the two are sent one after the other: the admission is
# only tried when it was made (a refused budget takes no rate-limit slot; a refused admission leaves the
# reservation to be settled to nothing, as before). Returns {RESERVE's answer, ADMIT's ({} when not tried)}.
RESERVE_ADMIT = _function("reserve", RESERVE) + _function("admit", ADMIT) + """
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local rk, rv, ak, av = {}, {}, {}, {}
for i = 1, #KEYS do if i <= nk then rk[i] = KEYS[i] else ak[i - nk] = KEYS[i] end end
for i = 3, #ARGV do if i <= na + 2 then rv[i - 2] = ARGV[i] else av[i - 2 - na] = ARGV[i] end end
local reserved = reserve(rk, rv)
if reserved[1] ~= 0 then return {reserved, {}} end
return {reserved, admit(ak, av)}
"""
