-- load.lua - the wrk request mix of tests/load.sh. Each request is drawn at random:
--   20% GET /health            10% GET /model
--   25% GET /predict/{id}       (a stored result; PF_IDS: ids seeded by load.sh)
--   25% POST /predict           cache hits (PF_SEQS: the seeded sequences, same bodies)
--   20% POST /predict           new short sequences (30-60 residues, one <mask>): inference, or 429
-- Every status is counted; done() prints them (one line "status N count" each) and "bad N" for the
-- number of responses other than 200 and 429.
local threads = {}
local RES = "ACDEFGHIKLMNPQRSTVWY"

function setup(thread)
    thread:set("tid", #threads + 1)
    table.insert(threads, thread)
end

local function split(s)
    local out = {}
    for w in string.gmatch(s or "", "[^,]+") do table.insert(out, w) end
    return out
end

function init(args)
    statuses = {}
    ids = split(os.getenv("PF_IDS"))
    seqs = split(os.getenv("PF_SEQS"))
    math.randomseed(os.time() * 1000 + tid * 7919)
    json = { ["Content-Type"] = "application/json" }
    if os.getenv("PF_KEY") and os.getenv("PF_KEY") ~= "" then
        json["Authorization"] = "Bearer " .. os.getenv("PF_KEY")
    end
    plain = {}
    if json["Authorization"] then plain["Authorization"] = json["Authorization"] end
end

local function random_sequence()
    local n = math.random(30, 60)
    local t = {}
    for i = 1, n do
        local k = math.random(1, 20)
        t[i] = string.sub(RES, k, k)
    end
    t[math.random(2, n - 1)] = "<mask>"
    return table.concat(t)
end

function request()
    local r = math.random(100)
    if r <= 20 then
        return wrk.format("GET", "/health", plain)
    elseif r <= 30 then
        return wrk.format("GET", "/model", plain)
    elseif r <= 55 then
        return wrk.format("GET", "/predict/" .. ids[math.random(#ids)], plain)
    elseif r <= 80 then
        return wrk.format("POST", "/predict", json, '{"sequence": "' .. seqs[math.random(#seqs)] .. '", "top_k": 3}')
    else
        return wrk.format("POST", "/predict", json, '{"sequence": "' .. random_sequence() .. '", "top_k": 3}')
    end
end

function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
    local total, bad = {}, 0
    for _, t in ipairs(threads) do
        for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
    end
    for k, v in pairs(total) do
        io.write(string.format("status %d %d\n", k, v))
        if k ~= 200 and k ~= 429 then bad = bad + v end
    end
    local e = summary.errors
    io.write(string.format("requests %d\nseconds %.1f\nbad %d\n", summary.requests, summary.duration / 1e6, bad))
    io.write(string.format("socket_errors connect %d read %d write %d timeout %d status %d\n",
        e.connect, e.read, e.write, e.timeout, e.status))
    io.write(string.format("latency_ms p50 %.2f p99 %.2f max %.2f\n", latency:percentile(50) / 1000,
        latency:percentile(99) / 1000, latency.max / 1000))
end
