-- wrk: a different single-use credential on every request. Each of the
-- GATE402_THREADS threads takes every GATE402_THREADS-th line of the file
-- GATE402_CREDENTIALS, starting at its own offset. Requests are formatted
-- before the run starts: the load generator shares the cores with the
-- gateway, so what it spends per request is taken from the gateway.
local threads = 0
function setup(thread)
  thread:set("offset", threads)
  threads = threads + 1
end

local requests = {}
local next_index = 1
function init(args)
  local step = tonumber(os.getenv("GATE402_THREADS"))
  local line_number = 0
  for line in io.lines(os.getenv("GATE402_CREDENTIALS")) do
    if line_number % step == offset then
      requests[#requests + 1] = wrk.format("GET", nil, { ["Authorization"] = line })
    end
    line_number = line_number + 1
  end
  requests[#requests + 1] = wrk.format("GET", nil, { ["Authorization"] = "Payment exhausted" })
end

function request()
  local request = requests[next_index]
  if next_index < #requests then
    next_index = next_index + 1
  end
  return request
end
